"""Shims that let jiangmengli/metaug's training code run on the CPU in one process, without its logging and AMP
packages, and with the margin function's missing argument supplied (the official call passes one argument fewer
than `util.margin_injection_loss_calc` declares, so train_MetAug.py stops with a TypeError as published)."""

from __future__ import annotations

import sys
from types import SimpleNamespace

import torch
from common import cpu_shims, stub_module


def install() -> None:
    """CPU no-ops for `.cuda()` and `torch.cuda.synchronize`, stub `tensorboard_logger` and `apex`."""
    cpu_shims()
    torch.cuda.synchronize = lambda *a, **k: None  # type: ignore[assignment]
    stub_module("tensorboard_logger", Logger=object)
    stub_module("apex", amp=None, optimizers=None)


def patch_margin(train_module) -> None:  # noqa: ANN001
    """train_MetAug.py calls margin_injection_loss_calc(..., margin_type) while util.py declares a further
    `margin_loss_type` parameter that its body never reads: pass None for it."""
    import util

    original = util.margin_injection_loss_calc
    train_module.margin_injection_loss_calc = lambda *args: original(*args, None)


def options(**overrides) -> SimpleNamespace:  # noqa: ANN003
    """train_MetAug.py's argument defaults (parse_option) for the fields train() and CircleLoss read."""
    opt = dict(mt_loss_hp=1e-5, bb_learning_rate=1e-3, margin_injection=1, margin_type="large", mj_loss_hp=1e-11,
               amp=False, print_freq=30, delta_m_gh=0.25, alpha_m_gh=0.25, alpha_de_gh=1, alpha_enable_gh="no",
               delta_enable_gh="no", gama_gh=16, learning_rate=0.03, lr_decay_epochs=[120, 160, 200],
               lr_decay_rate=0.1, momentum=0.9, weight_decay=1e-4, mt_learning_rate=0.03, mt_momentum=0.9,
               mt_weight_decay=1e-4, nce_k=5, nce_t=0.07, nce_m=0.5, softmax=False, feat_dim=8)
    opt.update(overrides)
    return SimpleNamespace(**opt)


def modules() -> dict:
    """The official modules the harness compares."""
    import train_MetAug
    from models import LinearModel, alexnet_MetAug
    from NCE import NCEAverage_MetAug, NCECriterion_MetAug

    patch_margin(train_MetAug)
    return {"train": train_MetAug, "alexnet": alexnet_MetAug, "nce": NCEAverage_MetAug,
            "criterion": NCECriterion_MetAug, "linear": LinearModel, "util": sys.modules["util"]}
