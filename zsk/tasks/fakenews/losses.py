"""Heated-up softmax loss (Zhang et al. 2018) and its alpha schedule, as the paper uses them (Eq. 1).

Two forms (`model.heated_softmax`):
- `normalized` (default, Zhang et al.'s heated-up softmax): features and class weights are
  L2-normalised and z_m = alpha cos(f, w_m) + b_m; alpha lives in the classifier
  (`CosineClassifier`), the loss is the plain cross-entropy of z.
- `linear`: z = alpha (W f + b), the cross-entropy of an unnormalised linear classifier's logits
  scaled by alpha (`heated_softmax_cross_entropy`).
"""

from __future__ import annotations

import bisect
from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import Tensor


def heated_softmax(logits: Tensor, alpha: float) -> Tensor:
    """p(m | x) = exp(alpha z_m) / sum_j exp(alpha z_j) (Eq. 1, with the denominator's index fixed)."""
    return torch.softmax(alpha * logits, dim=-1)


def heated_softmax_cross_entropy(logits: Tensor, target: Tensor, alpha: float) -> Tensor:
    """Mean cross-entropy on the heated-up softmax: -log p(y | x) with p from `heated_softmax`.

    A large alpha (4) sharpens the distribution so that the loss concentrates on hard samples; a
    small one (0.5) "heats" it up, pulling easy samples' features closer to their class boundary.
    """
    return F.cross_entropy(alpha * logits.float(), target)


def cosine_logits(features: Tensor, weight: Tensor, bias: Tensor | None, alpha: float | Tensor) -> Tensor:
    """z_m = alpha <f / |f|, w_m / |w_m|> + b_m (Zhang et al. 2018, Sec. 3: normalised features and
    weights, the bias outside alpha); features (B, D), weight (C, D), bias (C,)."""
    z = alpha * (F.normalize(features.float(), dim=-1) @ F.normalize(weight.float(), dim=-1).T)
    return z + bias.float() if bias is not None else z


def heated_alpha(epoch: int, alphas: Sequence[float], milestones: Sequence[int]) -> float:
    """Alpha for a 0-based `epoch`: alphas[k] where k = number of milestones <= epoch.

    The paper's schedule over 30 epochs (epochs 1-10: 4, 11-20: 1, 21-30: 0.5) is
    alphas=[4, 1, 0.5], milestones=[10, 20].
    """
    if len(alphas) != len(milestones) + 1:
        raise ValueError(f"heated softmax: {len(alphas)} alphas need {len(alphas) - 1} milestones, got {len(milestones)}")
    return float(alphas[bisect.bisect_right(list(milestones), epoch)])
