"""Referring-segmentation metrics over expressions: overall IoU (oIoU, also called cIoU: cumulative
intersection over cumulative union), mean IoU (mIoU, also called gIoU: the mean of per-expression IoUs)
and precision@X. Papers mix the two IoUs (CRIS reports the mean as "IoU"); every result here names both.

The definitions follow the evaluation of LAVT (yz93/LAVT-RIS ``train.py``/``test.py``) and LGFormer:
an expression whose prediction and ground truth are both empty has IoU 0, and prec@X counts IoU >= X.
CRIS (DerrickWang005/CRIS.pytorch ``engine/engine.py``) counts IoU > X; ``strict=True`` selects that.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field

import numpy as np
import torch

PREC_THRESHOLDS: tuple[float, ...] = (0.5, 0.6, 0.7, 0.8, 0.9)


def intersection_union(pred: np.ndarray | torch.Tensor, target: np.ndarray | torch.Tensor) -> tuple[int, int]:
    """Pixel counts |pred ∧ target| and |pred ∨ target| of two binary masks of the same shape."""
    if isinstance(pred, torch.Tensor):
        pred, target = pred.bool(), torch.as_tensor(target).bool()
        return int((pred & target).sum()), int((pred | target).sum())
    pred, target = np.asarray(pred, bool), np.asarray(target, bool)
    return int(np.logical_and(pred, target).sum()), int(np.logical_or(pred, target).sum())


@dataclass
class ReferringIoU:
    """Accumulates (I, U) per expression; :meth:`result` gives oIoU, mIoU and prec@X in percent."""

    thresholds: Sequence[float] = PREC_THRESHOLDS
    strict: bool = False  # prec@X counts IoU > X (CRIS) instead of IoU >= X (LAVT, LGFormer)
    inter: list[int] = field(default_factory=list)
    union: list[int] = field(default_factory=list)

    def update(self, pred: np.ndarray | torch.Tensor, target: np.ndarray | torch.Tensor) -> float:
        """Add one expression; returns its IoU (0 when the union is empty)."""
        i, u = intersection_union(pred, target)
        self.inter.append(i)
        self.union.append(u)
        return i / u if u else 0.0

    def extend(self, inter: Sequence[int], union: Sequence[int]) -> None:
        """Add expressions counted elsewhere (other ranks)."""
        self.inter.extend(int(i) for i in inter)
        self.union.extend(int(u) for u in union)

    def ious(self) -> np.ndarray:
        """Per-expression IoU (0 where the union is empty)."""
        i, u = np.asarray(self.inter, np.float64), np.asarray(self.union, np.float64)
        return np.divide(i, u, out=np.zeros_like(i), where=u > 0)

    def result(self) -> dict[str, float]:
        """``{"oIoU", "mIoU", "prec@0.5", ..., "expressions"}``; IoUs and precisions in percent."""
        ious = self.ious()
        total_u = float(np.sum(self.union))
        out: dict[str, float] = {"oIoU": 100.0 * float(np.sum(self.inter)) / total_u if total_u else 0.0,
                                 "mIoU": 100.0 * float(ious.mean()) if ious.size else 0.0}
        for t in self.thresholds:
            hit = ious > t if self.strict else ious >= t
            out[f"prec@{t:g}"] = 100.0 * float(hit.mean()) if ious.size else 0.0
        out["expressions"] = int(ious.size)
        return out
