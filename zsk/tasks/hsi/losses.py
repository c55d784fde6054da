"""Piecewise CRF training losses and the refinement loss (spec "Piecewise training", "Deconvolution refinement").

Piecewise training replaces the CRF likelihood by a product of local factors,
P(y | x) ≈ Π_p softmax_K(-U_p)[y_p] · Π_(p,q) softmax_{K²}(-V_pq)[y_p, y_q],
so there is no partition function and the potentials train like two classifiers. The negative log of that
product is a sum over nodes and pairs, so the losses sum by default (`train.loss_reduction: mean` averages
each term instead, zsk's form before issue 11).
"""

from __future__ import annotations

import torch.nn.functional as F
from torch import Tensor


def unary_loss(unary: Tensor, labels: Tensor, weight: Tensor | None = None, reduction: str = "sum") -> Tensor:
    """Σ_p -log softmax_K(-U_p)[y_p] (`reduction="mean"`: the average); `unary` (N, K), `labels` (N,) in 0..K-1."""
    return F.cross_entropy(-unary, labels, weight=weight, reduction=reduction)


def pairwise_loss(pairwise: Tensor, labels_p: Tensor, labels_q: Tensor, reduction: str = "sum") -> Tensor:
    """Σ_(p,q) -log softmax_{K²}(-V_pq)[y_p, y_q] (or the average); `pairwise` (M, K, K)."""
    k = pairwise.shape[-1]
    return F.cross_entropy(-pairwise.flatten(1), labels_p * k + labels_q, reduction=reduction)


def refinement_loss(logits: Tensor, labels: Tensor, mask: Tensor, weight: Tensor | None = None) -> Tensor:
    """Pixel cross-entropy of the refinement logits (N, K, H, W) on the training pixels only (`mask` (N, H, W))."""
    pixel_logits = logits.permute(0, 2, 3, 1)[mask]
    return F.cross_entropy(pixel_logits, labels[mask], weight=weight)
