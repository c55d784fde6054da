"""The continual metrics on hand-worked confusion matrices: old (background included), new, all, per-class IoU
with None for a class without pixels, and PLOP's avg over the steps."""

from __future__ import annotations

import pytest
import torch

from zsk.tasks.css.evaluate import continual_metrics
from zsk.tasks.css.train import average_over_steps


def test_old_new_all_and_per_class_by_hand() -> None:
    # rows: ground truth, columns: prediction; outputs 0 (background), 1 (base), 2 and 3 (added later; 3 has
    # no pixel). IoU = tp / (row + column - tp): 8/12, 4/8, 3/5, none.
    cm = torch.tensor([[8, 1, 1, 0], [2, 4, 0, 0], [0, 1, 3, 0], [0, 0, 0, 0]])
    out = continual_metrics(cm, ["background", "a", "b", "c"], num_base=2)
    assert out["old"] == pytest.approx((2 / 3 + 1 / 2) / 2)  # background counts among the old classes
    assert out["new"] == pytest.approx(3 / 5)  # the class without pixels is left out, not scored 0
    assert out["all"] == pytest.approx((2 / 3 + 1 / 2 + 3 / 5) / 3)
    assert out["per_class"] == pytest.approx({"background": 2 / 3, "a": 1 / 2, "b": 3 / 5, "c": None})


def test_step_zero_has_no_new_classes() -> None:
    cm = torch.tensor([[3, 1], [1, 3]])
    out = continual_metrics(cm, ["background", "a"], num_base=2)
    assert out["new"] is None and out["old"] == pytest.approx(3 / 5) and out["all"] == out["old"]


def test_avg_is_the_mean_all_over_every_step() -> None:
    rows = [{"all": 0.5}, {"all": 0.7}, {"all": 0.3}]
    assert average_over_steps(rows, 3) == pytest.approx(0.5)
    assert average_over_steps(rows[:2], 3) is None  # a step without its record
    assert average_over_steps([{"all": 0.5}, {"all": None}], 2) is None
