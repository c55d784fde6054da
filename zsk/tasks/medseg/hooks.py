"""medseg's hooks for ``info``, ``sample``, ``zsk demo`` and ``zsk bench``."""

from __future__ import annotations

import statistics
import time
from pathlib import Path
from typing import Any

import torch

from zsk.core.bench import BenchSpec, count_flops, count_params, synchronize
from zsk.core.errors import ZskError
from zsk.core.task import Loaded, run_demo
from zsk.models.inferers import MeasuredBatch
from zsk.tasks.medseg.config import Config
from zsk.tasks.medseg.data import split_cases, write_sample
from zsk.tasks.medseg.evaluate import infer_volume, window_batch_for
from zsk.tasks.medseg.train import build_model, make_step_fn

LA_VOLUME = (180, 140, 88)  # a typical preprocessed LA case (observed shapes of the official h5 files)


def info(cfg: Config) -> dict[str, Any]:
    """Classes, splits, parameter counts and forward GFLOPs per training patch."""
    model = build_model(cfg).eval()
    total, trainable = count_params(model)
    # FLOPs depend on shapes only: count them on the meta device, without computing a 3-D forward pass
    model = model.to("meta")
    x = torch.zeros(1, cfg.model.in_channels, *cfg.data.patch_size, device="meta")
    with torch.no_grad():
        flops = count_flops(lambda: model(x))
    splits: dict[str, Any] = {}
    for split in ("train", "test"):
        try:
            n = len(split_cases(cfg.data, split))
            splits[split] = n if split == "test" else {"cases": n, "labeled": min(cfg.data.labeled_num, n),
                                                       "unlabeled": max(n - cfg.data.labeled_num, 0)}
        except ZskError as e:
            splits[split] = f"not available ({e})"
    return {"task": "medseg", "model": "dual-task V-Net (DTC)", "classes": list(cfg.data.class_names),
            "params_total": total, "params_trainable": trainable, "input_patch": list(cfg.data.patch_size),
            "gflops": flops / 1e9, "gflops_unit": "per training patch", "eval_window": list(cfg.eval_patch),
            "eval_stride": list(cfg.eval.stride), "splits": splits}


def sample(out: Path, seed: int = 0, *, num_train: int = 12, num_test: int = 4, shape: str = "48,40,32") -> dict[str, Any]:
    """Write synthetic volumes (ellipsoid-like structure + noise) in the LA HDF5 layout and as NIfTI."""
    if num_train < 1 or num_test < 1:
        raise ZskError("sample: --train and --test must be at least 1")
    try:
        size = tuple(int(v) for v in shape.split(","))
    except ValueError:
        size = ()
    if len(size) != 3 or min(size) < 8 or max(size) > 512:
        raise ZskError(f"sample: --shape {shape!r} must be three sizes from 8 to 512, e.g. 48,40,32")
    out = Path(out)
    paths = write_sample(out, num_train=num_train, num_test=num_test, shape=size, seed=seed)
    return {"la": str(paths["la"]), "nifti": str(paths["nifti"]), "train": num_train, "test": num_test,
            "next": f"zsk medseg train --recipe medseg/demo --set data.root={paths['la']}"}


def sample_data(root: Path) -> dict[str, Any]:
    """The demo's data (``data.root: "@sample"``): the default sample set, LA layout."""
    return {"data.root": str(write_sample(root)["la"])}


def demo(workdir: Path, device: str) -> dict[str, Any]:
    """Train ``medseg/demo`` on the sample data, evaluate Dice and predict one NIfTI case."""

    def inputs(loaded: Loaded, data: dict) -> list[Path]:
        return sorted((Path(data["root"]).parent / "nifti" / "images").glob("*.nii.gz"))[:1]

    return run_demo(_task(), workdir, device, "dice", inputs)


def _task() -> Any:
    from zsk.tasks.medseg.cli import TASK

    return TASK


def bench_spec(cfg: Config, device: torch.device, batch_size: int | None,
               volume_shape: tuple[int, int, int] = LA_VOLUME) -> BenchSpec:
    """The Trainer's step on a synthetic two-stream batch of the recipe's patch size, and sliding-window
    inference on an LA-sized volume (180×140×88); ``extra`` times one window per forward against batches
    of 8, paired, checks they agree, and reports the batch ``eval.window_batch: auto`` measured."""
    bs = batch_size or cfg.train.batch_size
    lbs = min(cfg.train.labeled_bs, bs)
    model = build_model(cfg).to(device)
    g = torch.Generator().manual_seed(0)
    patch = cfg.data.patch_size
    n_fg = cfg.data.num_classes - 1
    batch = {"image": torch.randn(bs, cfg.model.in_channels, *patch, generator=g),
             "label": torch.randint(0, cfg.data.num_classes, (bs, *patch), generator=g),
             "sdf": torch.rand(bs, n_fg, *patch, generator=g) * 2 - 1,
             "labeled": torch.arange(bs) < lbs}
    volume = torch.randn(*volume_shape, generator=g).numpy()

    def infer_step() -> None:
        infer_volume(model, volume, cfg, device)

    def extra() -> dict[str, Any]:
        """One window per forward against batches of 8, timed as pairs: interleaved runs, medians of CPU and
        wall time, so both sides see the same machine load (issue 19); and the batch `auto` measured."""
        choice = window_batch_for(cfg.eval.window_batch, device, model, cfg.eval_patch)
        if isinstance(choice, MeasuredBatch) and choice.chosen is None:
            infer_volume(model, volume, cfg, device)  # lets `auto` measure (bench runs infer_step first anyway)
        chosen = choice.chosen if isinstance(choice, MeasuredBatch) else choice
        times: dict[int, list[tuple[float, float]]] = {1: [], 8: []}
        outputs: dict[int, torch.Tensor] = {}
        for wb in times:
            infer_volume(model, volume, cfg, device, wb)  # warm-up
        for _ in range(3):
            for wb in times:
                c0, t0 = time.process_time(), time.perf_counter()
                _, outputs[wb] = infer_volume(model, volume, cfg, device, wb)
                synchronize(device)
                times[wb].append((time.process_time() - c0, time.perf_counter() - t0))
        med = {wb: (statistics.median(c for c, _ in ts), statistics.median(w for _, w in ts)) for wb, ts in times.items()}
        return {"volume_shape": list(volume_shape), "window_batch": chosen,
                "window_batch_setting": cfg.eval.window_batch,
                "s_per_volume_one_window": med[1][1], "cpu_s_per_volume_one_window": med[1][0],
                "s_per_volume_batched_8": med[8][1], "cpu_s_per_volume_batched_8": med[8][0],
                "batched_8_speedup_cpu": med[1][0] / med[8][0] if med[8][0] > 0 else None,
                "batched_8_speedup_wall": med[1][1] / med[8][1] if med[8][1] > 0 else None,
                "batched_vs_single_max_abs_diff": float((outputs[8] - outputs[1]).abs().max())}

    return BenchSpec(model=model, step_fn=make_step_fn(cfg), batch=batch, train_cfg=cfg.train, infer_step=infer_step,
                     train_samples=bs, infer_samples=1, unit="patches", infer_unit="volumes", extra=extra)
