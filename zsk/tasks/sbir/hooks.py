"""sbir's hooks for ``info``, ``sample``, ``zsk demo`` and ``zsk bench``."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch

from zsk.core.bench import BenchSpec, count_flops, count_params
from zsk.core.errors import ZskError
from zsk.core.task import Loaded, run_demo
from zsk.tasks.sbir.config import Config
from zsk.tasks.sbir.data import load_split, write_sample
from zsk.tasks.sbir.splits import SPLITS
from zsk.tasks.sbir.train import build_model, make_step_fn, param_groups

DEFAULT_SEEN = 104  # proxies counted by `info` when the data cannot be read (Sketchy, Yelamarthi's split)


def _no_pretrained(cfg: Config) -> Config:
    import dataclasses

    return dataclasses.replace(cfg, model=dataclasses.replace(cfg.model, pretrained=None))


def info(cfg: Config) -> dict[str, Any]:
    """Seen and unseen classes (the unseen list is reported, as users of every ZS-SBIR repository ask for
    it), image counts, parameters and forward GFLOPs of one training pair and of one query."""
    splits: dict[str, Any] = {}
    num_seen = DEFAULT_SEEN
    for name in ("train", cfg.eval.split or "val"):
        try:
            s = load_split(cfg.data, name)
            splits[name] = {"classes": len(s.classes), "sketches": len(s.sketches), "photos": len(s.photos)}
            if name != "train":
                splits[name]["class_names"] = list(s.classes)
                if s.dropped:
                    splits[name]["dropped_below_min_photos"] = list(s.dropped)
            else:
                num_seen = len(s.classes)
        except ZskError as e:
            splits[name] = f"not available ({e})"
    model = build_model(_no_pretrained(cfg), num_seen).eval()
    total, trainable = count_params(model)
    size = cfg.data.image_size
    # FLOPs depend on shapes only: count them on the meta device, without a real forward pass
    model = model.to("meta")
    x = torch.zeros(1, 3, size, size, device="meta")
    with torch.no_grad():
        train_flops = count_flops(lambda: model(x, x))
        query_flops = count_flops(lambda: model.embed_sketches(x))
    split = SPLITS.get(cfg.data.split)
    return {"task": "sbir", "model": f"ACNet (G + D + {cfg.model.backbone} E, d = {cfg.model.emb_dim})",
            "split": cfg.data.split, "split_source": split.source if split else "ACNet folders: <root>/{train,val}",
            "params_total": total, "params_trainable": trainable, "image_size": size,
            "gflops": train_flops / 1e9, "gflops_unit": "per training pair (G, D, 3 x E)", "gflops_query": query_flops / 1e9, "splits": splits}


def sample(out: Path, seed: int = 0, *, sketches: int = 8, photos: int = 10, size: int = 48) -> dict[str, Any]:
    """Write a synthetic sketch/photo set in ACNet's layout (6 seen shape classes, 3 unseen)."""
    if sketches < 1 or photos < 1:
        raise ZskError("sample: --sketches and --photos must be at least 1")
    if not 16 <= size <= 512:
        raise ZskError(f"sample: --size {size} must be from 16 to 512 pixels")
    out = Path(out)
    root = write_sample(out, sketches=sketches, photos=photos, size=size, seed=seed)
    return {"root": str(root), "train_classes": 6, "val_classes": 3, "sketches_per_class": sketches,
            "photos_per_class": photos, "next": f"zsk sbir train --recipe sbir/demo --set data.root={root}"}


def sample_data(root: Path) -> dict[str, Any]:
    """The demo's data (``data.root: "@sample"``): the default sample set."""
    return {"data.root": str(write_sample(root))}


def demo(workdir: Path, device: str) -> dict[str, Any]:
    """Train ``sbir/demo`` on the sample set, evaluate mAP@all on the unseen classes and retrieve for two
    unseen sketches."""

    def inputs(loaded: Loaded, data: dict) -> list[Path]:
        return [p for p, _ in load_split(loaded.cfg.data, "val").sketches[::7][:2]]

    return run_demo(_task(), workdir, device, "mAP@all", inputs)


def _task() -> Any:
    from zsk.tasks.sbir.cli import TASK

    return TASK


def bench_spec(cfg: Config, device: torch.device, batch_size: int | None) -> BenchSpec:
    """The Trainer's ACNet step (G, D, E and proxies, after the warm-up) on a synthetic batch of the recipe's
    image size, and gallery embedding E(p) of one evaluation batch (images/s)."""
    bs = batch_size or cfg.train.batch_size
    model = build_model(_no_pretrained(cfg), DEFAULT_SEEN).to(device)
    g = torch.Generator().manual_seed(0)
    size = cfg.data.image_size
    batch = {"sketch": torch.rand(bs, 3, size, size, generator=g) * 2 - 1,
             "photo": torch.rand(bs, 3, size, size, generator=g) * 2 - 1,
             "label": torch.randint(0, DEFAULT_SEEN, (bs,), generator=g)}
    eval_bs = cfg.eval.batch_size
    photos = (torch.rand(eval_bs, 3, size, size, generator=g) * 2 - 1).to(device)

    def infer_step() -> None:
        was = model.training
        model.eval()
        with torch.no_grad():
            model.embed_photos(photos)
        model.train(was)

    return BenchSpec(model=model, step_fn=make_step_fn(cfg, steps_per_epoch=0), batch=batch, train_cfg=cfg.train,
                     infer_step=infer_step, train_samples=2 * bs, infer_samples=eval_bs,
                     param_groups=param_groups(model, cfg.train), unit="images", infer_unit="photos")
