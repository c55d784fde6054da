"""Classification metrics against hand-worked confusion matrices and against scikit-learn."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from zsk.metrics.classification import (
    accuracy,
    average_accuracy,
    cohen_kappa,
    per_class_accuracy,
    precision_recall_f1,
)
from zsk.metrics.confusion import ConfusionMatrix

# Rows are the true class, columns the prediction.
#            pred 0  1  2     support (row sums)
CM = torch.tensor([[5, 1, 0],   # 6
                   [2, 3, 1],   # 6
                   [0, 2, 6]])  # 8      total 20
# predicted counts (column sums): 7, 6, 7; true positives (diagonal): 5, 3, 6; trace 14.


def test_accuracy_hand_worked() -> None:
    # OA = trace / total = 14 / 20
    assert accuracy(CM) == pytest.approx(0.7)


def test_per_class_and_average_accuracy_hand_worked() -> None:
    # per-class accuracy = recall = tp / support: 5/6, 3/6, 6/8
    assert per_class_accuracy(CM) == pytest.approx([5 / 6, 1 / 2, 3 / 4])
    # AA = (5/6 + 1/2 + 3/4) / 3 = (10/12 + 6/12 + 9/12) / 3 = 25/36
    assert average_accuracy(CM) == pytest.approx(25 / 36)


def test_precision_recall_f1_macro_hand_worked() -> None:
    # precision = tp / predicted: 5/7, 3/6, 6/7 -> macro (5/7 + 1/2 + 6/7)/3 = (29/14)/3 = 29/42
    # recall    = tp / support:   5/6, 3/6, 6/8 -> macro 25/36
    # F1 = 2tp / (2tp + fp + fn):  10/13, 6/12, 12/15 -> macro (100 + 65 + 104)/130/3 = 269/390
    p, r, f = precision_recall_f1(CM, average="macro")
    assert p == pytest.approx(29 / 42)
    assert r == pytest.approx(25 / 36)
    assert f == pytest.approx(269 / 390)


def test_precision_recall_f1_weighted_hand_worked() -> None:
    # weights = support / total = 6/20, 6/20, 8/20
    # P = (6*5/7 + 6*1/2 + 8*6/7) / 20 = (78/7 + 21/7) / 20 = 99/140
    # R = (6*5/6 + 6*1/2 + 8*3/4) / 20 = (5 + 3 + 6) / 20 = 14/20 (weighted recall is the accuracy)
    # F1 = (6*10/13 + 6*1/2 + 8*4/5) / 20 = (300/65 + 195/65 + 416/65) / 20 = 911/1300
    p, r, f = precision_recall_f1(CM, average="weighted")
    assert p == pytest.approx(99 / 140)
    assert r == pytest.approx(14 / 20)
    assert f == pytest.approx(911 / 1300)
    assert precision_recall_f1(CM) == pytest.approx((p, r, f))  # weighted is the default


def test_cohen_kappa_hand_worked() -> None:
    # p_o = 14/20 = 0.7; p_e = sum(row_i * col_i) / N^2 = (6*7 + 6*6 + 8*7) / 400 = 134/400 = 0.335
    # kappa = (0.7 - 0.335) / (1 - 0.335) = 0.365 / 0.665 = 73/133
    assert cohen_kappa(CM) == pytest.approx(73 / 133)


def test_degenerate_classes_hand_worked() -> None:
    # class 1 is never predicted (precision 0/0 -> 0, recall 0/1 = 0); class 2 never occurs at all.
    cm = torch.tensor([[4, 0, 0],
                       [1, 0, 0],
                       [0, 0, 0]])
    assert accuracy(cm) == pytest.approx(4 / 5)
    acc = per_class_accuracy(cm)
    assert acc[:2] == pytest.approx([1.0, 0.0]) and math.isnan(acc[2])
    assert average_accuracy(cm) == pytest.approx(0.5)  # mean over the classes present: (1 + 0) / 2
    # macro over all 3 classes: P = (4/5 + 0 + 0)/3, R = (1 + 0 + 0)/3, F1 = (8/9 + 0 + 0)/3
    assert precision_recall_f1(cm, "macro") == pytest.approx((4 / 15, 1 / 3, 8 / 27))
    # weighted by support 4, 1, 0: P = 4/5 * 4/5, R = 4/5, F1 = 8/9 * 4/5
    assert precision_recall_f1(cm, "weighted") == pytest.approx((16 / 25, 4 / 5, 32 / 45))
    # p_o = 4/5; p_e = (4*5 + 1*0 + 0*0) / 25 = 4/5 -> kappa 0
    assert cohen_kappa(cm) == pytest.approx(0.0)
    assert cohen_kappa(torch.eye(3, dtype=torch.int64) * 7) == pytest.approx(1.0)
    assert accuracy(torch.zeros(3, 3)) == 0.0


def test_against_sklearn_on_random_labels() -> None:
    metrics = pytest.importorskip("sklearn.metrics")
    rng = np.random.default_rng(0)
    n_classes = 5
    y_true = rng.integers(0, n_classes, 500)
    # predictions agree with the truth 60% of the time, otherwise uniform: a realistic mix of errors
    y_pred = np.where(rng.random(500) < 0.6, y_true, rng.integers(0, n_classes, 500))
    cm = ConfusionMatrix(n_classes)
    cm.update(torch.from_numpy(y_pred), torch.from_numpy(y_true))
    labels = list(range(n_classes))
    np.testing.assert_array_equal(cm.matrix.numpy(), metrics.confusion_matrix(y_true, y_pred, labels=labels))
    assert accuracy(cm.matrix) == pytest.approx(metrics.accuracy_score(y_true, y_pred))
    assert per_class_accuracy(cm.matrix) == pytest.approx(
        list(metrics.recall_score(y_true, y_pred, labels=labels, average=None)))
    assert average_accuracy(cm.matrix) == pytest.approx(metrics.balanced_accuracy_score(y_true, y_pred))
    for average in ("weighted", "macro"):
        p, r, f, _ = metrics.precision_recall_fscore_support(y_true, y_pred, labels=labels, average=average,
                                                             zero_division=0)
        assert precision_recall_f1(cm.matrix, average) == pytest.approx((p, r, f))
    assert cohen_kappa(cm.matrix) == pytest.approx(metrics.cohen_kappa_score(y_true, y_pred))


def test_sklearn_with_a_class_never_predicted() -> None:
    metrics = pytest.importorskip("sklearn.metrics")
    rng = np.random.default_rng(1)
    y_true = rng.integers(0, 4, 200)
    y_pred = np.where(y_true == 3, 0, y_true)  # class 3 is never predicted
    y_pred = np.where(rng.random(200) < 0.2, rng.integers(0, 3, 200), y_pred)
    cm = ConfusionMatrix(4)
    cm.update(torch.from_numpy(y_pred), torch.from_numpy(y_true))
    for average in ("weighted", "macro"):
        p, r, f, _ = metrics.precision_recall_fscore_support(y_true, y_pred, labels=[0, 1, 2, 3], average=average,
                                                             zero_division=0)
        assert precision_recall_f1(cm.matrix, average) == pytest.approx((p, r, f))
    assert cohen_kappa(cm.matrix) == pytest.approx(metrics.cohen_kappa_score(y_true, y_pred))


def test_confusion_update_with_ignore_index() -> None:
    cm = ConfusionMatrix(3, ignore_index=255)
    target = torch.tensor([[0, 1, 255], [2, 2, 1]])
    pred = torch.tensor([[0, 2, 1], [2, 0, 1]])  # the prediction under 255 is not counted
    cm.update(pred, target)
    # pairs (true, pred): (0,0) (1,2) (2,2) (2,0) (1,1)
    expected = torch.tensor([[1, 0, 0],
                             [0, 1, 1],
                             [1, 0, 1]])
    assert torch.equal(cm.matrix, expected)
    assert cm.matrix.dtype == torch.int64
    cm.update(torch.tensor([1]), torch.tensor([1]))  # accumulates
    assert int(cm.matrix[1, 1]) == 2 and int(cm.matrix.sum()) == 6
    cm.reset()
    assert int(cm.matrix.sum()) == 0


def test_confusion_update_skips_out_of_range_targets_and_rejects_bad_predictions() -> None:
    cm = ConfusionMatrix(2)
    cm.update(torch.tensor([0, 1, 1]), torch.tensor([0, -1, 5]))  # targets -1 and 5 are not classes
    assert torch.equal(cm.matrix, torch.tensor([[1, 0], [0, 0]]))
    with pytest.raises(ValueError):
        cm.update(torch.tensor([2]), torch.tensor([0]))
    with pytest.raises(ValueError):
        cm.update(torch.tensor([0, 1]), torch.tensor([0]))
    assert cm.reduce() is cm  # single process: a no-op that returns the accumulator
    assert torch.equal(cm.matrix, torch.tensor([[1, 0], [0, 0]]))
