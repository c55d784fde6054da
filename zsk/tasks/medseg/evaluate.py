"""DTC inference and evaluation: sliding windows over the volume (DTC's ``test_single_case``: zero-pad
to the patch, fixed strides with the last window clamped, averaged scores), threshold or argmax, the
largest connected component, then Dice, Jaccard, HD95 and ASD per case, averaged over cases."""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
from scipy import ndimage
from torch import nn

from zsk.core import dist
from zsk.core.device import autocast, autocast_dtype
from zsk.core.errors import ZskError
from zsk.core.progress import progress
from zsk.core.task import Loaded, load_trained
from zsk.data.volumes import Volume
from zsk.metrics.medical import binary_case_metrics
from zsk.models.inferers import MeasuredBatch, sliding_window_inference
from zsk.tasks.medseg.config import Config
from zsk.tasks.medseg.data import CaseRef, check_window_fits, load_case, split_cases
from zsk.tasks.medseg.model import seg_probabilities
from zsk.tasks.medseg.train import METRICS, build_model

# `eval.window_batch: auto` times these window batches on the first volume's real windows and keeps the
# fastest per window (zsk.models.inferers.MeasuredBatch), once per device, model and window size in a process.
# Measured on a CPU (tools/perf.py medseg-windows): one window at a time is faster for the LA V-Net's
# 112x112x80 windows, batches of 8 are 3.5x faster for the demo's small model and windows.
WINDOW_BATCH_CANDIDATES: tuple[int, ...] = (1, 8)
_measured_window_batches: dict[tuple, int] = {}


def window_batch_for(value: int | str, device: torch.device, model: nn.Module | None = None,
                     patch: Sequence[int] = ()) -> int | MeasuredBatch:
    """`eval.window_batch` for `device`: the number itself, or for `auto` a `MeasuredBatch` remembered per
    device, model shape and window size."""
    if value != "auto":
        return int(value)
    key = (str(device), type(model).__name__, sum(p.numel() for p in model.parameters()) if model is not None else 0,
           tuple(patch))
    return MeasuredBatch(WINDOW_BATCH_CANDIDATES, _measured_window_batches, key)


@torch.no_grad()
def sliding_window_scores(model: nn.Module, image: torch.Tensor, patch: Sequence[int], stride: Sequence[int],
                          num_classes: int, window_batch: int | MeasuredBatch = 4) -> torch.Tensor:
    """Averaged class scores of a (X, Y, Z) volume: (1, X, Y, Z) sigmoid scores for a binary model,
    (C, X, Y, Z) softmax scores otherwise. ``window_batch`` windows go through the model at once (or as
    many as a `MeasuredBatch` picks)."""
    device = next(model.parameters()).device
    image = image.to(device=device, dtype=torch.float32)

    def predictor(windows: torch.Tensor) -> torch.Tensor:
        _, seg_logits = model(windows)
        return seg_probabilities(seg_logits.float(), num_classes)

    return sliding_window_inference(image[None], patch, stride, predictor, window_batch=window_batch, pad="symmetric")


def largest_connected_component(mask: np.ndarray) -> np.ndarray:
    """Keep the largest 26-connected foreground component of a binary mask (empty stays empty)."""
    labels, n = ndimage.label(mask, structure=np.ones((3, 3, 3), dtype=bool))
    if n <= 1:
        return mask.astype(bool)
    sizes = np.bincount(labels.ravel())
    sizes[0] = 0
    return labels == int(sizes.argmax())


def scores_to_labels(scores: torch.Tensor, num_classes: int, threshold: float = 0.5,
                     largest_component: bool = True) -> np.ndarray:
    """Class map from averaged scores: threshold (binary) or argmax; optionally the largest component
    of each foreground class."""
    if num_classes == 2:
        pred = (scores[0] > threshold).cpu().numpy().astype(np.uint8)
    else:
        pred = scores.argmax(0).cpu().numpy().astype(np.uint8)
    if largest_component:
        out = np.zeros_like(pred)
        for c in range(1, num_classes):
            out[largest_connected_component(pred == c)] = c
        pred = out
    return pred


def infer_volume(model: nn.Module, image: np.ndarray, cfg: Config, device: torch.device,
                 window_batch: int | None = None) -> tuple[np.ndarray, torch.Tensor]:
    """Sliding-window class map (and averaged scores) of one (X, Y, Z) volume."""
    was_training = model.training
    model.eval()
    with torch.no_grad(), autocast(device, autocast_dtype(device, cfg.runtime.precision)):
        scores = sliding_window_scores(model, torch.from_numpy(np.ascontiguousarray(image)), cfg.eval_patch,
                                       cfg.eval.stride, cfg.data.num_classes,
                                       window_batch or window_batch_for(cfg.eval.window_batch, device, model,
                                                                        cfg.eval_patch))
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


def case_panel(vol: Volume, pred: np.ndarray) -> tuple[str, np.ndarray]:
    """``image | ground truth | prediction`` of one case at the axial slice with the most labelled voxels
    (intensities min-max scaled): what training sends to the experiment trackers."""
    from zsk.data.images import voc_palette
    from zsk.data.overlay import preview_panel

    assert vol.label is not None
    z = int(np.argmax((vol.label > 0).sum(axis=(0, 1))))
    img = vol.image[:, :, z].astype(np.float64)
    span = float(img.max() - img.min()) or 1.0
    grey = ((img - img.min()) / span * 255).round().astype(np.uint8)
    return f"{vol.name}_z{z}", preview_panel(grey, vol.label[:, :, z], pred[:, :, z], voc_palette(256), None)


def evaluate_cases(model: nn.Module, cfg: Config, cases: Sequence[CaseRef], device: torch.device,
                   panels: dict[str, np.ndarray] | None = None) -> dict[str, Any]:
    """Sliding-window predictions and metrics over cases (split across ranks), averaged over cases; with
    ``panels``, the :func:`case_panel` of this rank's first ``runtime.preview_images`` cases is put there
    from the predictions already made (no case inferred twice)."""
    info = dist.get_dist()
    mine = list(cases)[info.rank::info.world_size]
    rows = []
    for i, ref in enumerate(progress(mine, desc="evaluating")):
        vol = load_case(ref, cfg.data, require_label=True)
        check_window_fits(vol.shape, cfg.eval_patch, ref.image, cfg.eval_window_key)
        pred, _ = infer_volume(model, vol.image, cfg, device)
        rows.append(case_metrics(pred, vol, cfg))
        if panels is not None and i < cfg.runtime.preview_images:
            name, panel = case_panel(vol, pred)
            panels[name] = panel
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


def load(checkpoint: Path, sets: list[str] | None = None, device: str | None = None,
         recipe: Path | None = None) -> Loaded:
    """A trained dual-task V-Net in eval mode with the config it was trained with."""
    loaded, _ = load_trained("medseg", checkpoint, Config, build_model, sets, device, recipe)
    return loaded


def evaluate(loaded: Loaded, split: str | None = None, out: Path | None = None, *, spacing_mm: bool = False,
             symmetric: bool = False) -> dict[str, Any]:
    """Evaluate on a split (default: the recipe's ``eval.split``); ``spacing_mm``: HD95/ASD in mm from
    the volume spacing instead of voxels; ``symmetric``: the symmetric ASSD instead of medpy's directed
    ASD of the official code. Writes nothing (``zsk medseg eval --out DIR`` saves the result)."""
    cfg: Config = loaded.cfg
    ecfg = dataclasses.replace(cfg.eval, spacing="header" if spacing_mm else cfg.eval.spacing,
                               asd="symmetric" if symmetric else cfg.eval.asd)
    cfg = dataclasses.replace(cfg, eval=ecfg)
    cases = split_cases(cfg.data, split or cfg.eval.split or "test")
    if cfg.eval.max_cases:
        cases = cases[: cfg.eval.max_cases]
    return evaluate_cases(loaded.model, cfg, cases, loaded.device)
