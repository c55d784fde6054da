"""A confusion-matrix accumulator shared by classification and segmentation metrics."""

from __future__ import annotations

import torch

from zsk.core import dist


class ConfusionMatrix:
    """Counts of (true, predicted) pairs; rows are the true class, columns the prediction.

    ``update`` is one vectorised ``bincount`` over any shape; targets equal to ``ignore_index`` (or
    outside ``[0, num_classes)``) are not counted. ``reduce`` sums the counts over ranks.
    """

    def __init__(self, num_classes: int, ignore_index: int | None = None, device: torch.device | str = "cpu") -> None:
        if num_classes < 1:
            raise ValueError("num_classes must be >= 1")
        self.num_classes = num_classes
        self.ignore_index = ignore_index
        self.matrix = torch.zeros(num_classes, num_classes, dtype=torch.int64, device=device)

    def update(self, pred: torch.Tensor, target: torch.Tensor) -> None:
        """Add a batch of predictions (class ids, same shape as ``target``)."""
        if pred.shape != target.shape:
            raise ValueError(f"prediction shape {tuple(pred.shape)} != target shape {tuple(target.shape)}")
        pred = pred.reshape(-1).to(self.matrix.device, torch.int64)
        target = target.reshape(-1).to(self.matrix.device, torch.int64)
        keep = (target >= 0) & (target < self.num_classes)
        if self.ignore_index is not None:
            keep &= target != self.ignore_index
        pred, target = pred[keep], target[keep]
        if (pred < 0).any() or (pred >= self.num_classes).any():
            raise ValueError(f"predictions outside [0, {self.num_classes})")
        n = self.num_classes
        self.matrix += torch.bincount(target * n + pred, minlength=n * n).reshape(n, n)

    def reduce(self) -> ConfusionMatrix:
        """Sum the counts over all ranks (in place) and return self."""
        dist.all_reduce_sum(self.matrix)
        return self

    def reset(self) -> None:
        self.matrix.zero_()
