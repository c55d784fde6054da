"""contrast's hooks for `info`, `sample`, `zsk demo` and `zsk bench`."""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

import torch

from zsk.core.bench import BenchSpec, count_flops, count_params, synchronize
from zsk.core.errors import ZskError
from zsk.core.stages import stage_config
from zsk.core.task import Loaded, run_demo
from zsk.tasks.contrast import data as cdata
from zsk.tasks.contrast.config import Config
from zsk.tasks.contrast.train import MetaStep, MetAugStep, build_model, with_epoch_milestones

# images and classes of the benchmarks' training sets, for `info`/`bench` without the files
BENCHMARK_SIZES = {"cifar10": (50000, 10), "cifar100": (50000, 100), "stl10": (105000, 10),
                   "tiny_imagenet": (100000, 200), "folder": (50000, 1000)}


def data_shape(cfg: Config) -> tuple[int, int, str]:
    """(pretraining images, classes, where from): read from the files when present, else the benchmark table."""
    if cfg.data.root == "@sample":
        return 24 * len(cdata.SAMPLE_CLASSES), len(cdata.SAMPLE_CLASSES), "the sample set (zsk contrast sample)"
    try:
        images = cdata.read_split(cfg.data, cfg.data.train_split, pretrain=True)
        return len(images), len(images.classes), images.source
    except ZskError:
        n, k = (126689, 100) if cfg.data.class_list else BENCHMARK_SIZES[cfg.data.format]  # ImageNet-100
        return n, k, f"benchmark table for data.format={cfg.data.format} (files not found under data.root)"


def info(cfg: Config) -> dict:
    """Parameters per part, GFLOPs per image of the probe's forward (counted on the meta device), sizes."""
    n, k, source = data_shape(cfg)
    with torch.device("meta"):
        net = build_model(cfg, n, k).eval()
    total, _ = count_params(net)
    parts = {"encoder": count_params(net.encoder)[0], "generators": count_params(net.generators)[0],
             "probe": count_params(net.probe)[0]}
    s = cfg.data.image_size
    x = torch.zeros(1, 3, s, s, device="meta")
    flops = count_flops(lambda: net(x))
    return {
        "backbone": cfg.model.backbone,
        "data": {"format": cfg.data.format, "pretrain_images": n, "classes": k, "source": source,
                 "image_size": s},
        "memory_bank": {"rows": n, "dim": cfg.model.feat_dim, "views": 3, "negatives": cfg.model.nce_k},
        "params_total": total,
        "params_trainable": parts["encoder"] + parts["generators"] + parts["probe"],
        "params_by_part": parts,
        "probe_input_dim": net.probe_dim(cfg.eval.layer, cfg.eval.features),
        "gflops": flops / 1e9,
        "gflops_unit": "per image (3 view encoders + linear probe)",
        "protocol": cfg.eval.protocol,
        "layer": cfg.eval.layer,
    }


def bench_spec(cfg: Config, device: torch.device, batch_size: int | None) -> BenchSpec:
    """The pretraining Trainer step (the encoder step with the recipe's SGD) on a random batch of the recipe's image
    size; `extra` also times the full iteration with the second-order meta step of the generators."""
    n, k, _ = data_shape(cfg)
    tcfg = stage_config(cfg.train, "pretrain")
    bs = batch_size or tcfg.batch_size
    tcfg = with_epoch_milestones(tcfg, max(1, n // bs))
    g = torch.Generator().manual_seed(0)
    s = cfg.data.image_size
    x = torch.randn(bs, 3, s, s, generator=g)
    y = torch.randint(0, k, (bs,), generator=g)
    index = torch.randperm(n, generator=g)[:bs]
    net = build_model(cfg, n, k).to(device)
    step = MetAugStep(net, cfg, tcfg)
    groups = [{"params": net.encoder_parameters()}]

    def infer_step() -> None:
        with torch.no_grad():
            net.eval()
            net(x.to(device))
            net.train()

    spec = BenchSpec(model=net, step_fn=step, batch=(x, y, index), train_cfg=tcfg, infer_step=infer_step,
                     train_samples=bs, infer_samples=bs, param_groups=groups, unit="images")

    def with_meta(steps: int = 3) -> dict[str, Any]:
        from zsk.core.bench import trainer_step

        run, _ = trainer_step(spec, cfg, device)
        meta = MetaStep(step, tcfg)
        run()
        meta.meta_update(*step.last)  # warm-up
        synchronize(device)
        t0 = time.perf_counter()
        for _ in range(steps):
            run()
            meta.meta_update(*step.last)
        synchronize(device)
        dt = (time.perf_counter() - t0) / steps
        return {"train_images_per_s_with_meta_step": bs / dt, "iteration_with_meta_step_s": dt,
                "note": "train_images_per_s: the encoder step only; *_with_meta_step: encoder step + meta step"}

    spec.extra = with_meta
    return spec


def sample(out: Path, seed: int = 0, *, per_class: int = 24) -> dict[str, Any]:
    """Write a small synthetic image-folder set (train/ and val/, 4 classes of coloured textures)."""
    from zsk.core.io import output_folder

    folder = output_folder(Path(out), "sample folder")
    return {"directory": str(folder), **cdata.write_sample(folder, per_class, max(1, per_class // 3), seed)}


def sample_data(root: Path) -> dict[str, Any]:
    """The demo's data (`data.root: "@sample"`): the default sample set (seed 0)."""
    cdata.write_sample(root)
    return {"data.root": str(root)}


def demo(workdir: Path, device: str) -> dict[str, Any]:
    """Train `contrast/demo` (pretraining + linear probe) on the sample set, evaluate top-1 and predict two images."""

    def inputs(loaded: Loaded, data: dict) -> list[Path]:
        val = Path(data["root"]) / "val"
        return sorted(val.rglob("*.png"))[:2]

    return run_demo(_task(), workdir, device, "top1", inputs)


def _task() -> Any:
    from zsk.tasks.contrast.cli import TASK

    return TASK
