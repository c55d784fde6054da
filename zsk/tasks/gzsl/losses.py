"""Regression of the CNN's seen-class classifiers (DGP and GCNZ training objectives)."""

from __future__ import annotations

import functools
from collections.abc import Callable

from torch import Tensor


def classifier_l2_loss(pred: Tensor, target: Tensor) -> Tensor:
    """L = 1/(2M) sum_i ||W_hat_i - W_i||^2 over the M seen classes (DGP / SGCN, spec "Loss and training")."""
    if pred.shape != target.shape:
        raise ValueError(f"predicted classifiers {tuple(pred.shape)} and targets {tuple(target.shape)} differ")
    return (pred.float() - target.float()).pow(2).sum() / (2 * pred.shape[0])


def classifier_mse_loss(pred: Tensor, target: Tensor) -> Tensor:
    """Mean squared error over all entries (a scale-free variant; not what the GCNZ code optimises)."""
    if pred.shape != target.shape:
        raise ValueError(f"predicted classifiers {tuple(pred.shape)} and targets {tuple(target.shape)} differ")
    return (pred.float() - target.float()).pow(2).mean()


def gcnz_loss(pred: Tensor, target: Tensor, num_nodes: int) -> Tensor:
    """GCNZ's regression loss as its code computes it (mask_mse_loss): the 0/1 node mask is divided by its
    mean, so each seen row is scaled by N/M before tf.nn.l2_loss: L = (N/M)^2 / 2 * sum_i ||W_hat_i - W_i||^2."""
    if pred.shape != target.shape:
        raise ValueError(f"predicted classifiers {tuple(pred.shape)} and targets {tuple(target.shape)} differ")
    scale = num_nodes / pred.shape[0]
    return (scale * (pred.float() - target.float())).pow(2).sum() / 2


LOSSES = {"l2": classifier_l2_loss, "mse": classifier_mse_loss}


def build_loss(name: str, num_nodes: int) -> Callable[[Tensor, Tensor], Tensor]:
    """The recipe's ``train.loss`` as a function of (predicted seen classifiers, targets)."""
    if name == "gcnz":
        return functools.partial(gcnz_loss, num_nodes=num_nodes)
    return LOSSES[name]
