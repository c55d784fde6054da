"""css hooks for ``info``, ``sample``, ``zsk demo`` and ``zsk bench``."""

from __future__ import annotations

import time
from dataclasses import replace
from pathlib import Path
from typing import Any

import torch

from zsk.core.bench import BenchSpec, count_flops, count_params, synchronize
from zsk.core.errors import ZskError
from zsk.core.stages import stage_config
from zsk.core.task import Loaded, run_demo
from zsk.tasks.css import increments
from zsk.tasks.css.config import Config
from zsk.tasks.css.data import write_sample
from zsk.tasks.css.model import frozen_copy
from zsk.tasks.css.train import (
    OldModelState,
    build_model,
    class_names,
    continual_steps,
    make_step_fn,
)


def info(cfg: Config) -> dict[str, Any]:
    """Task, steps, classes per step, parameters and GFLOPs of one forward pass at the crop size."""
    steps = continual_steps(cfg)
    names = class_names(cfg)
    model = build_model(cfg, pretrained=False).eval()
    total, trainable = count_params(model)
    crop = cfg.data.crop_size
    x = torch.zeros(1, 3, crop, crop)
    with torch.no_grad():
        flops = count_flops(lambda: model(x, return_attn=True))
    return {
        "dataset": cfg.data.dataset,
        "task": cfg.data.task if cfg.data.steps is None else "custom",
        "setting": "overlapped" if cfg.data.overlap else "disjoint",
        "steps": len(steps),
        "classes_per_step": increments.classes_per_step(steps),
        "classes": len(names),
        "base_classes": names[: len(steps[0])],
        "encoder": cfg.model.encoder,
        "pretrained": cfg.model.pretrained or "random init",
        "params_total": total,
        "params_trainable": trainable,
        "input": f"1x3x{crop}x{crop}",
        "gflops": flops / 1e9,
    }


def bench_spec(cfg: Config, device: torch.device, batch_size: int | None) -> BenchSpec:
    """Random-init model of the recipe at its crop size, timed on the first incremental step (old-model
    forward, pseudo-labels, CE + UNKD + L_SATS) or on step 0 for a one-step task; ``extra`` times the old
    model's forward pass alone and a step-0 forward/backward (images/s per kind of step)."""
    steps = continual_steps(cfg)
    t = 1 if len(steps) > 1 else 0
    tcfg = stage_config(cfg.train, f"step{t}")
    bs = batch_size or tcfg.batch_size
    tcfg = replace(tcfg, batch_size=bs)
    model = build_model(cfg, pretrained=False).to(device)
    old_state = None
    if t:
        old = frozen_copy(model, 0)
        n_all = sum(len(s) for s in steps[:2])
        thr = torch.full((n_all,), cfg.train.pseudo_label.min_threshold, device=device)
        old_state = OldModelState(old, model.num_classes(0), thr if cfg.train.pseudo_label.enabled else None, 1.0)
    model.active_step = t
    crop = cfg.data.crop_size
    g = torch.Generator().manual_seed(0)
    images = torch.randn(bs, 3, crop, crop, generator=g)
    labels = torch.randint(0, model.num_classes(t), (bs, crop, crop), generator=g)
    one = images[:1].to(device)

    @torch.no_grad()
    def infer_step() -> None:
        model.eval()
        model(one).argmax(1)
        model.train()

    def timed(fn: Any, repeats: int = 3) -> float:
        fn()  # warm-up
        synchronize(device)
        t0 = time.perf_counter()
        for _ in range(repeats):
            fn()
        synchronize(device)
        return (time.perf_counter() - t0) / repeats

    def extra() -> dict[str, Any]:
        """Seconds per batch of the old model's forward (attention maps included) and of a step-0 forward +
        backward (CE only), beside the timed incremental step."""
        x, y = images.to(device), labels.to(device)
        out: dict[str, Any] = {"timed_step": f"step{t}"}
        base_step = make_step_fn(cfg, None)

        def step0() -> None:
            model.zero_grad(set_to_none=True)
            base_step(model, {"image": x, "label": y}, 0)["loss"].backward()

        dt0 = timed(step0)
        model.zero_grad(set_to_none=True)
        out.update({"step0_forward_backward_s_per_batch": dt0, "step0_forward_backward_images_per_s": bs / dt0})
        if old_state is not None:
            with torch.no_grad():
                dt = timed(lambda: old_state.model(x, return_attn=True))
            out.update({"old_model_forward_s_per_batch": dt, "old_model_forward_images_per_s": bs / dt})
        return out

    return BenchSpec(model=model, step_fn=make_step_fn(cfg, old_state), batch={"image": images, "label": labels},
                     train_cfg=tcfg, infer_step=infer_step, train_samples=bs, infer_samples=1, unit="images",
                     extra=extra)


def sample(out: Path, seed: int = 0, *, num_train: int = 40, num_val: int = 12) -> dict[str, Any]:
    """Write a small synthetic PASCAL VOC 2012 set (MiB layout) with VOC classes 1..5 for the 3-step demo task."""
    if num_train < 1 or num_val < 1:
        raise ZskError("--train and --val must be at least 1")
    out = Path(out)
    root = write_sample(out, num_train, num_val, seed)
    return {"root": str(root), "train": num_train, "val": num_val,
            "use": f"zsk css train --recipe css/demo --set data.root={root}"}


def sample_data(root: Path) -> dict[str, Any]:
    """The demo's data (``data.root: "@sample"``): the default sample set (40 train, 12 val, seed 0)."""
    return {"data.root": str(write_sample(root))}


def demo(workdir: Path, device: str) -> dict[str, Any]:
    """Train the 3-step ``css/demo`` task on the sample data, evaluate all-class mIoU, predict one image."""

    def inputs(loaded: Loaded, data: dict) -> list[Path]:
        return sorted((Path(data["root"]) / "JPEGImages").glob("val_*.jpg"))[:1]

    return run_demo(_task(), workdir, device, "all", inputs)


def _task() -> Any:
    from zsk.tasks.css.cli import TASK

    return TASK
