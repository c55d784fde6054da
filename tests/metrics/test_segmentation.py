"""Segmentation metrics against a hand-worked confusion matrix."""

from __future__ import annotations

import math

import pytest
import torch

from zsk.metrics.segmentation import harmonic_mean, iou_per_class, mean_iou, pixel_accuracy

# rows true, columns predicted; a 4th class appears neither in the targets nor in the predictions.
CM = torch.tensor([[5, 1, 0, 0],   # support 6
                   [2, 3, 1, 0],   # support 6
                   [0, 2, 6, 0],   # support 8
                   [0, 0, 0, 0]])
# predicted counts 7, 6, 7, 0


def test_iou_per_class_hand_worked() -> None:
    # IoU = tp / (support + predicted - tp): 5/(6+7-5) = 5/8, 3/(6+6-3) = 1/3, 6/(8+7-6) = 2/3, 0/0 -> NaN
    ious = iou_per_class(CM)
    assert ious[:3] == pytest.approx([5 / 8, 1 / 3, 2 / 3])
    assert math.isnan(ious[3])


def test_mean_iou_hand_worked() -> None:
    # the empty class is skipped: (5/8 + 1/3 + 2/3) / 3 = (13/8) / 3 = 13/24
    assert mean_iou(CM) == pytest.approx(13 / 24)
    # over a subset (e.g. the unseen classes): (1/3 + 2/3) / 2 = 1/2; the empty class 3 is skipped
    assert mean_iou(CM, classes=[1, 2, 3]) == pytest.approx(0.5)
    assert mean_iou(CM, classes=[0]) == pytest.approx(5 / 8)
    assert mean_iou(torch.zeros(2, 2)) == 0.0


def test_pixel_accuracy_hand_worked() -> None:
    # (5 + 3 + 6) / 20
    assert pixel_accuracy(CM) == pytest.approx(0.7)
    assert pixel_accuracy(torch.zeros(3, 3)) == 0.0


def test_harmonic_mean_hand_worked() -> None:
    # 2 * 0.5 * 0.25 / 0.75 = 1/3
    assert harmonic_mean(0.5, 0.25) == pytest.approx(1 / 3)
    assert harmonic_mean(0.4, 0.4) == pytest.approx(0.4)
    assert harmonic_mean(0.0, 0.9) == 0.0
    assert harmonic_mean(0.0, 0.0) == 0.0
