"""Semantic-segmentation metrics from a confusion matrix (rows true, columns predicted)."""

from __future__ import annotations

from collections.abc import Sequence

import torch


def iou_per_class(cm: torch.Tensor) -> list[float]:
    """IoU_c = tp / (tp + fp + fn); NaN for a class absent from both targets and predictions."""
    cm = torch.as_tensor(cm).double()
    tp = cm.diagonal()
    union = cm.sum(0) + cm.sum(1) - tp
    return [float(tp[i] / union[i]) if union[i] > 0 else float("nan") for i in range(cm.shape[0])]


def mean_iou(cm: torch.Tensor, classes: Sequence[int] | None = None) -> float:
    """Mean IoU over ``classes`` (default all), skipping classes with no pixels (NaN IoU), as mmseg."""
    ious = iou_per_class(cm)
    idx = range(len(ious)) if classes is None else classes
    vals = [ious[i] for i in idx if ious[i] == ious[i]]
    return sum(vals) / len(vals) if vals else 0.0


def pixel_accuracy(cm: torch.Tensor) -> float:
    """Correct pixels / labelled pixels."""
    cm = torch.as_tensor(cm).double()
    total = cm.sum()
    return float(cm.diagonal().sum() / total) if total > 0 else 0.0


def harmonic_mean(a: float, b: float) -> float:
    """2ab / (a + b), e.g. hIoU of seen and unseen mIoU (0 when both are 0)."""
    return 2 * a * b / (a + b) if (a + b) > 0 else 0.0
