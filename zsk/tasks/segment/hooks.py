"""segment's hooks for ``info``, ``sample``, ``zsk demo`` and ``zsk bench``."""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F

from zsk.core.bench import BenchSpec, count_flops, count_params
from zsk.core.errors import ZskError
from zsk.core.stages import stage_config
from zsk.core.task import Loaded, run_demo
from zsk.tasks.segment.config import Config
from zsk.tasks.segment.data import load_benchmark, write_sample
from zsk.tasks.segment.model import unused_self_attention_params
from zsk.tasks.segment.train import build_model, make_step_fn, param_groups, stage_settings


def _bench_classes(cfg: Config) -> tuple[list[str], tuple[int, ...]]:
    """Class names and seen ids without reading images (folder datasets read their class-name file)."""
    bench = load_benchmark(cfg.data)
    return bench.class_names, bench.seen


def info(cfg: Config) -> dict[str, Any]:
    """Classes, splits, parameters (zsk's own and the paper-comparable count) and GFLOPs at the crop size."""
    names, seen = _bench_classes(cfg)
    model, _ = build_model(cfg, pretrained=False)
    model.eval()
    total, trainable = count_params(model)
    text_params = sum(p.numel() for p in model.text_encoder.parameters()) if model.text_encoder is not None else 0
    unused = unused_self_attention_params(model.embed_dim, cfg.model.decoder_layers)
    crop = cfg.data.crop_size
    x = torch.zeros(1, 3, crop, crop)
    text = F.normalize(torch.randn(len(names), model.embed_dim), dim=-1)
    with torch.no_grad():
        flops = count_flops(lambda: model(x, text))
    return {
        "dataset": cfg.data.dataset,
        "classes": len(names),
        "seen": len(seen),
        "unseen": len(names) - len(seen),
        "unseen_classes": [n for i, n in enumerate(names) if i not in set(seen)],
        "setting": cfg.train.setting,
        "clip": f"{cfg.model.clip.name} ({cfg.model.clip.pretrained or 'random init'})",
        "params_total": total,
        "params_image_model": total - text_params,
        "params_trainable": trainable,
        "params_trainable_paper_comparable": trainable + unused,
        "unused_self_attention_params_not_built": unused,
        "input": f"1x3x{crop}x{crop}, {len(names)} classes",
        "gflops": flops / 1e9,
        "gmacs": flops / 2e9,
    }


def bench_spec(cfg: Config, device: torch.device, batch_size: int | None) -> BenchSpec:
    """Random-init ZegCLIP of the recipe at its crop size: the first training stage's step (seen-class
    queries for the inductive and transductive settings, all classes when fully supervised) with its
    optimizer groups and accumulation, and one whole-image inference over every class."""
    names, seen = _bench_classes(cfg)
    stage, setting = stage_settings(cfg)[0]
    tcfg = stage_config(cfg.train, stage) if stage else cfg.train
    bs = batch_size or tcfg.batch_size
    tcfg = replace(tcfg, batch_size=bs)
    model, _ = build_model(cfg, pretrained=False)
    model.to(device)
    crop = cfg.data.crop_size
    g = torch.Generator().manual_seed(0)
    all_text = F.normalize(torch.randn(len(names), model.embed_dim, generator=g), dim=-1).to(device)
    train_text = all_text if setting == "fully" else all_text[list(seen)]
    images = torch.randn(bs, 3, crop, crop, generator=g)
    labels = torch.randint(0, train_text.shape[0], (bs, crop, crop), generator=g)
    infer_images = images[:1].to(device)

    @torch.no_grad()
    def infer_step() -> None:
        model.eval()
        model(infer_images, all_text).sigmoid().argmax(1)

    return BenchSpec(model=model, step_fn=make_step_fn(cfg, train_text), batch={"image": images, "label": labels},
                     train_cfg=tcfg, infer_step=infer_step, train_samples=bs, infer_samples=1,
                     param_groups=param_groups(model, tcfg), unit="images")


def sample(out: Path, seed: int = 0, *, num_train: int = 48, num_val: int = 12) -> dict[str, Any]:
    """Write a small synthetic PASCAL VOC 2012 set (JPEGImages, SegmentationClass, ImageSets) for the demo recipe."""
    if num_train < 1 or num_val < 1:
        raise ZskError("--train and --val must be at least 1")
    out = Path(out)
    root = write_sample(out, num_train, num_val, seed)
    return {"root": str(root), "train": num_train, "val": num_val,
            "use": f"zsk segment train --recipe segment/demo --set data.root={root}"}


def sample_data(root: Path) -> dict[str, Any]:
    """The demo's data (``data.root: "@sample"``): the default sample set (48 train, 12 val, seed 0)."""
    return {"data.root": str(write_sample(root))}


def demo(workdir: Path, device: str) -> dict[str, Any]:
    """Train ``segment/demo`` on the sample data, evaluate mIoU over the seen classes and predict one image."""

    def inputs(loaded: Loaded, data: dict) -> list[Path]:
        return sorted((Path(data["root"]) / "JPEGImages").glob("*.jpg"))[:1]

    return run_demo(_task(), workdir, device, "mIoU_seen", inputs)


def _task() -> Any:
    from zsk.tasks.segment.cli import TASK

    return TASK
