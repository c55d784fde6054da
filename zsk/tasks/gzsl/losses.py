"""Regression of the CNN's seen-class classifiers (DGP and GCNZ training objectives)."""

from __future__ import annotations

from torch import Tensor


def classifier_l2_loss(pred: Tensor, target: Tensor) -> Tensor:
    """L = 1/(2M) sum_i ||W_hat_i - W_i||^2 over the M seen classes (DGP / SGCN, spec "Loss and training")."""
    if pred.shape != target.shape:
        raise ValueError(f"predicted classifiers {tuple(pred.shape)} and targets {tuple(target.shape)} differ")
    return (pred.float() - target.float()).pow(2).sum() / (2 * pred.shape[0])


def classifier_mse_loss(pred: Tensor, target: Tensor) -> Tensor:
    """Mean squared error over all entries (GCNZ's objective)."""
    if pred.shape != target.shape:
        raise ValueError(f"predicted classifiers {tuple(pred.shape)} and targets {tuple(target.shape)} differ")
    return (pred.float() - target.float()).pow(2).mean()


LOSSES = {"l2": classifier_l2_loss, "mse": classifier_mse_loss}
