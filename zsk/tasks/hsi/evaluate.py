"""Dense inference and evaluation for the hsi task (Alam et al., IEEE TGRS 2019).

Inference is dense: node features for whole tiles at once (batched windows, or fully convolutional with
`model.branch_padding: valid`), mean-field over the whole scene with pairwise energies computed on the fly,
then the refinement network in row bands with a halo of context (`zsk.models.inferers.tiled_inference`,
equal to running it on the whole scene). Scored with OA, AA, kappa,
per-class accuracy and F1 on the recipe's split (redrawn from its seed, so it matches training).
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import Tensor

from zsk.core import dist
from zsk.core.checkpoint import load_model_state
from zsk.core.errors import ZskError
from zsk.core.io import output_folder
from zsk.core.progress import progress, warn
from zsk.core.task import Loaded, loaded_model, read_trained
from zsk.metrics.classification import accuracy as overall_accuracy
from zsk.metrics.classification import average_accuracy, cohen_kappa, per_class_accuracy
from zsk.metrics.confusion import ConfusionMatrix
from zsk.models.inferers import Predictor, default_clock, tiled_inference
from zsk.tasks.hsi import data as hsi_data
from zsk.tasks.hsi.config import Config, EvalConfig
from zsk.tasks.hsi.model import CRFGrid, DeconvRefinement, HSINet, mean_field
from zsk.tasks.hsi.train import SceneData, build_model, grid_offset, padded_cube, prepare_scene

SPLITS = ("test", "val", "train", "all")

# ----------------------------------------------------------------------------------------------
# Dense inference
# ----------------------------------------------------------------------------------------------


def row_bands(height: int, width: int, tile_pixels: int, multiple: int = 1) -> range:
    """Start rows of the row bands of about `tile_pixels` pixels that dense inference runs one at a time
    (`range.step` rows each, a multiple of `multiple`)."""
    rows = max(1, tile_pixels // max(1, width))
    return range(0, height, max(multiple, rows - rows % multiple))


def _with_progress(predictor: Predictor, tiles: int, desc: str) -> tuple[Predictor, Iterator[int]]:
    """`predictor` advancing a progress bar of `tiles` steps; exhaust the returned iterator to close the bar."""
    ticks = iter(progress(range(tiles), desc=desc))

    def run(x: Tensor) -> Tensor:
        next(ticks, None)
        return predictor(x)

    return run, ticks


def _tiled(inputs: Tensor, tile: tuple[int, int], halo: tuple[int, int], predictor: Predictor, tiles: int,
           desc: str) -> Tensor:
    """`tiled_inference` with a progress bar over its `tiles` row bands."""
    run, ticks = _with_progress(predictor, tiles, desc)
    out = tiled_inference(inputs, tile, halo, run)
    for _ in ticks:
        pass
    return out


# patch counts tried by `eval.chunk_pixels: auto`, per device type (CPU caches favour small batches; a GPU
# needs large ones to fill), and the choice made per device and model shape in this process
CHUNK_CANDIDATES: dict[str, tuple[int, ...]] = {"cpu": (8, 16, 32, 64, 128, 256), "cuda": (256, 1024, 4096, 16384)}
_measured_chunks: dict[tuple, int] = {}


_clock = default_clock  # CPU time on one CPU thread (other processes' load does not count), else wall time


def measured_chunk(run: Callable[[int, int], None], n: int, device: torch.device, key: tuple) -> tuple[int, int]:
    """Pick the patch chunk of dense prediction by timing: `run(s, e)` computes patches s..e-1 (for real:
    the timed chunks are the scene's first patches, so the measurement costs only their size's inefficiency).
    Each candidate of `CHUNK_CANDIDATES` that fits the scene runs once after a warm-up; the fastest per
    patch wins and is remembered for `key` (device and model shape). Returns (chunk, patches done)."""
    if key in _measured_chunks:
        return _measured_chunks[key], 0
    pool = CHUNK_CANDIDATES.get(device.type) or CHUNK_CANDIDATES.get("cuda", (1024,))
    candidates = [c for c in pool if 4 * c <= n]
    if not candidates:
        return max(1, n), 0
    clock = _clock(device)
    s = candidates[0]
    run(0, s)  # warm-up: kernels, allocations
    best, best_cost = candidates[0], math.inf
    for c in candidates:
        t0 = clock()
        run(s, s + c)
        cost = (clock() - t0) / c
        s += c
        if cost < best_cost:
            best, best_cost = c, cost
    _measured_chunks[key] = best
    return best, s


@torch.no_grad()
def node_features(net: HSINet, padded: Tensor, eval_cfg: EvalConfig, desc: str = "features",
                  out: Tensor | None = None) -> Tensor:
    """(B, Hp, Wp) padded cube -> (Hp - w + 1, Wp - w + 1, D) node features of every pixel, tile by tile,
    written into `out` when given (a buffer reused across calls) or a new tensor.

    `same` branches: the patches of `chunk_pixels` pixels (or the measured size, `auto`) are cut with one
    gather and run as one batch; `valid` branches: rows of `tile_pixels` pixels run fully convolutionally
    (each 3-D branch computed once per pixel, not once per patch: equal to the per-patch forward).
    """
    feats = net.potentials.features
    w = feats.patch
    ho, wo = padded.shape[1] - w + 1, padded.shape[2] - w + 1
    if ho < 1 or wo < 1:
        raise ZskError(f"the cube ({padded.shape[1]} x {padded.shape[2]} pixels) is smaller than the {w} x {w} patch")
    if out is None or out.shape != (ho, wo, feats.feature_dim) or out.device != padded.device:
        out = torch.empty(ho, wo, feats.feature_dim, device=padded.device)
    if feats.spatial_padding == "valid":
        # a band of output rows reads w - 1 more input rows (output smaller than input): not tiled_inference's
        # same-size contract, so the bands are cut here
        bands = row_bands(ho, wo, eval_cfg.tile_pixels)
        for r0 in progress(bands, desc=desc):
            r1 = min(ho, r0 + bands.step)
            out[r0:r1] = feats.forward_dense(padded[:, r0 : r1 + w - 1])
        return out
    n = ho * wo
    flat = out.view(n, -1)

    def run(s: int, e: int) -> None:
        idx = torch.arange(s, min(n, e), device=padded.device)
        flat[s : s + len(idx)] = feats(hsi_data.extract_patches(padded, idx // wo, idx % wo, w))

    start = 0
    chunk = eval_cfg.chunk_pixels
    if chunk == "auto":
        key = (str(padded.device), padded.shape[0], w, feats.feature_dim, len(feats.groups),
               tuple(b.out_channels for b in feats.branches), sum(p.numel() for p in feats.parameters()))
        chunk, start = measured_chunk(run, n, padded.device, key)
    chunk = max(1, int(chunk))
    for s in progress(range(start, n, chunk), desc=desc):
        run(s, s + chunk)
    return out


@torch.no_grad()
def crf_marginals(net: HSINet, features: Tensor, radius: int, iters: int, chunk_pixels: int,
                  update: str = "full", cache_mb: float = 0.0) -> dict[str, Tensor]:
    """Node features (H, W, D) -> {"cnn": softmax(-U), "crf": mean-field Q (when the model has a CRF)}.

    The pairwise energies are computed once per run and kept for the later iterations up to `cache_mb` MiB
    (`eval.crf_cache_mb`; the same marginals bit for bit, see `CRFGrid`).

    A pairwise head that piecewise training never trained (no neighbouring training pixels) is left out:
    "crf" is then the unary marginals softmax(-U), with a warning (a random head would wreck the map).
    """
    unary = net.potentials.unary(features)
    out = {"cnn": torch.softmax(-unary, dim=-1)}
    if net.potentials.pairwise is not None and iters > 0:
        if not net.potentials.is_pairwise_trained:
            warn("the pairwise head was never trained (no two training pixels were neighbours): mean field runs "
                 "without the pairwise term, so the CRF output is the unary map; raise data.split.fraction/count "
                 "or model.crf_radius to train it")
            out["crf"] = out["cnn"]
        else:
            grid = CRFGrid(net.potentials.pairwise, features, radius, chunk_pixels, update,
                           cache_bytes=int(cache_mb * 2**20))
            out["crf"] = mean_field(unary, grid.message, iters)
    return out


@torch.no_grad()
def refine_logits(refine: DeconvRefinement, q: Tensor, features: Tensor, tile_pixels: int, desc: str = "refine") -> Tensor:
    """Marginals (H, W, K) and node features (H, W, D) -> refinement logits (K, H, W), row band by row band.

    Each band runs with `refine.halo` rows of context above and below and is cropped back; bands start on
    the pooling grid (`refine.stride`), so the result equals `refine` on the whole scene at once.
    """
    h, w = q.shape[:2]
    k = q.shape[-1]
    bands = row_bands(h, w, tile_pixels, refine.stride)

    def predictor(tile: Tensor) -> Tensor:
        rows = tile[0].permute(1, 2, 0)  # (rows, W, K + D): q and features in their (H, W, C) layout
        return refine(rows[..., :k].contiguous().permute(2, 0, 1)[None],
                      rows[..., k:].contiguous().permute(2, 0, 1)[None])

    both = torch.cat([q, features], dim=-1).permute(2, 0, 1)
    return _tiled(both, (bands.step, w), (refine.halo, 0), predictor, len(bands), desc)


@torch.no_grad()
def scene_probabilities(net: HSINet, padded: Tensor, cfg: Config, desc: str = "features",
                        buffers: dict[str, Tensor] | None = None) -> dict[str, Tensor]:
    """Class probabilities (Ho, Wo, K) of every stage the model has: cnn, crf, refined; `final` is the last.

    `buffers`: a dict the caller keeps across scenes (predict's inputs, bench's calls); the node features are
    written into the buffer it holds when the scene's shape repeats, instead of a fresh allocation per scene."""
    net.eval()
    features = node_features(net, padded, cfg.eval, desc, out=None if buffers is None else buffers.get("features"))
    if buffers is not None:
        buffers["features"] = features
    out = crf_marginals(net, features, cfg.model.crf_radius, cfg.model.mean_field_iters, cfg.eval.tile_pixels,
                        cfg.model.mean_field_update, cfg.eval.crf_cache_mb)
    q = out.get("crf", out["cnn"])
    if net.refine is not None:
        logits = refine_logits(net.refine, q, features, cfg.eval.tile_pixels,
                               "refine" if desc == "features" else f"{desc} (refine)")
        out["refined"] = torch.softmax(logits, dim=0).permute(1, 2, 0)
    out["final"] = out.get("refined", q)
    return out


def to_image_grid(pred: Tensor, shape: tuple[int, int], offset: int, fill: int = -1) -> Tensor:
    """Place a prediction on the (possibly smaller, unpadded) grid back into the full image frame."""
    if offset == 0 and tuple(pred.shape[:2]) == tuple(shape):
        return pred
    full = torch.full((*shape, *pred.shape[2:]), fill, dtype=pred.dtype, device=pred.device)
    full[offset : offset + pred.shape[0], offset : offset + pred.shape[1]] = pred
    return full


# ----------------------------------------------------------------------------------------------
# Metrics
# ----------------------------------------------------------------------------------------------


def classification_metrics(pred: Tensor, labels: np.ndarray | Tensor, class_names: list[str]) -> dict:
    """OA, AA, kappa, per-class accuracy and F1 over the labelled pixels of `labels` (0 ignored); `pred` in 0..K-1."""
    target = torch.as_tensor(labels).to(pred.device).long() - 1
    keep = target >= 0
    if (pred[keep] < 0).any():
        raise ZskError("some evaluated pixels have no prediction (data.pad: none leaves the border unpredicted)")
    cm = ConfusionMatrix(len(class_names))
    cm.update(pred[keep].cpu(), target[keep].cpu())
    matrix = cm.reduce().matrix
    diag = matrix.diagonal().double()
    f1_den = (matrix.sum(0) + matrix.sum(1)).double()
    f1 = torch.where(f1_den > 0, 2 * diag / f1_den.clamp(min=1), torch.zeros_like(diag))
    per_class = per_class_accuracy(matrix)
    return {
        "pixels": int(matrix.sum()),
        "OA": overall_accuracy(matrix),
        "AA": average_accuracy(matrix),
        "kappa": cohen_kappa(matrix),
        "per_class": {name: (None if math.isnan(a) else a) for name, a in zip(class_names, per_class, strict=True)},
        "per_class_f1": {name: float(v) for name, v in zip(class_names, f1, strict=True)},
        "confusion": matrix.tolist(),
    }


def evaluate_scene(net: HSINet, data: SceneData, cfg: Config, device: torch.device, split: str) -> dict:
    """Dense prediction of the scene, scored on `split` (test/val/train/all) for every stage of the model."""
    padded = padded_cube(data.cube, cfg).to(device)
    probs = scene_probabilities(net.to(device), padded, cfg)
    labels = {"test": data.split.test, "val": data.split.val, "train": data.split.train,
              "all": data.scene.labels}[split]
    shape = data.scene.labels.shape
    offset = grid_offset(cfg)
    if offset:  # data.pad: none leaves the border unpredicted: it is not scored
        labels = np.where(hsi_data.border_mask(shape, offset), labels, 0)
    final_pred = to_image_grid(probs["final"].argmax(-1), shape, offset)
    metrics = classification_metrics(final_pred, labels, data.scene.class_names)
    stages = {}
    for name in ("cnn", "crf", "refined"):
        if name in probs:
            pred = to_image_grid(probs[name].argmax(-1), shape, offset)
            stages[name] = classification_metrics(pred, labels, data.scene.class_names)["OA"]
    return {"split": split, **metrics, "stages": stages}


def write_confusion(directory: Path, metrics: dict, class_names: list[str], split: str) -> Path:
    """Confusion matrix as CSV (rows true, columns predicted): `directory/confusion_<split>.csv`."""
    path = Path(directory) / f"confusion_{split}.csv"
    lines = ["true\\pred," + ",".join(f'"{n}"' for n in class_names)]
    for name, row in zip(class_names, metrics["confusion"], strict=True):
        lines.append(f'"{name}",' + ",".join(str(v) for v in row))
    if dist.is_main():
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text("\n".join(lines) + "\n")
    return path


# ----------------------------------------------------------------------------------------------
# Loading checkpoints and evaluating them
# ----------------------------------------------------------------------------------------------


def load(checkpoint: Path, sets: list[str] | None = None, device: str | None = None,
         recipe: Path | None = None) -> Loaded:
    """The network of a checkpoint written by `train`, in eval mode on the device, with the config it was
    trained with and its extra (band count, classes, preprocessing, palette)."""
    cfg, state = read_trained("hsi", checkpoint, Config, sets, recipe)
    extra = state.get("extra") or {}
    if state.get("stage") not in ("", None):
        raise ZskError(f"{checkpoint} is a stage checkpoint ({state['stage']}); use the run's best.pt")
    if "class_names" not in extra:
        raise ZskError(f"{checkpoint} lacks class names: it was not written by `zsk hsi train`")
    model = build_model(cfg, int(extra["num_bands"]), len(extra["class_names"]))
    load_model_state(model, state["model"], source=str(checkpoint))
    return loaded_model(model, cfg, state, checkpoint, device)


def evaluate(loaded: Loaded, split: str | None = None, out: Path | None = None) -> dict[str, Any]:
    """Score a checkpoint on its scene's split (default `eval.split`; the split is redrawn from the recipe's
    seed, so it matches training). With `out`, the confusion matrix goes to `out/confusion_<split>.csv`."""
    cfg: Config = loaded.cfg
    extra = loaded.extra
    split = split or cfg.eval.split
    if split not in SPLITS:
        raise ZskError(f"--split {split!r}: use test, val, train or all")
    if out is not None and dist.is_main():
        output_folder(Path(out))  # a file or read-only --out fails now, not after the evaluation
    data = prepare_scene(cfg, stats=extra["preprocess"])
    if data.scene.class_names != list(extra["class_names"]):
        raise ZskError(f"{data.scene.labels_path}: classes {data.scene.class_names} differ from the checkpoint's "
                       f"{list(extra['class_names'])}")
    metrics = evaluate_scene(loaded.model, data, cfg, loaded.device, split)
    if out is not None:
        write_confusion(Path(out), metrics, data.scene.class_names, split)
    return {k: v for k, v in metrics.items() if k != "confusion"}
