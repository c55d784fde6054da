"""Classification metrics from a confusion matrix (rows true, columns predicted)."""

from __future__ import annotations

from typing import Literal

import torch


def _cm(cm: torch.Tensor) -> torch.Tensor:
    cm = torch.as_tensor(cm).double()
    if cm.ndim != 2 or cm.shape[0] != cm.shape[1]:
        raise ValueError("confusion matrix must be square")
    return cm


def accuracy(cm: torch.Tensor) -> float:
    """Overall accuracy (OA): trace / total."""
    cm = _cm(cm)
    total = cm.sum()
    return float(cm.diagonal().sum() / total) if total > 0 else 0.0


def per_class_accuracy(cm: torch.Tensor) -> list[float]:
    """Recall of each class (correct / true count); NaN for classes absent from the targets."""
    cm = _cm(cm)
    support = cm.sum(1)
    return [float(cm[i, i] / support[i]) if support[i] > 0 else float("nan") for i in range(cm.shape[0])]


def average_accuracy(cm: torch.Tensor) -> float:
    """Average accuracy (AA): mean per-class accuracy over classes present in the targets."""
    vals = [v for v in per_class_accuracy(cm) if v == v]
    return sum(vals) / len(vals) if vals else 0.0


def precision_recall_f1(cm: torch.Tensor, average: Literal["weighted", "macro"] = "weighted") -> tuple[float, float, float]:
    """Precision, recall and F1 averaged over classes, weighted by support or plain (macro).

    Per class: P = tp/(tp+fp), R = tp/(tp+fn), F1 = 2PR/(P+R), each 0 when its denominator is 0 (as
    scikit-learn's ``zero_division=0``). Macro averages over every class, weighted by true counts.
    """
    cm = _cm(cm)
    tp = cm.diagonal()
    pred_count = cm.sum(0)
    support = cm.sum(1)
    precision = torch.where(pred_count > 0, tp / pred_count.clamp(min=1), torch.zeros_like(tp))
    recall = torch.where(support > 0, tp / support.clamp(min=1), torch.zeros_like(tp))
    denom = precision + recall
    f1 = torch.where(denom > 0, 2 * precision * recall / denom.clamp(min=1e-300), torch.zeros_like(tp))
    if average == "macro":
        w = torch.full_like(tp, 1.0 / len(tp))
    elif average == "weighted":
        total = support.sum()
        w = support / total if total > 0 else torch.zeros_like(tp)
    else:
        raise ValueError(f"average must be 'weighted' or 'macro', not {average!r}")
    return float((w * precision).sum()), float((w * recall).sum()), float((w * f1).sum())


def cohen_kappa(cm: torch.Tensor) -> float:
    """Cohen's kappa: (p_o - p_e) / (1 - p_e), p_e from the row and column marginals."""
    cm = _cm(cm)
    total = cm.sum()
    if total == 0:
        return 0.0
    po = cm.diagonal().sum() / total
    pe = (cm.sum(0) * cm.sum(1)).sum() / total**2
    return float((po - pe) / (1 - pe)) if pe < 1 else 1.0
