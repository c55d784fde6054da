"""DTC training (Luo et al., AAAI 2021): the dual-task V-Net on two-stream batches of labelled and
unlabelled patches, one stage through the shared Trainer."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch
from torch import nn

from zsk.core.cache import code_version, default_cache, file_fingerprint
from zsk.core.errors import ZskError
from zsk.core.progress import log, progress
from zsk.core.run import RunContext
from zsk.core.stages import Stage, run_stages
from zsk.core.trainer import TrainConfig, Trainer, make_loader
from zsk.tasks.medseg.config import Config
from zsk.tasks.medseg.data import (
    CaseRef,
    TwoStreamBatchSampler,
    TwoStreamTrainSet,
    check_window_fits,
    load_case,
    split_cases,
)
from zsk.tasks.medseg.losses import dtc_loss
from zsk.tasks.medseg.model import DualTaskVNet

METRICS = ("dice", "jaccard", "hd95", "asd")


def build_model(cfg: Config) -> DualTaskVNet:
    """The dual-task V-Net described by the recipe (random init)."""
    m = cfg.model
    return DualTaskVNet(num_classes=cfg.data.num_classes, in_channels=m.in_channels, n_filters=m.n_filters,
                        norm=m.norm, dropout=m.dropout)


def index_cases(cases: Sequence[CaseRef], cfg: Config, labeled_num: int, what: str,
                window: Sequence[int] | None = None, window_key: str = "data.patch_size") -> list[dict]:
    """Open and validate every case once (shape, finite voxels, label ids, labels present where needed,
    at least half the ``window`` on every axis); the reads are cached by file fingerprints so later runs
    skip them."""

    def compute() -> list[dict]:
        out = []
        for i, ref in enumerate(progress(cases, desc=f"checking {what} cases")):
            vol = load_case(ref, cfg.data, require_label=i < labeled_num)
            out.append({"name": ref.name, "shape": list(vol.shape), "labeled": vol.label is not None})
        return out

    key = {"what": "medseg-cases", "code": code_version(), "labeled_num": labeled_num,
           "keys": [cfg.data.image_key, cfg.data.label_key, cfg.data.num_classes],
           "files": [[file_fingerprint(r.image), file_fingerprint(r.label) if r.label else None] for r in cases]}
    index = default_cache().get_or_compute("medseg-index", key, compute)
    if window is not None:
        for ref, row in zip(cases, index, strict=True):
            check_window_fits(row["shape"], window, ref.image, window_key)
    return index


def make_step_fn(cfg: Config):
    """step_fn(model, batch, step) for the trainer: forward both heads and return the DTC loss terms
    (Eq. 5: supervised Dice + CE + level-set regression, plus the ramped dual-task consistency)."""
    num_classes, loss_cfg = cfg.data.num_classes, cfg.train.loss

    def step_fn(model: nn.Module, batch: dict[str, torch.Tensor], step: int) -> dict[str, torch.Tensor]:
        level_set, seg_logits = model(batch["image"])
        return dtc_loss(level_set, seg_logits, batch["label"], batch["sdf"], batch["labeled"], step, num_classes,
                        loss_cfg)

    return step_fn


def train(ctx: RunContext) -> dict[str, Any]:
    """Train DTC with the recipe in ``ctx`` and return the final evaluation metrics."""
    from zsk.tasks.medseg.evaluate import evaluate_cases

    cfg: Config = ctx.cfg
    d = cfg.data
    cases = split_cases(d, "train")
    if d.labeled_num > len(cases):
        raise ZskError(f"data.labeled_num = {d.labeled_num} but the train list has only {len(cases)} cases")
    index_cases(cases, cfg, d.labeled_num, "train", d.patch_size)
    labeled, unlabeled = list(range(d.labeled_num)), list(range(d.labeled_num, len(cases)))
    t = cfg.train
    if t.labeled_bs == t.batch_size and unlabeled:
        log(f"train.labeled_bs = train.batch_size: supervised training on {len(labeled)} labelled cases, "
            f"{len(unlabeled)} unlabelled cases unused")
    log(f"medseg: {len(labeled)} labelled + {len(unlabeled)} unlabelled cases, patch {list(d.patch_size)}")
    dataset = TwoStreamTrainSet(cases, d)
    test_cases = split_cases(d, cfg.eval.split)[: cfg.eval.max_cases] if cfg.eval.split else []
    # the evaluation cases too, before training rather than at the first evaluation
    if test_cases:
        index_cases(test_cases, cfg, len(test_cases), cfg.eval.split, cfg.eval_patch, cfg.eval_window_key)
    seed = cfg.runtime.seed

    def build(tcfg: TrainConfig) -> Trainer:
        def sampler(epoch: int) -> TwoStreamBatchSampler:
            return TwoStreamBatchSampler(labeled, unlabeled, tcfg.batch_size, tcfg.labeled_bs, seed=seed, epoch=epoch,
                                         rank=ctx.dist.rank, world_size=ctx.dist.world_size)

        def loader_fn(epoch: int, start_batch: int):
            return make_loader(dataset, tcfg.batch_size, epoch=epoch, seed=seed, batch_sampler=sampler(epoch),
                               start_batch=start_batch, workers=cfg.runtime.workers)

        panels: dict[str, Any] = {}  # the evaluation's preview pictures, for the trackers

        def eval_fn(m: nn.Module) -> dict[str, float]:
            panels.clear()
            res = evaluate_cases(m, cfg, test_cases, ctx.device, panels)
            return {k: res[k] for k in METRICS}

        def preview_fn(m: nn.Module) -> dict[str, Any]:
            return dict(panels)  # made by the evaluation that just ran

        extra = {"class_names": list(d.class_names), "num_classes": d.num_classes, "patch_size": list(d.patch_size)}
        return Trainer(ctx, build_model(cfg), tcfg, make_step_fn(cfg), loader_fn, len(sampler(0)),
                       eval_fn=eval_fn if test_cases else None, extra=extra,
                       preview_fn=preview_fn if test_cases else None)

    return run_stages(ctx, [Stage("", build)])
