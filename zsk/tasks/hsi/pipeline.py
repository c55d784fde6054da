"""Train, evaluate and predict for the hsi task (Alam et al. 2019; shared/specs/hsi.md).

Training runs in two stages of `zsk.core.trainer.Trainer`:

1. `piecewise`: the band-group CNN with the unary and pairwise heads, trained piecewise
   (a unary cross-entropy per node plus a K²-way cross-entropy per neighbour pair, no partition function);
2. `refine`: the deconvolution network trained on the frozen CRF's mean-field marginals of the whole scene.

Inference is dense: node features for whole tiles at once (batched windows, or fully convolutional with
`model.branch_padding: valid`), mean-field over the whole scene with pairwise energies computed on the fly,
then the refinement network in row bands with a halo of context (equal to running it on the whole scene).
"""

from __future__ import annotations

import dataclasses
import io
import json
import math
import sys
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from torch import Tensor, nn
from torch.utils.data import Dataset

from zsk.core import dist
from zsk.core.checkpoint import load_checkpoint, load_model_state
from zsk.core.errors import ZskError
from zsk.core.progress import log, progress, warn
from zsk.core.run import RunContext, config_from_checkpoint
from zsk.core.trainer import Trainer, batches_per_epoch, export_checkpoint, make_loader
from zsk.data import cubes
from zsk.data.images import write_label
from zsk.metrics import summary as metric_summary
from zsk.metrics.classification import accuracy as overall_accuracy
from zsk.metrics.classification import average_accuracy, cohen_kappa, per_class_accuracy
from zsk.metrics.confusion import ConfusionMatrix
from zsk.tasks.hsi import data as hsi_data
from zsk.tasks.hsi.config import Config, EvalConfig
from zsk.tasks.hsi.losses import pairwise_loss, refinement_loss, unary_loss
from zsk.tasks.hsi.model import CRFGrid, DeconvRefinement, HSINet, mean_field, neighbour_offsets

TASK = "hsi"
DEFAULT_BENCH_SHAPE = (145, 145, 200)  # Indian Pines, the benchmark cube


# ----------------------------------------------------------------------------------------------
# Model and data set-up
# ----------------------------------------------------------------------------------------------


def build_model(cfg: Config, num_bands: int, num_classes: int) -> HSINet:
    """The recipe's model for a scene with `num_bands` (after PCA) and `num_classes`."""
    m = cfg.model
    if m.patch < 1 or m.patch % 2 == 0:
        raise ZskError(f"model.patch={m.patch}: the patch must be an odd size (w x w centred on the pixel)")
    if not 1 <= m.band_groups <= num_bands:
        raise ZskError(f"model.band_groups={m.band_groups}: must be between 1 and the band count {num_bands}")
    if len(m.branch_channels) != len(m.branch_spectral_kernels):
        raise ZskError("model.branch_channels and model.branch_spectral_kernels need the same length")
    if len(m.refine_widths) != 2:
        raise ZskError("model.refine_widths: give the two encoder widths, e.g. [64, 128]")
    if m.crf_radius < 1:
        raise ZskError("model.crf_radius must be >= 1")
    try:
        return HSINet(
            m.name, num_bands, num_classes, m.patch, m.band_groups, m.branch_channels, m.branch_spectral_kernels,
            m.branch_padding, m.feature_dim, m.dropout, m.pairwise_hidden, m.refine, m.refine_reduced_dim,
            m.refine_widths, m.refine_residual,
        )
    except ValueError as e:
        raise ZskError(f"model: {e}") from None


@dataclass
class SceneData:
    """A scene ready for training: preprocessed cube (B', H, W), the split, and the statistics used."""

    scene: hsi_data.Scene
    stats: dict
    cube: Tensor
    split: hsi_data.Split

    @property
    def num_bands(self) -> int:
        return int(self.cube.shape[0])


def split_seed(cfg: Config) -> int:
    return cfg.data.split.seed if cfg.data.split.seed is not None else cfg.runtime.seed


def prepare_scene(cfg: Config, stats: dict | None = None) -> SceneData:
    """Read the scene, fit (or reuse) the preprocessing statistics and draw the split."""
    scene = hsi_data.load_scene(cfg.data)
    if stats is None:
        stats = hsi_data.fit_preprocess(scene.image, cfg.data.normalize, cfg.data.pca, split_seed(cfg))
    cube = torch.from_numpy(hsi_data.apply_preprocess(scene.image, stats, scene.image_path)).permute(2, 0, 1).contiguous()
    split = hsi_data.make_split(scene, cfg.data, split_seed(cfg), cfg.model.patch // 2)
    return SceneData(scene, stats, cube, split)


def grid_offset(cfg: Config) -> int:
    """Where the prediction grid starts in the image: 0 with padding, patch // 2 without (`data.pad: none`)."""
    return 0 if cfg.data.pad == "reflect" else cfg.model.patch // 2


def padded_cube(cube: Tensor, cfg: Config) -> Tensor:
    """(B, H, W) -> the cube every patch is cut from (reflect-padded by patch // 2, or as is)."""
    return hsi_data.pad_cube(cube, cfg.model.patch // 2, cfg.data.pad)


class _Indices(Dataset):
    def __init__(self, n: int) -> None:
        self.n = n

    def __len__(self) -> int:
        return self.n

    def __getitem__(self, i: int) -> int:
        return i


# ----------------------------------------------------------------------------------------------
# Piecewise training step
# ----------------------------------------------------------------------------------------------


class PiecewiseStep:
    """One batch of training nodes -> unary and pairwise piecewise losses (spec "Piecewise training").

    A batch holds indices of training pixels; its pairs are every (p, q) with p in the batch and q a
    neighbour of p within `crf_radius` that is also a training pixel. Each unique pixel's patch is cut
    once from the padded cube (a single gather) and its feature computed once.
    """

    def __init__(self, padded: Tensor, train_map: Tensor, patch: int, offset: int, radius: int,
                 unary_weight: float = 1.0, pairwise_weight: float = 1.0, class_weight: Tensor | None = None) -> None:
        self.padded = padded
        self.train_map = train_map  # (H, W) class index 0..K-1 of training pixels, -1 elsewhere
        self.height, self.width = train_map.shape
        self.coords = torch.nonzero(train_map >= 0)  # (N, 2)
        self.labels = train_map[self.coords[:, 0], self.coords[:, 1]]
        self.patch = patch
        self.offset = offset
        self.offsets = torch.tensor(neighbour_offsets(radius), device=train_map.device).reshape(-1, 2)
        self.unary_weight = unary_weight
        self.pairwise_weight = pairwise_weight
        self.class_weight = class_weight

    def __len__(self) -> int:
        return len(self.coords)

    def pairs(self, centres: Tensor) -> tuple[Tensor, Tensor]:
        """(N, 2) centres -> (index into centres, (M, 2) neighbour coords) of the training pairs."""
        q = centres[:, None, :] + self.offsets[None]  # (N, O, 2)
        inside = (q[..., 0] >= 0) & (q[..., 0] < self.height) & (q[..., 1] >= 0) & (q[..., 1] < self.width)
        qy = q[..., 0].clamp(0, self.height - 1)
        qx = q[..., 1].clamp(0, self.width - 1)
        valid = inside & (self.train_map[qy, qx] >= 0)
        n_idx, o_idx = torch.nonzero(valid, as_tuple=True)
        return n_idx, q[n_idx, o_idx]

    def count_pairs(self) -> int:
        """Training pairs over the whole training set."""
        return int(self.pairs(self.coords)[0].numel()) if len(self.coords) else 0

    def __call__(self, model: nn.Module, batch: Tensor, step: int) -> dict[str, Tensor]:
        centres = self.coords[batch]
        y_p = self.labels[batch]
        want_pairs = self.pairwise_weight > 0 and getattr(dist.unwrap(model), "pairwise", None) is not None
        if want_pairs:
            n_idx, q = self.pairs(centres)
        else:
            n_idx, q = centres.new_zeros(0), centres.new_zeros(0, 2)
        lin = torch.cat([centres[:, 0] * self.width + centres[:, 1], q[:, 0] * self.width + q[:, 1]])
        uniq, inverse = torch.unique(lin, return_inverse=True)
        ys, xs = uniq // self.width - self.offset, uniq % self.width - self.offset
        patches = hsi_data.extract_patches(self.padded, ys, xs, self.patch)
        n = len(centres)
        nodes = inverse[:n]
        if n_idx.numel():
            unary, pairwise = model(patches, nodes, nodes[n_idx], inverse[n:])
        else:
            unary, pairwise = model(patches, nodes)
        out = {"unary": unary_loss(unary, y_p, self.class_weight)}
        loss = self.unary_weight * out["unary"]
        if pairwise is not None:
            y_q = self.train_map[q[:, 0], q[:, 1]]
            out["pairwise"] = pairwise_loss(pairwise, y_p[n_idx], y_q)
            loss = loss + self.pairwise_weight * out["pairwise"]
        elif want_pairs:
            # no pair in this batch: keep the term in the logs (0) and the graph connected for DDP
            out["pairwise"] = sum(p.sum() for p in dist.unwrap(model).pairwise.parameters()) * 0.0
            loss = loss + out["pairwise"]
        out["loss"] = loss
        return out


def class_weights(train_map: np.ndarray, num_classes: int, mode: str) -> Tensor | None:
    """Inverse median frequency weights w_c = median(freq) / freq_c over the training pixels (or None)."""
    if mode == "none":
        return None
    counts = np.bincount(train_map[train_map > 0] - 1, minlength=num_classes).astype(np.float64)
    freq = counts / counts.sum()
    present = freq > 0
    w = np.zeros(num_classes)
    w[present] = np.median(freq[present]) / freq[present]
    return torch.tensor(w, dtype=torch.float32)


# ----------------------------------------------------------------------------------------------
# Dense inference
# ----------------------------------------------------------------------------------------------


def row_bands(height: int, width: int, tile_pixels: int, multiple: int = 1) -> range:
    """Start rows of the row bands of about `tile_pixels` pixels that dense inference runs one at a time
    (`range.step` rows each, a multiple of `multiple`)."""
    rows = max(1, tile_pixels // max(1, width))
    return range(0, height, max(multiple, rows - rows % multiple))


@torch.no_grad()
def node_features(net: HSINet, padded: Tensor, eval_cfg: EvalConfig, desc: str = "features") -> Tensor:
    """(B, Hp, Wp) padded cube -> (Hp - w + 1, Wp - w + 1, D) node features of every pixel, tile by tile.

    `same` branches: the patches of `chunk_pixels` pixels are cut with one gather and run as one batch;
    `valid` branches: rows of `tile_pixels` pixels run fully convolutionally. Never one patch per call.
    """
    feats = net.potentials.features
    w = feats.patch
    ho, wo = padded.shape[1] - w + 1, padded.shape[2] - w + 1
    if ho < 1 or wo < 1:
        raise ZskError(f"the cube ({padded.shape[1]} x {padded.shape[2]} pixels) is smaller than the {w} x {w} patch")
    out = torch.empty(ho, wo, feats.feature_dim, device=padded.device)
    if feats.spatial_padding == "valid":
        bands = row_bands(ho, wo, eval_cfg.tile_pixels)
        for r0 in progress(bands, desc=desc):
            r1 = min(ho, r0 + bands.step)
            out[r0:r1] = feats.forward_dense(padded[:, r0 : r1 + w - 1])
        return out
    n = ho * wo
    chunk = max(1, eval_cfg.chunk_pixels)
    flat = out.view(n, -1)
    for s in progress(range(0, n, chunk), desc=desc):
        idx = torch.arange(s, min(n, s + chunk), device=padded.device)
        patches = hsi_data.extract_patches(padded, idx // wo, idx % wo, w)
        flat[s : s + len(idx)] = feats(patches)
    return out


@torch.no_grad()
def crf_marginals(net: HSINet, features: Tensor, radius: int, iters: int, chunk_pixels: int) -> dict[str, Tensor]:
    """Node features (H, W, D) -> {"cnn": softmax(-U), "crf": mean-field Q (when the model has a CRF)}."""
    unary = net.potentials.unary(features)
    out = {"cnn": torch.softmax(-unary, dim=-1)}
    if net.potentials.pairwise is not None and iters > 0:
        grid = CRFGrid(net.potentials.pairwise, features, radius, chunk_pixels)
        out["crf"] = mean_field(unary, grid.message, iters)
    return out


@torch.no_grad()
def refine_logits(refine: DeconvRefinement, q: Tensor, features: Tensor, tile_pixels: int, desc: str = "refine") -> Tensor:
    """Marginals (H, W, K) and node features (H, W, D) -> refinement logits (K, H, W), row band by row band.

    Each band runs with `refine.halo` rows of context above and below and is cropped back; bands start on
    the pooling grid (`refine.stride`), so the result equals `refine` on the whole scene at once.
    """
    h, w = q.shape[:2]
    out = torch.empty(refine.num_classes, h, w, dtype=q.dtype, device=q.device)
    bands = row_bands(h, w, tile_pixels, refine.stride)
    for r0 in progress(bands, desc=desc):
        r1 = min(h, r0 + bands.step)
        a, b = max(0, r0 - refine.halo), min(h, r1 + refine.halo)
        logits = refine(q[a:b].permute(2, 0, 1)[None], features[a:b].permute(2, 0, 1)[None])[0]
        out[:, r0:r1] = logits[:, r0 - a : r1 - a]
    return out


@torch.no_grad()
def scene_probabilities(net: HSINet, padded: Tensor, cfg: Config, desc: str = "features") -> dict[str, Tensor]:
    """Class probabilities (Ho, Wo, K) of every stage the model has: cnn, crf, refined; `final` is the last."""
    net.eval()
    features = node_features(net, padded, cfg.eval, desc)
    out = crf_marginals(net, features, cfg.model.crf_radius, cfg.model.mean_field_iters, cfg.eval.tile_pixels)
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
    """Confusion matrix as CSV (rows true, columns predicted) in the run directory."""
    path = directory / f"confusion_{split}.csv"
    lines = ["true\\pred," + ",".join(f'"{n}"' for n in class_names)]
    for name, row in zip(class_names, metrics["confusion"], strict=True):
        lines.append(f'"{name}",' + ",".join(str(v) for v in row))
    if dist.is_main():
        path.write_text("\n".join(lines) + "\n")
    return path


# ----------------------------------------------------------------------------------------------
# Training
# ----------------------------------------------------------------------------------------------


def checkpoint_extra(data: SceneData, cfg: Config) -> dict:
    """What eval/predict need besides the weights: classes, bands, preprocessing, palette."""
    return {
        "class_names": list(data.scene.class_names),
        "num_bands": data.num_bands,
        "preprocess": data.stats,
        "palette": torch.from_numpy(data.scene.palette.astype(np.int64)),
        "rgb_bands": list(data.scene.rgb_bands),
        "split_counts": data.split.counts(data.scene.num_classes),
    }


def _val_unary_fn(step: PiecewiseStep, val_map: Tensor, chunk: int):
    coords = torch.nonzero(val_map >= 0)
    labels = val_map[coords[:, 0], coords[:, 1]]

    def eval_fn(model: nn.Module) -> dict[str, float]:
        correct = 0
        for s in range(0, len(coords), chunk):
            c = coords[s : s + chunk]
            patches = hsi_data.extract_patches(step.padded, c[:, 0] - step.offset, c[:, 1] - step.offset, step.patch)
            unary = model(patches)[0]
            correct += int((unary.argmin(-1) == labels[s : s + chunk]).sum())
        return {"val_OA": correct / max(1, len(coords))}

    return eval_fn


def _label_index_map(labels: np.ndarray, device: torch.device) -> Tensor:
    return torch.from_numpy(labels.astype(np.int64) - 1).to(device)


def train_piecewise(ctx: RunContext, net: HSINet, data: SceneData, extra: dict) -> dict:
    """Stage 1: piecewise training of the unary and pairwise potentials."""
    cfg: Config = ctx.cfg
    device = ctx.device
    padded = padded_cube(data.cube, cfg).to(device)
    train_map = _label_index_map(data.split.train, device)
    step = PiecewiseStep(padded, train_map, cfg.model.patch, grid_offset(cfg), cfg.model.crf_radius,
                         cfg.train.unary_weight, cfg.train.pairwise_weight,
                         None if (w := class_weights(data.split.train, data.scene.num_classes, cfg.train.class_weights)) is None
                         else w.to(device))
    if net.potentials.pairwise is not None and cfg.train.pairwise_weight > 0:
        n_pairs = step.count_pairs()
        if n_pairs == 0:
            warn("no two training pixels are neighbours under this split: the pairwise term is skipped "
                 "(the pairwise head stays untrained; raise data.split.fraction or model.crf_radius)")
            step.pairwise_weight = 0.0
        else:
            log(f"piecewise training: {len(step)} training nodes, {n_pairs} training pairs")
    seed = cfg.runtime.seed

    def loader_fn(epoch: int, start_batch: int):
        return make_loader(_Indices(len(step)), cfg.train.batch_size, epoch=epoch, seed=seed, start_batch=start_batch)

    val_map = _label_index_map(data.split.val, device)
    eval_fn = _val_unary_fn(step, val_map, cfg.eval.chunk_pixels) if bool((val_map >= 0).any()) else None
    if eval_fn is None:
        log("no validation pixels (data.split.val_share): keeping the last weights")
    trainer = Trainer(ctx, net.potentials, cfg.train, step, loader_fn,
                      batches_per_epoch(len(step), cfg.train.batch_size), eval_fn=eval_fn, extra=extra,
                      stage="piecewise", find_unused_parameters=net.potentials.pairwise is not None)
    metrics = trainer.fit()
    if trainer.best_path.is_file():
        best = load_checkpoint(trainer.best_path)
        load_model_state(net.potentials, best["model"], source=str(trainer.best_path))
    return metrics


def refine_train_config(cfg: Config):
    """The refinement stage's optimiser settings: Adam, `train.refine_lr`, `train.refine_steps` iterations."""
    t = cfg.train
    return dataclasses.replace(
        t, batch_size=1, lr=t.refine_lr, optimizer="adam", weight_decay=t.refine_weight_decay, schedule="constant",
        warmup_steps=0, epochs=None, steps=t.refine_steps, grad_accum=1, eval_every=t.refine_eval_every,
        save_every=0, best_metric=None, best_mode="max",
    )


def train_refinement(ctx: RunContext, net: HSINet, data: SceneData, extra: dict) -> dict:
    """Stage 2: the deconvolution network on the frozen CRF's marginals and features, pixel CE on training pixels."""
    cfg: Config = ctx.cfg
    device = ctx.device
    assert net.refine is not None
    net.to(device)
    for p in net.potentials.parameters():
        p.requires_grad_(False)
    padded = padded_cube(data.cube, cfg).to(device)
    net.potentials.eval()
    features = node_features(net, padded, cfg.eval, desc="refine inputs")
    marg = crf_marginals(net, features, cfg.model.crf_radius, cfg.model.mean_field_iters, cfg.eval.tile_pixels)
    q = marg.get("crf", marg["cnn"]).permute(2, 0, 1)[None].contiguous()
    f = features.permute(2, 0, 1)[None].contiguous()
    ho, wo = q.shape[-2:]
    off = grid_offset(cfg)
    crop = lambda m: m[off : off + ho, off : off + wo]  # noqa: E731
    train_t = _label_index_map(crop(data.split.train), device)[None]
    val_t = _label_index_map(crop(data.split.val), device)[None]
    size = cfg.train.refine_crop

    def step_fn(model: nn.Module, batch, step: int) -> dict[str, Tensor]:
        qq, ff, tt = q, f, train_t
        if size is not None and (size < ho or size < wo):
            ch, cw = min(size, ho), min(size, wo)
            y0 = int(torch.randint(0, ho - ch + 1, ()).item())
            x0 = int(torch.randint(0, wo - cw + 1, ()).item())
            qq, ff = q[..., y0 : y0 + ch, x0 : x0 + cw], f[..., y0 : y0 + ch, x0 : x0 + cw]
            tt = train_t[:, y0 : y0 + ch, x0 : x0 + cw]
        logits = model(qq, ff)
        mask = tt >= 0
        if not bool(mask.any()):
            return {"loss": logits.sum() * 0.0}
        return {"loss": refinement_loss(logits, tt.clamp(min=0), mask)}

    def loader_fn(epoch: int, start_batch: int):
        return [torch.zeros(())] if start_batch == 0 else []

    def eval_fn(model: nn.Module) -> dict[str, float]:
        pred = model(q, f).argmax(1)
        mask = val_t >= 0
        return {"val_OA": float((pred[mask] == val_t[mask]).float().mean())}

    has_val = bool((val_t >= 0).any())
    trainer = Trainer(ctx, net.refine, refine_train_config(cfg), step_fn, loader_fn, 1,
                      eval_fn=eval_fn if has_val else None, extra=extra, stage="refine")
    metrics = trainer.fit()
    if trainer.best_path.is_file():
        best = load_checkpoint(trainer.best_path)
        load_model_state(net.refine, best["model"], source=str(trainer.best_path))
    return metrics


def train(ctx: RunContext) -> dict:
    """Train the recipe's model (piecewise, then refinement), evaluate on `eval.split`, write best.pt and eval.json."""
    cfg: Config = ctx.cfg
    data = prepare_scene(cfg)
    counts = data.split.counts(data.scene.num_classes)
    log(f"scene {data.scene.image_path.name}: {data.scene.labels.shape[0]} x {data.scene.labels.shape[1]} pixels, "
        f"{data.num_bands} bands, {data.scene.num_classes} classes; train/val/test pixels "
        f"{sum(counts['train'])}/{sum(counts['val'])}/{sum(counts['test'])}")
    net = build_model(cfg, data.num_bands, data.scene.num_classes)
    extra = checkpoint_extra(data, cfg)
    train_piecewise(ctx, net, data, extra)
    if net.refine is not None:
        train_refinement(ctx, net, data, extra)
    metrics = evaluate_scene(net, data, cfg, ctx.device, cfg.eval.split)
    export_checkpoint(ctx, net, ctx.run_dir / "best.pt", extra=extra,
                      metrics={k: v for k, v in metrics.items() if isinstance(v, float)})
    if dist.is_main():
        write_confusion(ctx.run_dir, metrics, data.scene.class_names, cfg.eval.split)
        summary = {k: v for k, v in metrics.items() if k != "confusion"}
        (ctx.run_dir / "eval.json").write_text(json.dumps(summary, indent=2))
    log(f"{cfg.eval.split}: OA={metrics['OA']:.4f} AA={metrics['AA']:.4f} kappa={metrics['kappa']:.4f} "
        + " ".join(f"{k}={v:.4f}" for k, v in metrics["stages"].items()))
    return metrics


# ----------------------------------------------------------------------------------------------
# Loading checkpoints, evaluation, prediction
# ----------------------------------------------------------------------------------------------


def load_trained(checkpoint: Path, sets: list[str] | None = None, recipe: Path | None = None) -> tuple[HSINet, Config, dict]:
    """Model, config and extra of a checkpoint written by `train`."""
    state = load_checkpoint(checkpoint)
    if state.get("task") != TASK:
        raise ZskError(f"{checkpoint} is a checkpoint of task {state.get('task')!r}, not hsi")
    if state.get("stage") not in ("", None):
        raise ZskError(f"{checkpoint} is a stage checkpoint ({state['stage']}); use the run's best.pt")
    cfg, _ = config_from_checkpoint(state, Config, sets, recipe)
    extra = state.get("extra") or {}
    if "class_names" not in extra:
        raise ZskError(f"{checkpoint} lacks class names: it was not written by `zsk hsi train`")
    net = build_model(cfg, int(extra["num_bands"]), len(extra["class_names"]))
    load_model_state(net, state["model"], source=str(checkpoint))
    net.eval()
    return net, cfg, extra


def evaluate(checkpoint: Path, sets: list[str] | None = None, split: str | None = None,
             recipe: Path | None = None, device: torch.device | None = None) -> dict:
    """Score a checkpoint on its scene's split (the split is redrawn from the recipe's seed, so it matches training)."""
    net, cfg, extra = load_trained(checkpoint, sets, recipe)
    split = split or cfg.eval.split
    if split not in ("test", "val", "train", "all"):
        raise ZskError(f"--split {split!r}: use test, val, train or all")
    data = prepare_scene(cfg, stats=extra["preprocess"])
    if data.scene.class_names != list(extra["class_names"]):
        raise ZskError(f"{data.scene.labels_path}: classes {data.scene.class_names} differ from the checkpoint's "
                       f"{list(extra['class_names'])}")
    metrics = evaluate_scene(net, data, cfg, device or torch.device("cpu"), split)
    write_confusion(checkpoint.parent, metrics, data.scene.class_names, split)
    return metrics


def expand_checkpoints(paths: list[Path]) -> list[Path]:
    """Checkpoint files; a run directory stands for its best.pt, a `--runs` directory for every run-*/best.pt."""
    out: list[Path] = []
    for p in paths:
        if p.is_dir():
            found = [p / "best.pt"] if (p / "best.pt").is_file() else sorted(p.glob("run-*/best.pt"))
            if not found:
                raise ZskError(f"{p}: no best.pt in this directory or its run-*/ folders")
            out.extend(found)
        else:
            out.append(p)
    return out


def summarize_runs(results: list[dict]) -> dict:
    """Mean and standard deviation (n - 1) of OA, AA, kappa and per-class accuracy over several runs."""
    return metric_summary.summarize_runs(results, ("OA", "AA", "kappa", "per_class"))


def read_input_cube(spec: str, key: str | None) -> tuple[np.ndarray, str]:
    """A cube from a path (any supported format) or '-' (a .npy stream on stdin); returns (cube, name)."""
    if spec == "-":
        raw = sys.stdin.buffer.read()
        try:
            arr = np.load(io.BytesIO(raw), allow_pickle=False)
        except Exception as e:
            raise ZskError(f"stdin: expected a NumPy .npy stream ({type(e).__name__}: {e})") from None
        if arr.ndim != 3:
            raise ZskError(f"stdin: array of shape {arr.shape}; a cube must be rows x cols x bands")
        return arr, "stdin"
    path = Path(spec)
    cube = cubes.read_cube(path, key)
    return cube, path.stem


def save_label_png(path: Path, labels: np.ndarray, palette: np.ndarray) -> None:
    """Label map 0..K as an indexed PNG with the class palette (0 black)."""
    write_label(path, labels, palette)


def rgb_composite(cube: np.ndarray, bands: list[int] | tuple[int, ...]) -> np.ndarray:
    """(H, W, 3) uint8 composite of three bands, each stretched between its 2nd and 98th percentile."""
    idx = [min(int(b), cube.shape[2] - 1) for b in bands]
    rgb = cube[..., idx].astype(np.float64)
    lo = np.percentile(rgb, 2, axis=(0, 1))
    hi = np.percentile(rgb, 98, axis=(0, 1))
    rgb = np.clip((rgb - lo) / np.where(hi > lo, hi - lo, 1.0), 0, 1)
    return (rgb * 255).astype(np.uint8)


def save_preview(path: Path, cube: np.ndarray, labels: np.ndarray, class_names: list[str], palette: np.ndarray,
                 rgb_bands: list[int], title: str) -> None:
    """Side-by-side PNG: RGB composite | predicted classes with a legend."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from matplotlib.patches import Patch

    fig, axes = plt.subplots(1, 2, figsize=(10, 5.2))
    axes[0].imshow(rgb_composite(cube, rgb_bands))
    axes[0].set_title(f"RGB composite (bands {', '.join(map(str, rgb_bands))})")
    axes[1].imshow(palette[labels])
    axes[1].set_title("prediction")
    for ax in axes:
        ax.axis("off")
    present = sorted(set(np.unique(labels).tolist()) - {0})
    handles = [Patch(color=palette[c] / 255.0, label=class_names[c - 1]) for c in present]
    fig.legend(handles=handles, loc="lower center", ncol=min(4, max(1, len(handles))), fontsize=8, frameon=False)
    fig.suptitle(title)
    fig.tight_layout(rect=(0, 0.1, 1, 1))
    fig.savefig(path, dpi=100)
    plt.close(fig)


def predict(inputs: list[str], checkpoint: Path, out: Path, key: str | None = None, probs: bool = False,
            preview: bool = True, sets: list[str] | None = None, device: torch.device | None = None) -> list[dict]:
    """Label maps for whole cubes: `<name>_labels.png` / `.npy`, optional `<name>_probs.npy`, `<name>_preview.png`."""
    net, cfg, extra = load_trained(checkpoint, sets)
    device = device or torch.device("cpu")
    net.to(device)
    names = list(extra["class_names"])
    palette = extra["palette"].numpy().astype(np.uint8)
    out.mkdir(parents=True, exist_ok=True)
    results = []
    for spec in inputs:
        raw, name = read_input_cube(spec, key)
        where = "stdin" if spec == "-" else spec
        expected = int(extra["preprocess"]["bands_in"])
        if raw.shape[2] != expected:
            raise ZskError(f"{where}: cube has {raw.shape[2]} bands but the checkpoint {checkpoint} was trained on "
                           f"{expected} bands")
        cube = hsi_data.apply_preprocess(raw, extra["preprocess"], where)
        padded = padded_cube(torch.from_numpy(cube).permute(2, 0, 1).contiguous(), cfg).to(device)
        p = scene_probabilities(net, padded, cfg, desc=f"predict {name}")["final"]
        full = to_image_grid(p, raw.shape[:2], grid_offset(cfg), fill=0).cpu()
        labels = (full.argmax(-1) + 1).numpy().astype(np.uint8 if len(names) < 256 else np.int32)
        if grid_offset(cfg):
            labels[~hsi_data.border_mask(raw.shape[:2], grid_offset(cfg))] = 0
        files = {"labels_npy": out / f"{name}_labels.npy", "labels_png": out / f"{name}_labels.png"}
        np.save(files["labels_npy"], labels)
        save_label_png(files["labels_png"], labels, palette)
        if probs:
            files["probs"] = out / f"{name}_probs.npy"
            np.save(files["probs"], full.numpy().astype(np.float32))
        if preview:
            files["preview"] = out / f"{name}_preview.png"
            save_preview(files["preview"], raw, labels, names, palette, extra["rgb_bands"], f"{name}: {Path(str(checkpoint)).parent.name}")
        counts = np.bincount(labels.ravel(), minlength=len(names) + 1)
        results.append({"input": where, "shape": list(raw.shape), **{k: str(v) for k, v in files.items()},
                        "class_pixels": {n: int(c) for n, c in zip(names, counts[1:], strict=True)}})
    return results


# ----------------------------------------------------------------------------------------------
# info, bench, demo
# ----------------------------------------------------------------------------------------------


def scene_shape(cfg: Config) -> tuple[tuple[int, int, int], list[str], str]:
    """(rows, cols, bands) and class names of the recipe's scene: read from the file when present, else the
    benchmark table; returns also where the numbers come from."""
    try:
        image_path, image_key, labels_path, labels_key, bench = hsi_data.resolve_files(cfg.data)
    except ZskError:
        bench = hsi_data.BENCHMARKS.get(cfg.data.dataset or "")
        if (bench is None or bench.shape is None) and cfg.data.bands and cfg.data.class_names:
            return (0, 0, cfg.data.bands), list(cfg.data.class_names), "recipe (data.bands; files not found under data.root)"
        if bench is None or bench.shape is None:
            raise
        names = cfg.data.class_names or list(bench.class_names)
        b = bench.shape[2] - (cfg.data.drop_last_bands or bench.drop_last_bands)
        return (bench.shape[0], bench.shape[1], b), names, "benchmark table (files not found under data.root)"
    scene = hsi_data.load_scene(cfg.data)
    return scene.image.shape, scene.class_names, str(image_path)  # type: ignore[return-value]


def info(cfg: Config) -> dict:
    """Parameters (total/trainable per part), GFLOPs per pixel of dense inference, and the class table."""
    from zsk.core.bench import count_flops, count_params

    (h, w, b), names, source = scene_shape(cfg)
    bands = cfg.data.pca or b
    net = build_model(cfg, bands, len(names)).eval()
    total, trainable = count_params(net)
    parts = {"features": count_params(net.potentials.features)[0], "unary": count_params(net.potentials.unary)[0]}
    if net.potentials.pairwise is not None:
        parts["pairwise"] = count_params(net.potentials.pairwise)[0]
    if net.refine is not None:
        parts["refine"] = count_params(net.refine)[0]
    # FLOPs of dense inference on a 16 x 16 tile, counted on the meta device (shapes only, no arithmetic)
    tile = 16
    unpadded = dataclasses.replace(cfg, data=dataclasses.replace(cfg.data, pad="none"))
    tile_cube = torch.zeros(bands, tile + 2 * (cfg.model.patch // 2), tile + 2 * (cfg.model.patch // 2), device="meta")
    meta_net = build_model(cfg, bands, len(names)).eval().to("meta")
    flops = count_flops(lambda: scene_probabilities(meta_net, tile_cube, unpadded))
    return {
        "model": cfg.model.name,
        "scene": {"rows": h, "cols": w, "bands": b, "bands_used": bands, "source": source},
        "band_groups": [list(g) for g in net.potentials.features.groups],
        "params_total": total,
        "params_trainable": trainable,
        "params_by_part": parts,
        "gflops": flops / tile**2 / 1e9,
        "gflops_unit": "per pixel of dense inference",
        "classes": {str(i + 1): n for i, n in enumerate(names)},
    }


def bench_spec(cfg: Config, device: torch.device, batch_size: int | None):
    """One piecewise optimiser step on `batch_size` nodes and one dense prediction of the recipe's scene size
    (145 x 145 x 200 for Indian Pines), random weights and a synthetic cube."""
    from zsk.core.bench import BenchSpec

    try:
        (h, w, b), names, _ = scene_shape(cfg)
    except ZskError:
        (h, w, b), names = DEFAULT_BENCH_SHAPE, [f"class_{i}" for i in range(1, 17)]
    if h == 0:  # band count from the recipe, no scene at hand: bench the standard scene size
        h, w = DEFAULT_BENCH_SHAPE[:2]
    bands = cfg.data.pca or b
    k = len(names)
    bs = batch_size or cfg.train.batch_size
    g = torch.Generator().manual_seed(0)
    cube = torch.rand(bands, h, w, generator=g)
    padded = padded_cube(cube, cfg).to(device)
    off = grid_offset(cfg)
    train_map = torch.full((h, w), -1, dtype=torch.long)
    inner = torch.zeros(h, w, dtype=torch.bool)
    inner[off : h - off, off : w - off] = True
    chosen = (torch.rand(h, w, generator=g) < 0.3) & inner
    train_map[chosen] = torch.randint(0, k, (int(chosen.sum()),), generator=g)
    net = build_model(cfg, bands, k).to(device)
    step = PiecewiseStep(padded, train_map.to(device), cfg.model.patch, off, cfg.model.crf_radius)
    optimizer = torch.optim.Adam(net.potentials.parameters(), lr=cfg.train.lr)
    n_batches = max(1, len(step) // bs)

    def train_step() -> None:
        net.train()
        i = int(torch.randint(0, n_batches, ()).item())
        batch = torch.arange(i * bs, min(len(step), (i + 1) * bs), device=device)
        loss = step(net.potentials, batch, 0)["loss"]
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()

    def infer_step() -> None:
        scene_probabilities(net, padded, cfg)

    return BenchSpec(train_step=train_step, infer_step=infer_step, train_samples=bs, infer_samples=h * w,
                     unit="nodes", infer_unit="pixels",
                     extra=lambda: {"scene": f"{h}x{w}x{bands}", "model": cfg.model.name,
                                    "branch_padding": cfg.model.branch_padding})


def run_demo(workdir: Path, device: str) -> dict:
    """Write the sample scene, train recipes/hsi/demo.yaml on it, evaluate and predict (offline)."""
    from zsk.core.recipe import recipes_dir
    from zsk.core.run import start_run

    workdir = Path(workdir)
    sample = workdir / "data"
    hsi_data.write_sample(sample)
    ctx = start_run(TASK, Config, recipes_dir() / "hsi" / "demo.yaml", [f"data.root={sample}"],
                    out=workdir / "run", device=device)
    metrics = train(ctx)
    predict([str(sample / "sample.hdr")], ctx.run_dir / "best.pt", workdir / "predict", device=ctx.device)
    return {"metric": "OA", "value": metrics["OA"]}
