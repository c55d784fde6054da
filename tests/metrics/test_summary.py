"""Mean ± std over runs, against values worked by hand."""

from __future__ import annotations

import math

import pytest

from zsk.metrics.summary import mean_std, summarize_runs


def test_mean_std_sample_deviation() -> None:
    # values 0.80, 0.90, 0.70: mean 0.80; squared deviations 0, 0.01, 0.01 -> sum 0.02 / (3 - 1) = 0.01 -> std 0.1
    out = mean_std([0.8, 0.9, 0.7])
    assert out["mean"] == pytest.approx(0.8) and out["std"] == pytest.approx(0.1)
    assert mean_std([0.5]) == {"mean": 0.5, "std": 0.0}
    assert mean_std([]) == {"mean": None, "std": None}
    assert mean_std([None, math.nan, 1.0, 3.0]) == {"mean": 2.0, "std": pytest.approx(math.sqrt(2.0))}


def test_summarize_runs_scalars_and_per_class() -> None:
    runs = [{"OA": 0.9, "per_class": {"a": 1.0, "b": 0.5}, "other": 7},
            {"OA": 0.7, "per_class": {"a": 0.0, "b": 0.5}, "other": 9}]
    s = summarize_runs(runs, ("OA", "per_class", "missing"))
    assert s["runs"] == 2 and "missing" not in s and "other" not in s
    assert s["OA"] == {"mean": pytest.approx(0.8), "std": pytest.approx(math.sqrt(0.02))}
    assert s["per_class"]["a"] == {"mean": 0.5, "std": pytest.approx(math.sqrt(0.5))}
    assert s["per_class"]["b"] == {"mean": 0.5, "std": 0.0}
