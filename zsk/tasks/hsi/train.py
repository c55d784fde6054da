"""Training for the hsi task (Alam et al., IEEE TGRS 2019): two stages through `zsk.core.stages.run_stages`.

1. `piecewise`: the band-group CNN with the unary and pairwise heads, trained piecewise
   (a unary cross-entropy per node plus a K²-way cross-entropy per neighbour pair, no partition function);
2. `refine`: the deconvolution network trained on the frozen CRF's mean-field marginals of the whole scene.

`train.*` is the piecewise schedule and `train.stages.refine.*` the refinement's; each stage hands on its
best weights (`select: best`, on validation OA), and `best.pt` holds the whole network.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
from torch import Tensor, nn
from torch.utils.data import Dataset

from zsk.core import dist
from zsk.core.errors import ZskError
from zsk.core.progress import log, warn
from zsk.core.run import RunContext
from zsk.core.stages import Stage, run_stages
from zsk.core.trainer import Trainer, batches_per_epoch, make_loader
from zsk.tasks.hsi import data as hsi_data
from zsk.tasks.hsi.config import Config, TrainConfig
from zsk.tasks.hsi.losses import pairwise_loss, refinement_loss, unary_loss
from zsk.tasks.hsi.model import HSINet, neighbour_offsets

# ----------------------------------------------------------------------------------------------
# Model and data set-up
# ----------------------------------------------------------------------------------------------


def build_model(cfg: Config, num_bands: int, num_classes: int) -> HSINet:
    """The recipe's model for a scene with `num_bands` (after PCA) and `num_classes`."""
    m = cfg.model  # its ranges are checked once, in config.ModelConfig; here what needs the scene
    if not 1 <= m.band_groups <= num_bands:
        raise ZskError(f"model.band_groups={m.band_groups}: must be between 1 and the band count {num_bands}")
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
    """The seed of the train/val/test draw: `data.split.seed`, else `runtime.seed`."""
    return cfg.data.split.seed if cfg.data.split.seed is not None else cfg.runtime.seed


def prepare_scene(cfg: Config, stats: dict | None = None) -> SceneData:
    """Read the scene, fit (or reuse) the preprocessing statistics and draw the split."""
    scene = hsi_data.load_scene(cfg.data)
    hsi_data.check_scene_size(scene.image.shape, cfg.model.patch, cfg.data.pad, scene.image_path)
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


def _label_index_map(labels: np.ndarray, device: torch.device) -> Tensor:
    return torch.from_numpy(labels.astype(np.int64) - 1).to(device)


# ----------------------------------------------------------------------------------------------
# Stage 1: piecewise training of the CRF potentials
# ----------------------------------------------------------------------------------------------


class PiecewiseStep:
    """One batch of training nodes -> unary and pairwise piecewise losses (Alam et al. 2019, "Piecewise training").

    `reduction="sum"` (default) is the piecewise objective Σ_p CE(unary) + Σ_(p,q) CE(pairwise) over the
    batch's nodes and pairs; `"mean"` averages each term (`train.loss_reduction`).

    A batch holds indices of training pixels; its pairs are every (p, q) with p in the batch and q a
    neighbour of p within `crf_radius` that is also a training pixel. Each unique pixel's patch is cut
    once from the padded cube (a single gather) and its feature computed once.
    """

    def __init__(self, padded: Tensor, train_map: Tensor, patch: int, offset: int, radius: int,
                 unary_weight: float = 1.0, pairwise_weight: float = 1.0, class_weight: Tensor | None = None,
                 reduction: str = "sum") -> None:
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
        self.reduction = reduction

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
        out = {"unary": unary_loss(unary, y_p, self.class_weight, self.reduction)}
        loss = self.unary_weight * out["unary"]
        if pairwise is not None:
            y_q = self.train_map[q[:, 0], q[:, 1]]
            out["pairwise"] = pairwise_loss(pairwise, y_p[n_idx], y_q, self.reduction)
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


def piecewise_step(cfg: Config, tcfg: TrainConfig, data: SceneData, device: torch.device) -> PiecewiseStep:
    """The piecewise step over the scene's training pixels with the stage's loss weights."""
    padded = padded_cube(data.cube, cfg).to(device)
    train_map = _label_index_map(data.split.train, device)
    weight = class_weights(data.split.train, data.scene.num_classes, tcfg.class_weights)
    return PiecewiseStep(padded, train_map, cfg.model.patch, grid_offset(cfg), cfg.model.crf_radius,
                         tcfg.unary_weight, tcfg.pairwise_weight, None if weight is None else weight.to(device),
                         tcfg.loss_reduction)


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


def piecewise_trainer(ctx: RunContext, tcfg: TrainConfig, net: HSINet, data: SceneData, extra: dict) -> Trainer:
    """Stage 1: the Trainer of the unary and pairwise potentials (validation OA of the unary map picks best)."""
    cfg: Config = ctx.cfg
    device = ctx.device
    step = piecewise_step(cfg, tcfg, data, device)
    if net.potentials.pairwise is not None and tcfg.pairwise_weight == 0:
        warn("train.pairwise_weight=0: the pairwise head is not trained and inference leaves it out")
        net.potentials.mark_pairwise_untrained()
    elif net.potentials.pairwise is not None:
        n_pairs = step.count_pairs()
        if n_pairs == 0:
            warn("no two training pixels are neighbours under this split: the pairwise term is skipped "
                 "(the pairwise head stays untrained and inference leaves it out; raise data.split.fraction or "
                 "model.crf_radius)")
            step.pairwise_weight = 0.0
            net.potentials.mark_pairwise_untrained()
        else:
            log(f"piecewise training: {len(step)} training nodes, {n_pairs} training pairs")
    seed = cfg.runtime.seed

    def loader_fn(epoch: int, start_batch: int):
        return make_loader(_Indices(len(step)), tcfg.batch_size, epoch=epoch, seed=seed, start_batch=start_batch)

    val_map = _label_index_map(data.split.val, device)
    # validation patches are few: `auto` takes a size that measured well on the device instead of timing again
    # (CPU: 8-16 patches per batch were fastest for the Indian Pines model, tools/perf.py hsi-chunk)
    chunk = cfg.eval.chunk_pixels if cfg.eval.chunk_pixels != "auto" else (16 if device.type == "cpu" else 1024)
    eval_fn = _val_unary_fn(step, val_map, chunk) if bool((val_map >= 0).any()) else None
    if eval_fn is None:
        log("no validation pixels (data.split.val_share): keeping the last weights")
    return Trainer(ctx, net.potentials, tcfg, step, loader_fn, batches_per_epoch(len(step), tcfg.batch_size),
                   eval_fn=eval_fn, extra=extra, stage="piecewise",
                   find_unused_parameters=net.potentials.pairwise is not None)


# ----------------------------------------------------------------------------------------------
# Stage 2: the deconvolution refinement on the frozen CRF's marginals
# ----------------------------------------------------------------------------------------------


def refine_trainer(ctx: RunContext, tcfg: TrainConfig, net: HSINet, data: SceneData, extra: dict) -> Trainer:
    """Stage 2: the deconvolution network on the frozen CRF's marginals and features, pixel CE on training pixels."""
    from zsk.tasks.hsi.evaluate import crf_marginals, node_features

    cfg: Config = ctx.cfg
    device = ctx.device
    assert net.refine is not None
    net.to(device)
    for p in net.potentials.parameters():
        p.requires_grad_(False)
    padded = padded_cube(data.cube, cfg).to(device)
    net.potentials.eval()
    features = node_features(net, padded, cfg.eval, desc="refine inputs")
    marg = crf_marginals(net, features, cfg.model.crf_radius, cfg.model.mean_field_iters, cfg.eval.tile_pixels,
                         cfg.model.mean_field_update, cfg.eval.crf_cache_mb)
    q = marg.get("crf", marg["cnn"]).permute(2, 0, 1)[None].contiguous()
    f = features.permute(2, 0, 1)[None].contiguous()
    ho, wo = q.shape[-2:]
    off = grid_offset(cfg)
    crop = lambda m: m[off : off + ho, off : off + wo]  # noqa: E731
    train_t = _label_index_map(crop(data.split.train), device)[None]
    val_t = _label_index_map(crop(data.split.val), device)[None]
    size = tcfg.refine_crop

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

    def preview_fn(model: nn.Module) -> dict[str, np.ndarray]:
        """False colour (bands at 1/4, 1/2, 3/4 of the cube) | validation labels | refined map, for the trackers."""
        from zsk.data.images import voc_palette
        from zsk.data.overlay import preview_panel

        if ctx.cfg.runtime.preview_images < 1:
            return {}
        cube = data.cube[:, off : off + ho, off : off + wo].permute(1, 2, 0).float()  # (H, W, B')
        bands = cube[..., [cube.shape[-1] // 4, cube.shape[-1] // 2, 3 * cube.shape[-1] // 4]]
        lo, hi = bands.amin(dim=(0, 1)), bands.amax(dim=(0, 1))
        rgb = ((bands - lo) / (hi - lo).clamp(min=1e-12) * 255).round().byte().cpu().numpy()
        pred = model(q, f).argmax(1)[0].cpu().numpy()
        return {"scene": preview_panel(rgb, val_t[0].cpu().numpy(), pred, voc_palette(256), -1)}

    has_val = bool((val_t >= 0).any())
    return Trainer(ctx, net.refine, tcfg, step_fn, loader_fn, 1, eval_fn=eval_fn if has_val else None, extra=extra,
                   stage="refine", preview_fn=preview_fn if has_val else None)


def train(ctx: RunContext) -> dict:
    """Train the recipe's model (piecewise, then refinement), evaluate on `eval.split`; the run folder gets
    best.pt/last.pt (the whole network), eval.json and the confusion matrix as CSV."""
    from zsk.tasks.hsi.evaluate import evaluate_scene, write_confusion

    cfg: Config = ctx.cfg
    data = prepare_scene(cfg)
    counts = data.split.counts(data.scene.num_classes)
    log(f"scene {data.scene.image_path.name}: {data.scene.labels.shape[0]} x {data.scene.labels.shape[1]} pixels, "
        f"{data.num_bands} bands, {data.scene.num_classes} classes; train/val/test pixels "
        f"{sum(counts['train'])}/{sum(counts['val'])}/{sum(counts['test'])}")
    net = build_model(cfg, data.num_bands, data.scene.num_classes)
    extra = checkpoint_extra(data, cfg)
    stages = [Stage("piecewise", lambda tcfg: piecewise_trainer(ctx, tcfg, net, data, extra))]
    if net.refine is not None:
        stages.append(Stage("refine", lambda tcfg: refine_trainer(ctx, tcfg, net, data, extra)))
    scored: dict[str, Any] = {}

    def final_eval(model: nn.Module) -> dict[str, Any]:
        scored.update(evaluate_scene(net, data, cfg, ctx.device, cfg.eval.split))
        return {k: v for k, v in scored.items() if k != "confusion"}

    metrics = run_stages(ctx, stages, final_model=net, extra=extra, final_eval=final_eval)
    write_confusion(ctx.run_dir, scored, data.scene.class_names, cfg.eval.split)
    log(f"{cfg.eval.split}: OA={metrics['OA']:.4f} AA={metrics['AA']:.4f} kappa={metrics['kappa']:.4f} "
        + " ".join(f"{k}={v:.4f}" for k, v in metrics["stages"].items()))
    return metrics
