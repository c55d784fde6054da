"""SATS training: the incremental steps of a continual task run one after another as stages ``step0``,
``step1``, ... of one run. Each step starts from the previous step's weights, initialises its classifier
(MiB), freezes a copy of the previous model for distillation, computes PLOP's entropy thresholds with it,
and trains with CE on pseudo-labelled targets + 20 x MiB UNKD + 20 x L_SATS.

Qiu et al., Pattern Recognition 2023 (QIU023/SATS_Continual_Semantic_Seg ``run.py``, ``train.py``).
"""

from __future__ import annotations

import hashlib
import json
import math
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor, nn

from zsk.core.cache import default_cache
from zsk.core.checkpoint import load_checkpoint, load_model_state
from zsk.core.device import seed_everything
from zsk.core.errors import ZskError
from zsk.core.progress import log
from zsk.core.run import RunContext
from zsk.core.stages import Stage, run_stages
from zsk.core.trainer import (
    TrainConfig,
    Trainer,
    batches_per_epoch,
    make_eval_loader,
    make_loader,
)
from zsk.data import images as img_io
from zsk.models.segformer import MIT_CONFIGS, MiTConfig, load_hf_mit_weights, load_mit_weights
from zsk.tasks.css import increments
from zsk.tasks.css.config import Config
from zsk.tasks.css.data import (
    CLASS_NAMES,
    StepTestDataset,
    StepTrainDataset,
    TrainTransform,
    balanced_exemplars,
    class_presence,
    load_items,
    step_indices,
)
from zsk.tasks.css.losses import (
    adaptive_factor,
    entropy_histogram,
    entropy_norm_value,
    entropy_pseudo_labels,
    median_thresholds,
    sats_feature_loss,
    sats_loss,
    unbiased_kd,
)
from zsk.tasks.css.model import IncrementalSegFormer, frozen_copy

StepFn = Callable[[nn.Module, Any, int], dict[str, Tensor]]


# ----------------------------------------------------------------------------- model
def mit_config(cfg: Config) -> MiTConfig:
    """The encoder of ``model.encoder`` (a released MiT variant) or the recipe's custom stage sizes."""
    m = cfg.model
    if m.encoder != "custom":
        return MIT_CONFIGS[m.encoder]
    return MiTConfig(tuple(m.embed_dims), tuple(m.num_heads), tuple(m.depths), tuple(m.sr_ratios), m.mlp_ratio)


def continual_steps(cfg: Config) -> list[list[int]]:
    """The classes of every step (dataset ids) of the recipe's task."""
    return increments.task_steps(cfg.data.dataset, cfg.data.task, cfg.data.steps)


def class_names(cfg: Config) -> list[str]:
    """Class names in the model's output order ([0] + step 0 + step 1 + ...)."""
    names = CLASS_NAMES[cfg.data.dataset]
    return [names[c] for c in increments.model_order(continual_steps(cfg))]


def build_model(cfg: Config, pretrained: bool = True) -> IncrementalSegFormer:
    """SegFormer with one classifier per step; ImageNet MiT weights from ``model.pretrained`` unless
    ``pretrained=False``: a local ``mit_b*.pth`` (the official ``./pretrained/mit_b2.pth``), or a Hugging Face
    SegFormer encoder (``hf:nvidia/mit-b2`` from the local cache, or a ``save_pretrained`` folder)."""
    steps = continual_steps(cfg)
    model = IncrementalSegFormer(mit_config(cfg), increments.classes_per_step(steps), cfg.model.drop_path_rate,
                                 cfg.model.decoder_dim)
    source = cfg.model.pretrained
    if pretrained and source:
        if source.startswith("hf:") or Path(source).expanduser().is_dir():
            report = load_hf_mit_weights(model.body, source.removeprefix("hf:"))
        else:
            report = load_mit_weights(model.body, source)
        if report["missing"]:
            log(f"warning: {len(report['missing'])} encoder tensors not in {cfg.model.pretrained} "
                f"(e.g. {report['missing'][0]}): random init")
    return model


# ----------------------------------------------------------------------------- data of a run
@dataclass
class ContinualData:
    """The splits, their class-presence tables and the task's steps."""

    steps: list[list[int]]
    train_items: list[img_io.SegItem]
    val_items: list[img_io.SegItem]
    train_presence: list[list[int]]
    val_presence: list[list[int]]

    def train_indices(self, cfg: Config, step: int) -> list[int]:
        idx = step_indices(self.train_presence, self.steps, step, train=True, overlap=cfg.data.overlap,
                           index_dir=cfg.data.index_dir)
        if not idx:
            task = f"task {cfg.data.task}" if cfg.data.steps is None else "data.steps"
            raise ZskError(f"step {step} of {task} has no training image holding its classes "
                           f"{[c for c in self.steps[step] if c]} in {cfg.data.root} ({cfg.data.train_split}); "
                           "check data.root, data.task or data.steps")
        return idx

    def test_dataset(self, cfg: Config, step: int) -> StepTestDataset:
        idx = step_indices(self.val_presence, self.steps, step, train=False, index_dir=cfg.data.index_dir,
                           split=cfg.data.val_split)
        if cfg.eval.max_images is not None:
            idx = idx[: cfg.eval.max_images]
        if not idx:
            raise ZskError(f"no {cfg.data.val_split} image of {cfg.data.root} holds a class seen by step {step}; "
                           "check data.root and data.val_split")
        lut = increments.test_lut(self.steps, step, cfg.eval.future_classes, ignore_background=cfg.data.dataset == "ade" and cfg.eval.ade_other == "ignore")
        return StepTestDataset(self.val_items, idx, lut, cfg.eval.crop_size, cfg.eval.mode == "center_crop")


def load_continual_data(cfg: Config, train: bool = True) -> ContinualData:
    """Read the split lists and (once, cached) the classes present in every label map."""
    steps = continual_steps(cfg)
    val = load_items(cfg.data, cfg.data.val_split)
    tr = load_items(cfg.data, cfg.data.train_split) if train else []
    return ContinualData(steps, tr, val, class_presence(cfg.data, cfg.data.train_split, tr) if train else [],
                         class_presence(cfg.data, cfg.data.val_split, val))


# ----------------------------------------------------------------------------- the step function
@dataclass
class OldModelState:
    """What an incremental step needs from the previous model: the frozen network and PLOP's thresholds."""

    model: IncrementalSegFormer
    num_old: int
    thresholds: Tensor | None
    max_entropy: float


def make_step_fn(cfg: Config, old: OldModelState | None) -> StepFn:
    """step_fn(model, batch, step). Step 0: cross-entropy. Steps > 0: the old model's logits and attention
    maps (no grad), PLOP pseudo-labels on background pixels, then CE + kd_weight x UNKD + sats.weight x L_SATS.
    CE is averaged over every pixel, ignored ones contributing 0 (the official ``reduction='none'`` + ``mean``)."""
    tc = cfg.train

    def step_fn(m: nn.Module, batch: dict[str, Tensor], step: int) -> dict[str, Tensor]:
        images, labels = batch["image"], batch["label"]
        if old is None:
            logits = m(images)
            ce = F.cross_entropy(logits.float(), labels, ignore_index=increments.IGNORE, reduction="none").mean()
            return {"loss": ce, "ce": ce}
        features = tc.sats.source == "features"
        with torch.no_grad():
            old_logits, old_attn = old.model(images, return_attn=True, return_features=features)
        factor: Tensor | float = 1.0
        if old.thresholds is not None:
            labels, background, valid = entropy_pseudo_labels(labels, old_logits, old.thresholds, old.max_entropy,
                                                              old.num_old)
            if tc.adaptive_factor:
                factor = adaptive_factor(background, valid, labels)
        logits, attn = m(images, return_attn=True, return_features=features)
        ce = (F.cross_entropy(logits.float(), labels, ignore_index=increments.IGNORE, reduction="none") * factor).mean()
        out = {"ce": ce}
        loss = ce
        if tc.kd_weight > 0:
            kd = tc.kd_weight * unbiased_kd(logits.float(), old_logits.float(), tc.kd_alpha)
            out["unkd"], loss = kd, loss + kd
        if tc.sats.weight > 0:
            new_maps, old_maps = [a.float() for a in attn], [a.float() for a in old_attn]
            if features:
                sats = tc.sats.weight * sats_feature_loss(new_maps, old_maps, labels)
            else:
                sats = tc.sats.weight * sats_loss(new_maps, old_maps, labels, tc.sats.pooling, tc.sats.head_layout)
            out["sats"], loss = sats, loss + sats
        out["loss"] = loss
        return out

    return step_fn


# ----------------------------------------------------------------------------- PLOP thresholds
def _state_hash(model: nn.Module) -> str:
    h = hashlib.sha256()
    for k, v in model.state_dict().items():
        h.update(k.encode())
        h.update(v.detach().cpu().contiguous().numpy().tobytes())
    return h.hexdigest()


def pseudo_label_thresholds(cfg: Config, data: ContinualData, old: IncrementalSegFormer, step: int,
                            indices: list[int], device: torch.device) -> tuple[Tensor, float]:
    """PLOP's per-class entropy thresholds for ``step``: a histogram of the old model's normalised entropy
    per predicted class over the background pixels (raw label 0) of the step's training images, through the
    training transform with a fixed seed, cached in ``$ZSK_CACHE/css-plop-median``; its median per class."""
    pc = cfg.train.pseudo_label
    num_all = sum(len(s) for s in data.steps[: step + 1])
    num_old = num_all - len(data.steps[step])
    max_value = entropy_norm_value(num_old, num_all, pc.entropy_norm)
    lut = np.full(256, increments.IGNORE, dtype=np.uint8)
    lut[0] = 0  # only the ground-truth background counts (the official loader's labels are unmasked)
    d = cfg.data
    ds = StepTrainDataset(data.train_items, indices, lut, TrainTransform(d.crop_size, tuple(d.scale_range), d.flip_prob))

    def compute() -> Tensor:
        hist = torch.zeros(num_all, pc.nb_bins, device=device)
        with torch.random.fork_rng(devices=[]), torch.no_grad():
            torch.manual_seed(cfg.runtime.seed)
            for batch in make_eval_loader(ds, cfg.train.batch_size, sharded=False):
                logits = old(batch["image"].to(device))
                hist += entropy_histogram(logits, batch["label"].to(device) == 0, max_value, num_all, pc.nb_bins)
        return hist.cpu()

    key = {"old_model": _state_hash(old), "step": step, "steps": data.steps, "indices": hashlib.sha256(
        json.dumps(indices).encode()).hexdigest(), "crop": d.crop_size, "scale": list(d.scale_range),
        "bins": pc.nb_bins, "norm": pc.entropy_norm, "seed": cfg.runtime.seed, "batch": cfg.train.batch_size}
    hist = default_cache().get_or_compute("css-plop-median", key, compute)
    return median_thresholds(hist, pc.min_threshold, pc.median), max_value


# ----------------------------------------------------------------------------- loaders
def _loader_fn(cfg: Config, tcfg: TrainConfig, train_ds: StepTrainDataset,
               memory_ds: StepTrainDataset | None) -> Callable[[int, int], Iterator[dict[str, Tensor]]]:
    """Batches of the step's images; with SATS-M a batch of exemplars is concatenated to every batch, drawn
    cyclically in a seeded order that depends only on (epoch, batch), so a resumed run sees the same."""
    seed, workers = cfg.runtime.seed, cfg.runtime.workers
    mbs = cfg.train.memory_batch_size or tcfg.batch_size

    def loader(epoch: int, start: int) -> Iterator[dict[str, Tensor]]:
        main = make_loader(train_ds, tcfg.batch_size, epoch=epoch, seed=seed, workers=workers, start_batch=start)
        if memory_ds is None:
            yield from main
            return
        per_cycle = math.ceil(len(memory_ds) / mbs)
        ex_iter: Iterator | None = None
        for i, batch in enumerate(main, start=start):
            cycle, pos = divmod(i, per_cycle)
            if ex_iter is None or pos == 0:
                ex_iter = iter(make_loader(memory_ds, mbs, epoch=epoch * 100_003 + cycle, seed=seed + 1, drop_last=False,
                                           workers=0, start_batch=pos))
            ex = next(ex_iter)
            yield {"image": torch.cat([batch["image"], ex["image"]]), "label": torch.cat([batch["label"], ex["label"]])}

    return loader


# ----------------------------------------------------------------------------- train
def average_over_steps(per_step: list[dict[str, Any]], num_steps: int) -> float | None:
    """PLOP's "avg": the mean of the all-class mIoU after every step (None unless every step is recorded)."""
    values = [s.get("all") for s in per_step]
    if len(values) != num_steps or any(v is None for v in values):
        return None
    return sum(values) / num_steps


def _init_from(ctx: RunContext, model: IncrementalSegFormer, from_step: int) -> None:
    """Weights of step ``from_step - 1`` for a sequence that starts mid-way: ``train.init_checkpoint`` or
    the run folder's ``last-step<k>.pt`` (``--resume`` of a run that stopped there)."""
    cfg: Config = ctx.cfg
    prev = f"step{from_step - 1}"
    given = cfg.train.init_checkpoint
    candidates = [Path(given).expanduser()] if given else [ctx.run_dir / f"last-{prev}.pt", ctx.run_dir / f"best-{prev}.pt"]
    for p in candidates:
        if given or p.is_file():
            state = load_checkpoint(p)
            if state.get("task") not in (None, "css"):
                raise ZskError(f"{p} is a checkpoint of task {state.get('task')!r}, not css")
            load_model_state(model, state["model"], source=str(p))
            log(f"--from-step {from_step}: starting from {p}")
            return
    raise ZskError(f"--from-step {from_step} needs the weights of {prev}: set train.init_checkpoint to that step's "
                   f"checkpoint (e.g. RUN/last-{prev}.pt) or resume a run folder holding last-{prev}.pt")


def train(ctx: RunContext) -> dict[str, Any]:
    """Train every step of the recipe's continual task, one stage per step, from ``train.from_step`` on."""
    from zsk.tasks.css.evaluate import evaluate_step, preview_step

    cfg: Config = ctx.cfg
    device = ctx.device
    data = load_continual_data(cfg)
    steps = data.steps
    first = cfg.train.from_step or 0
    if first >= len(steps):
        task = f"task {cfg.data.task}" if cfg.data.steps is None else "data.steps"
        raise ZskError(f"train.from_step={first} but {task} has steps 0..{len(steps) - 1}")
    for t in range(first, len(steps)):  # a step without images fails now, not after hours of earlier steps
        data.train_indices(cfg, t)
        data.test_dataset(cfg, t)
    model = build_model(cfg).to(device)
    if first > 0:
        _init_from(ctx, model, first)
    d = cfg.data
    transform = TrainTransform(d.crop_size, tuple(d.scale_range), d.flip_prob)
    names = class_names(cfg)
    base_extra = {"class_names": names, "steps": steps, "dataset": d.dataset, "task": d.task}

    def builder(t: int) -> Callable[[TrainConfig], Trainer]:
        def build(tcfg: TrainConfig) -> Trainer:
            # every step draws its own random stream (seed + step), so a sequence started with --from-step N
            # trains step N exactly as the full run does (a resumed stage restores its checkpoint's RNG)
            seed_everything(cfg.runtime.seed + t)
            model.active_step = t
            indices = data.train_indices(cfg, t)
            old_state = None
            memory_ds = None
            if t > 0:
                old = frozen_copy(model, t - 1)
                if cfg.train.init_classifier == "mib":
                    model.init_new_classifier(t)
                thresholds, max_entropy = None, 1.0
                if cfg.train.pseudo_label.enabled:
                    thresholds, max_entropy = pseudo_label_thresholds(cfg, data, old, t, indices, device)
                old_state = OldModelState(old, model.num_classes(t - 1), thresholds, max_entropy)
                if cfg.train.memory > 0:
                    previous = sorted({i for k in range(t) for i in data.train_indices(cfg, k)})
                    seen_old = [c for s in steps[:t] for c in s]
                    chosen = balanced_exemplars(data.train_presence, previous, seen_old, cfg.train.memory,
                                                cfg.runtime.seed)
                    if chosen:
                        memory_ds = StepTrainDataset(data.train_items, chosen,
                                                     increments.train_lut(steps, t, keep_old=True), transform)
                        log(f"step {t}: {len(chosen)} exemplar images (SATS-M)")
            train_ds = StepTrainDataset(data.train_items, indices, increments.train_lut(steps, t), transform)
            test_ds = data.test_dataset(cfg, t)
            log(f"step {t}: classes {steps[t]}, {len(train_ds)} training images, {len(test_ds)} test images")

            def eval_fn(m: nn.Module) -> dict[str, Any]:
                return evaluate_step(m, test_ds, cfg, t, names, device)

            def preview_fn(m: nn.Module) -> dict[str, Any]:
                return preview_step(m, test_ds, cfg, t, device)

            return Trainer(ctx, model, tcfg, make_step_fn(cfg, old_state), _loader_fn(cfg, tcfg, train_ds, memory_ds),
                           batches_per_epoch(len(train_ds), tcfg.batch_size), eval_fn=eval_fn,
                           extra={**base_extra, "step": t}, stage=f"step{t}", find_unused_parameters=True,
                           preview_fn=preview_fn)

        return build

    stages = [Stage(f"step{t}", builder(t)) for t in range(first, len(steps))]
    extra: dict[str, Any] = dict(base_extra)

    # --from-step N with train.init_checkpoint: steps < N were evaluated in that checkpoint's run folder
    earlier = [Path(cfg.train.init_checkpoint).expanduser().parent] if first and cfg.train.init_checkpoint else []

    def step_record(t: int) -> dict[str, Any] | None:
        """eval-step<t>.json of this run, or for t < from_step of the init checkpoint's run when it scored the
        same classes (its per-class names equal this task's first classes)."""
        seen = names[: sum(len(s) for s in steps[: t + 1])]
        for folder in [ctx.run_dir] + (earlier if t < first else []):
            path = folder / f"eval-step{t}.json"
            if folder == ctx.run_dir:
                if path.is_file():
                    return json.loads(path.read_text(encoding="utf-8"))
                continue
            try:
                row = json.loads(path.read_text(encoding="utf-8"))
            except (OSError, ValueError):
                continue
            if isinstance(row, dict) and list(row.get("per_class") or {}) == seen:
                return row
        return None

    def final_eval(m: nn.Module) -> dict[str, Any]:
        per_step = []
        for t in range(len(steps)):
            row = step_record(t)
            if row is not None:
                per_step.append({"step": t, **{k: row.get(k) for k in ("old", "new", "all", "per_class")}})
        last = len(steps) - 1
        model.active_step = last
        final = per_step[-1] if per_step and per_step[-1]["step"] == last and cfg.train.select == "last" else None
        if final is None:
            final = evaluate_step(m, data.test_dataset(cfg, last), cfg, last, names, device)
        extra["per_step"] = per_step
        return {k: final[k] for k in ("old", "new", "all", "per_class")} | {"avg": average_over_steps(per_step, len(steps)),
                                                                             "per_step": per_step}

    return run_stages(ctx, stages, final_model=model, extra=extra, final_eval=final_eval)
