"""medseg pipeline: DTC training on two-stream batches, sliding-window evaluation with Dice / Jaccard /
HD95 / ASD, prediction to NIfTI / HDF5 with a PNG montage, ``info``, and the ``zsk demo`` / ``zsk bench``
hooks."""

from __future__ import annotations

import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from zsk.core import dist
from zsk.core.bench import BenchSpec, count_flops, count_params
from zsk.core.cache import code_version, default_cache, file_fingerprint
from zsk.core.checkpoint import load_checkpoint, load_model_state
from zsk.core.device import autocast, autocast_dtype, resolve_device
from zsk.core.errors import ZskError
from zsk.core.progress import log, progress
from zsk.core.run import RunContext, config_from_checkpoint
from zsk.core.trainer import Trainer, make_loader
from zsk.data.volumes import (
    Volume,
    is_h5,
    is_nifti,
    read_h5_volume,
    read_nifti_volume,
    write_h5_volume,
    write_nifti,
)
from zsk.metrics.medical import binary_case_metrics
from zsk.tasks.medseg.config import Config
from zsk.tasks.medseg.data import (
    CaseRef,
    TwoStreamBatchSampler,
    TwoStreamTrainSet,
    load_case,
    split_cases,
    write_sample,
)
from zsk.tasks.medseg.inference import scores_to_labels, sliding_window_scores
from zsk.tasks.medseg.losses import dtc_loss
from zsk.tasks.medseg.model import DualTaskVNet

TASK = "medseg"
METRICS = ("dice", "jaccard", "hd95", "asd")


def build_model(cfg: Config) -> DualTaskVNet:
    """The dual-task V-Net described by the recipe (random init)."""
    m = cfg.model
    return DualTaskVNet(num_classes=cfg.data.num_classes, in_channels=m.in_channels, n_filters=m.n_filters,
                        norm=m.norm, dropout=m.dropout)


# ----------------------------------------------------------------------------- dataset index


def index_cases(cases: Sequence[CaseRef], cfg: Config, labeled_num: int, what: str) -> list[dict]:
    """Open and validate every case once (shape, finite voxels, labels present where needed); the
    result is cached by file fingerprints so later runs skip the reads."""

    def compute() -> list[dict]:
        out = []
        for i, ref in enumerate(progress(cases, desc=f"checking {what} cases")):
            vol = load_case(ref, cfg.data, require_label=i < labeled_num)
            out.append({"name": ref.name, "shape": list(vol.shape), "labeled": vol.label is not None})
        return out

    key = {"what": "medseg-cases", "code": code_version(), "labeled_num": labeled_num,
           "keys": [cfg.data.image_key, cfg.data.label_key, cfg.data.num_classes],
           "files": [[file_fingerprint(r.image), file_fingerprint(r.label) if r.label else None] for r in cases]}
    return default_cache().get_or_compute("medseg-index", key, compute)


# ----------------------------------------------------------------------------- training


def make_step_fn(cfg: Config):
    """step_fn(model, batch, step) for the trainer: forward both heads and return the DTC loss terms."""
    num_classes, loss_cfg = cfg.data.num_classes, cfg.train.loss

    def step_fn(model: nn.Module, batch: dict[str, torch.Tensor], step: int) -> dict[str, torch.Tensor]:
        level_set, seg_logits = model(batch["image"])
        return dtc_loss(level_set, seg_logits, batch["label"], batch["sdf"], batch["labeled"], step, num_classes,
                        loss_cfg)

    return step_fn


def train(ctx: RunContext) -> dict[str, Any]:
    """Train DTC with the recipe in ``ctx`` and return the final evaluation metrics."""
    cfg: Config = ctx.cfg
    d, t = cfg.data, cfg.train
    cases = split_cases(d, "train")
    if d.labeled_num > len(cases):
        raise ZskError(f"data.labeled_num = {d.labeled_num} but the train list has only {len(cases)} cases")
    index_cases(cases, cfg, d.labeled_num, "train")
    labeled, unlabeled = list(range(d.labeled_num)), list(range(d.labeled_num, len(cases)))
    if t.labeled_bs == t.batch_size and unlabeled:
        log(f"train.labeled_bs = train.batch_size: supervised training on {len(labeled)} labelled cases, "
            f"{len(unlabeled)} unlabelled cases unused")
    log(f"medseg: {len(labeled)} labelled + {len(unlabeled)} unlabelled cases, patch {list(d.patch_size)}")
    dataset = TwoStreamTrainSet(cases, d)
    info = ctx.dist
    seed = cfg.runtime.seed

    def sampler(epoch: int) -> TwoStreamBatchSampler:
        return TwoStreamBatchSampler(labeled, unlabeled, t.batch_size, t.labeled_bs, seed=seed, epoch=epoch,
                                     rank=info.rank, world_size=info.world_size)

    def loader_fn(epoch: int, start_batch: int):
        return make_loader(dataset, t.batch_size, epoch=epoch, seed=seed, batch_sampler=sampler(epoch),
                           start_batch=start_batch, workers=cfg.runtime.workers)

    steps_per_epoch = len(sampler(0))
    model = build_model(cfg)
    test_cases = split_cases(d, cfg.eval.split) if cfg.eval.split else []

    def eval_fn(m: nn.Module) -> dict[str, float]:
        if not test_cases:
            return {}
        res = evaluate_cases(m, cfg, test_cases[: cfg.eval.max_cases], ctx.device)
        return {k: res[k] for k in METRICS}

    extra = {"class_names": list(d.class_names), "num_classes": d.num_classes, "patch_size": list(d.patch_size)}
    trainer = Trainer(ctx, model, t, make_step_fn(cfg), loader_fn, steps_per_epoch,
                      eval_fn=eval_fn if test_cases else None, extra=extra)
    return trainer.fit()


# ----------------------------------------------------------------------------- inference + evaluation


def load_model(checkpoint: Path, sets: list[str] | None = None, recipe: Path | None = None,
               device: str | None = None) -> tuple[DualTaskVNet, Config, torch.device]:
    """A trained model in eval mode with the config it was trained with (plus ``--set`` overrides)."""
    state = load_checkpoint(checkpoint)
    if state.get("task") not in (None, TASK):
        raise ZskError(f"{checkpoint} is a checkpoint of task {state.get('task')!r}, not medseg")
    cfg, _ = config_from_checkpoint(state, Config, sets, recipe)
    dev = resolve_device(device, cfg.runtime.device)
    model = build_model(cfg)
    load_model_state(model, state["model"], source=str(checkpoint))
    return model.to(dev).eval(), cfg, dev


def infer_volume(model: nn.Module, image: np.ndarray, cfg: Config, device: torch.device,
                 window_batch: int | None = None) -> tuple[np.ndarray, torch.Tensor]:
    """Sliding-window class map (and averaged scores) of one (X, Y, Z) volume."""
    was_training = model.training
    model.eval()
    with torch.no_grad(), autocast(device, autocast_dtype(device, cfg.runtime.precision)):
        scores = sliding_window_scores(model, torch.from_numpy(np.ascontiguousarray(image)), cfg.eval_patch,
                                       cfg.eval.stride, cfg.data.num_classes,
                                       window_batch or cfg.eval.window_batch)
    model.train(was_training)
    pred = scores_to_labels(scores, cfg.data.num_classes, cfg.eval.threshold, cfg.eval.largest_component)
    return pred, scores


def case_spacing(vol: Volume, cfg: Config) -> tuple[float, float, float] | None:
    """Millimetres per voxel: the file's own spacing, else ``data.spacing``, else unknown (None)."""
    if vol.spacing_from_file:
        return vol.spacing
    return tuple(cfg.data.spacing) if cfg.data.spacing is not None else None  # type: ignore[return-value]


def case_metrics(pred: np.ndarray, vol: Volume, cfg: Config) -> dict[str, Any]:
    """Metrics of one case: binary directly, multi-class per foreground class then averaged."""
    spacing = None
    if cfg.eval.spacing == "header":
        spacing = case_spacing(vol, cfg)
        if spacing is None:
            raise ZskError(f"{vol.path}: distances in mm need the voxel spacing, which this file does not store; "
                           "set data.spacing=[x,y,z] (LA: 0.625 mm isotropic) or evaluate in voxels")
    assert vol.label is not None
    per_class = {}
    for c in range(1, cfg.data.num_classes):
        per_class[cfg.data.class_names[c]] = binary_case_metrics(pred == c, vol.label == c, spacing, cfg.eval.asd)
    if cfg.data.num_classes == 2:
        return {"case": vol.name, **next(iter(per_class.values()))}
    mean = {k: float(np.nanmean([m[k] for m in per_class.values()])) for k in METRICS}
    return {"case": vol.name, **mean, "per_class": per_class}


def evaluate_cases(model: nn.Module, cfg: Config, cases: Sequence[CaseRef], device: torch.device) -> dict[str, Any]:
    """Sliding-window predictions and metrics over cases (split across ranks), averaged over cases."""
    info = dist.get_dist()
    mine = list(cases)[info.rank::info.world_size]
    rows = []
    for ref in progress(mine, desc="evaluating"):
        vol = load_case(ref, cfg.data, require_label=True)
        pred, _ = infer_volume(model, vol.image, cfg, device)
        rows.append(case_metrics(pred, vol, cfg))
    rows = [r for part in dist.all_gather_object(rows) for r in part] if info.enabled else rows
    order = {ref.name: i for i, ref in enumerate(cases)}
    rows.sort(key=lambda r: order.get(r["case"], 0))
    if not rows:
        raise ZskError("the evaluation split has no cases")
    result: dict[str, Any] = {k: float(np.nanmean([r[k] for r in rows])) for k in METRICS}
    result.update(cases=len(rows), largest_component=cfg.eval.largest_component,
                  distances="mm" if cfg.eval.spacing == "header" else "voxels", asd_mode=cfg.eval.asd,
                  per_case=rows)
    return result


def evaluate(checkpoint: Path, sets: list[str] | None = None, recipe: Path | None = None, split: str | None = None,
             device: str | None = None) -> dict[str, Any]:
    """Evaluate a checkpoint on a split (default: the recipe's ``eval.split``)."""
    model, cfg, dev = load_model(checkpoint, sets, recipe, device)
    cases = split_cases(cfg.data, split or cfg.eval.split or "test")
    if cfg.eval.max_cases:
        cases = cases[: cfg.eval.max_cases]
    return evaluate_cases(model, cfg, cases, dev)


# ----------------------------------------------------------------------------- prediction


def _read_input(path: Path, cfg: Config) -> Volume:
    if is_nifti(path):
        return read_nifti_volume(path)
    if is_h5(path):
        return read_h5_volume(path, cfg.data.image_key, cfg.data.label_key)
    raise ZskError(f"{path}: unknown volume format; predict reads .nii, .nii.gz and .h5")


def montage(image: np.ndarray, mask: np.ndarray, num_slices: int = 8, columns: int = 4) -> np.ndarray:
    """An RGB grid of axial slices (evenly spaced over the predicted structure, or the volume) with the
    mask outlined in colour; uint8 (H, W, 3)."""
    from scipy import ndimage

    z_with = np.flatnonzero(mask.any(axis=(0, 1)))
    lo, hi = (z_with[0], z_with[-1]) if z_with.size else (0, image.shape[2] - 1)
    zs = np.unique(np.linspace(lo, hi, num_slices).round().astype(int))
    vmin, vmax = np.percentile(image, [1, 99])
    gray = np.clip((image - vmin) / max(vmax - vmin, 1e-6), 0, 1)
    colours = np.array([[255, 0, 0], [0, 255, 0], [0, 128, 255], [255, 255, 0], [255, 0, 255], [0, 255, 255]], np.uint8)
    tiles = []
    for z in zs:
        tile = np.repeat((gray[:, :, z] * 255).astype(np.uint8)[..., None], 3, axis=-1)
        for c in range(1, int(mask.max(initial=0)) + 1):
            m = mask[:, :, z] == c
            edge = m & ~ndimage.binary_erosion(m)
            tile[edge] = colours[(c - 1) % len(colours)]
        tiles.append(np.rot90(tile))  # x to the right, y up, as viewers show axial slices
    scale = max(1, 128 // min(tiles[0].shape[:2]))  # small volumes are enlarged (nearest neighbour)
    tiles = [t.repeat(scale, axis=0).repeat(scale, axis=1) for t in tiles]
    rows = []
    h, w = tiles[0].shape[:2]
    blank = np.zeros((h, w, 3), np.uint8)
    for r in range(0, len(tiles), columns):
        row = tiles[r:r + columns] + [blank] * (columns - len(tiles[r:r + columns]))
        rows.append(np.concatenate(row, axis=1))
    return np.concatenate(rows, axis=0)


def predict(checkpoint: Path, inputs: Sequence[Path], out_dir: Path, sets: list[str] | None = None,
            device: str | None = None) -> list[dict[str, Any]]:
    """Segment volumes: NIfTI in -> ``<name>_pred.nii.gz`` with the input's affine and header; HDF5 in ->
    ``<name>_pred.h5`` (``prediction``, ``probability``); plus ``<name>_montage.png`` for each."""
    from PIL import Image

    model, cfg, dev = load_model(checkpoint, sets, None, device)
    out_dir.mkdir(parents=True, exist_ok=True)
    results = []
    for path in progress(list(inputs), desc="predicting"):
        vol = _read_input(Path(path), cfg)
        pred, scores = infer_volume(model, vol.image, cfg, dev)
        fg_score = scores[0] if cfg.data.num_classes == 2 else 1.0 - scores[0]
        if vol.fmt == "nifti":
            mask_path = out_dir / f"{vol.name}_pred.nii.gz"
            write_nifti(mask_path, pred.astype(np.uint8), vol.affine, vol.header, dtype=np.uint8)
        else:
            mask_path = out_dir / f"{vol.name}_pred.h5"
            import h5py

            write_h5_volume(mask_path, vol.image, None, spacing=case_spacing(vol, cfg))
            with h5py.File(mask_path, "a") as f:
                f.create_dataset("prediction", data=pred.astype(np.uint8), compression="gzip")
                f.create_dataset("probability", data=fg_score.float().cpu().numpy(), compression="gzip")
        png = out_dir / f"{vol.name}_montage.png"
        Image.fromarray(montage(vol.image, pred)).save(png)
        spacing = case_spacing(vol, cfg)
        row = {"input": str(path), "mask": str(mask_path), "montage": str(png), "shape": list(vol.shape),
               "foreground_voxels": int((pred > 0).sum())}
        if spacing is not None:
            row["foreground_ml"] = float((pred > 0).sum()) * float(np.prod(spacing)) / 1000.0
        results.append(row)
    return results


# ----------------------------------------------------------------------------- info / demo / bench


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
    return {"task": TASK, "model": "dual-task V-Net (DTC)", "classes": list(cfg.data.class_names),
            "params_total": total, "params_trainable": trainable, "input_patch": list(cfg.data.patch_size),
            "gflops": flops / 1e9, "gflops_unit": "per training patch", "eval_window": list(cfg.eval_patch), "eval_stride": list(cfg.eval.stride),
            "splits": splits}


def run_demo(workdir: Path, device: str) -> dict[str, Any]:
    """Write the sample data, train ``recipes/medseg/demo.yaml`` on it, evaluate and predict (offline)."""
    from zsk.core.recipe import recipes_dir
    from zsk.core.run import start_run

    workdir = Path(workdir)
    paths = write_sample(workdir / "sample")
    ctx = start_run(TASK, Config, recipes_dir() / TASK / "demo.yaml", [f"data.root={paths['la']}"],
                    out=workdir / "run", device=device)
    train(ctx)
    result = evaluate(ctx.run_dir / "best.pt", device=device)
    first = sorted((paths["nifti"] / "images").glob("*.nii.gz"))[0]
    predict(ctx.run_dir / "best.pt", [first], workdir / "pred", device=device)
    return {"metric": "dice", "value": result["dice"]}


LA_VOLUME = (180, 140, 88)  # a typical preprocessed LA case (spec "Data: LA", observed shapes)


def bench_spec(cfg: Config, device: torch.device, batch_size: int | None,
               volume_shape: tuple[int, int, int] = LA_VOLUME) -> BenchSpec:
    """Training step on a synthetic two-stream batch of the recipe's patch size, and sliding-window
    inference on an LA-sized volume (180×140×88); ``extra`` times batched against one-window-at-a-time
    inference and checks they agree."""
    bs = batch_size or cfg.train.batch_size
    lbs = min(cfg.train.labeled_bs, bs)
    model = build_model(cfg).to(device)
    opt = torch.optim.SGD(model.parameters(), lr=cfg.train.lr, momentum=cfg.train.momentum,
                          weight_decay=cfg.train.weight_decay)
    g = torch.Generator().manual_seed(0)
    patch = cfg.data.patch_size
    n_fg = cfg.data.num_classes - 1
    batch = {"image": torch.randn(bs, cfg.model.in_channels, *patch, generator=g).to(device),
             "label": torch.randint(0, cfg.data.num_classes, (bs, *patch), generator=g).to(device),
             "sdf": (torch.rand(bs, n_fg, *patch, generator=g) * 2 - 1).to(device),
             "labeled": (torch.arange(bs) < lbs).to(device)}
    step_fn = make_step_fn(cfg)

    def train_step() -> None:
        model.train()
        out = step_fn(model, batch, 1000)
        opt.zero_grad(set_to_none=True)
        out["loss"].backward()
        opt.step()

    volume = torch.randn(*volume_shape, generator=g).numpy()

    def infer_step() -> None:
        infer_volume(model, volume, cfg, device)

    def extra() -> dict[str, Any]:
        def timed(window_batch: int) -> tuple[float, torch.Tensor]:
            infer_volume(model, volume, cfg, device, window_batch)  # warm-up
            if device.type == "cuda":
                torch.cuda.synchronize(device)
            t0 = time.perf_counter()
            _, s = infer_volume(model, volume, cfg, device, window_batch)
            if device.type == "cuda":
                torch.cuda.synchronize(device)
            return time.perf_counter() - t0, s

        batched_s, batched = timed(cfg.eval.window_batch)
        single_s, single = timed(1)
        return {"volume_shape": list(volume_shape), "window_batch": cfg.eval.window_batch,
                "s_per_volume_batched": batched_s, "s_per_volume_one_window": single_s,
                "batched_speedup": single_s / batched_s,
                "batched_vs_single_max_abs_diff": float((batched - single).abs().max())}

    return BenchSpec(train_step=train_step, infer_step=infer_step, train_samples=bs, infer_samples=1,
                     unit="patches", infer_unit="volumes", extra=extra)
