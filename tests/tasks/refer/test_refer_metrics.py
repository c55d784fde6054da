"""zsk.metrics.referring on hand-worked cases: oIoU is cumulative I over cumulative U, mIoU the mean of
per-expression IoUs (an empty union counts 0), prec@X with >= (LAVT) or > (CRIS)."""

from __future__ import annotations

import numpy as np
import pytest

from zsk.metrics.referring import ReferringIoU, intersection_union


def test_hand_worked_expressions() -> None:
    acc = ReferringIoU()
    a = np.zeros((4, 4), bool)
    a[:2, :2] = True  # 4 px
    b = np.zeros((4, 4), bool)
    b[:2, :3] = True  # 6 px, overlap 4
    assert acc.update(a, b) == pytest.approx(4 / 6)
    c = np.zeros((4, 4), bool)
    c[0, 0] = True
    assert acc.update(c, c) == 1.0
    assert acc.update(np.zeros((4, 4)), np.zeros((4, 4))) == 0.0  # empty union: IoU 0 (LAVT)
    acc.extend([0], [10])
    r = acc.result()
    assert r["oIoU"] == pytest.approx(100 * (4 + 1 + 0 + 0) / (6 + 1 + 0 + 10))
    assert r["mIoU"] == pytest.approx(100 * (4 / 6 + 1 + 0 + 0) / 4)
    assert r["prec@0.5"] == 50.0 and r["prec@0.6"] == 50.0 and r["prec@0.7"] == 25.0 and r["prec@0.9"] == 25.0
    assert r["expressions"] == 4


def test_prec_boundary_rule() -> None:
    ge, gt = ReferringIoU(), ReferringIoU(strict=True)
    for acc in (ge, gt):
        acc.extend([1, 7], [2, 10])  # IoU exactly 0.5 and 0.7
    assert ge.result()["prec@0.5"] == 100.0 and gt.result()["prec@0.5"] == 50.0
    assert ge.result()["prec@0.7"] == 50.0 and gt.result()["prec@0.7"] == 0.0


def test_intersection_union_of_tensors_equals_numpy() -> None:
    import torch

    rng = np.random.default_rng(0)
    p, t = rng.random((9, 7)) > 0.5, rng.random((9, 7)) > 0.3
    assert intersection_union(torch.from_numpy(p), torch.from_numpy(t)) == intersection_union(p, t)
