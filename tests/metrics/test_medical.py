"""Medical metrics against hand-worked cases and a brute-force surface-distance formula."""

from __future__ import annotations

import numpy as np
import pytest
from scipy.spatial.distance import cdist

from zsk.metrics.medical import asd, assd, binary_case_metrics, dice, hd95, jaccard, surface


def cube(shape, lo, size):
    m = np.zeros(shape, dtype=bool)
    m[tuple(slice(a, a + s) for a, s in zip(lo, size, strict=True))] = True
    return m


def brute_surface(mask):
    """Voxels of the mask with a face neighbour outside the mask (the volume's outside counts)."""
    p = np.pad(mask, 1, constant_values=False)
    inner = np.ones_like(mask)
    for axis in range(3):
        for shift in (-1, 1):
            inner &= np.roll(p, shift, axis=axis)[1:-1, 1:-1, 1:-1]
    return mask & ~inner


def brute_directed(a, b, spacing=(1.0, 1.0, 1.0)):
    pa = np.argwhere(brute_surface(a)) * np.asarray(spacing)
    pb = np.argwhere(brute_surface(b)) * np.asarray(spacing)
    return cdist(pa, pb).min(axis=1)


def test_cube_shifted_by_one_voxel_hand_computed():
    # 3×3×3 cubes, the second shifted by one voxel along x: 26 surface voxels each (all but the centre).
    # pred→gt: the 9 voxels of the x=2 face are 1 away, the x=4 face centre (gt's centre) is 1 away,
    # the other 16 lie on gt's surface: ASD = 10/26; the pooled 52 distances hold 20 ones -> HD95 = 1.
    pred = cube((8, 8, 8), (2, 2, 2), (3, 3, 3))
    gt = cube((8, 8, 8), (3, 2, 2), (3, 3, 3))
    assert dice(pred, gt) == pytest.approx(2 * 18 / 54)
    assert jaccard(pred, gt) == pytest.approx(18 / 36)
    assert asd(pred, gt) == pytest.approx(10 / 26)
    assert assd(pred, gt) == pytest.approx(10 / 26)
    assert hd95(pred, gt) == pytest.approx(1.0)
    # spacing 2 along x: the nine x=2 face voxels are now 2 away; the x=4 face centre is still 1 away
    # (its nearest gt surface voxel is a y/z neighbour) -> ASD = (9·2 + 1)/26, HD95 = 2
    assert asd(pred, gt, spacing=(2.0, 1.0, 1.0)) == pytest.approx(19 / 26)
    assert hd95(pred, gt, spacing=(2.0, 1.0, 1.0)) == pytest.approx(2.0)


def test_single_voxels_three_apart():
    a = cube((10, 10, 12), (5, 5, 5), (1, 1, 1))
    b = cube((10, 10, 12), (5, 5, 8), (1, 1, 1))
    assert hd95(a, b) == pytest.approx(3.0)
    assert asd(a, b) == pytest.approx(3.0)
    assert hd95(a, b, spacing=(1.0, 1.0, 2.5)) == pytest.approx(7.5)
    assert dice(a, b) == 0.0


def test_directed_asd_differs_from_symmetric():
    # a small cube inside a big one: the small surface is close to the big one, not the reverse
    small = cube((20, 20, 20), (8, 8, 8), (4, 4, 4))
    big = cube((20, 20, 20), (4, 4, 4), (12, 12, 12))
    d_sb, d_bs = brute_directed(small, big), brute_directed(big, small)
    assert asd(small, big) == pytest.approx(d_sb.mean())
    assert asd(big, small) == pytest.approx(d_bs.mean())
    assert assd(small, big) == pytest.approx(0.5 * (d_sb.mean() + d_bs.mean()))
    assert asd(small, big) != pytest.approx(asd(big, small))


@pytest.mark.parametrize("spacing", [None, (0.625, 0.625, 1.25)])
def test_against_brute_force_on_shifted_cube(spacing):
    rng = np.random.default_rng(0)
    pred = cube((24, 22, 20), (5, 5, 4), (10, 9, 8))
    gt = cube((24, 22, 20), (7, 4, 6), (10, 9, 8))
    pred[rng.random(pred.shape) < 0.02] ^= True  # some ragged voxels
    sp = spacing or (1.0, 1.0, 1.0)
    assert np.array_equal(surface(pred), brute_surface(pred))
    d1, d2 = brute_directed(pred, gt, sp), brute_directed(gt, pred, sp)
    assert asd(pred, gt, spacing) == pytest.approx(d1.mean())
    assert hd95(pred, gt, spacing) == pytest.approx(np.percentile(np.concatenate([d1, d2]), 95))
    m = binary_case_metrics(pred, gt, spacing, "symmetric")
    assert m["asd"] == pytest.approx(0.5 * (d1.mean() + d2.mean()))
    assert m["hd95"] == pytest.approx(np.percentile(np.concatenate([d1, d2]), 95))
    assert m["dice"] == pytest.approx(2 * (pred & gt).sum() / (pred.sum() + gt.sum()))


def test_surface_at_volume_edge_counts():
    m = np.ones((4, 4, 4), dtype=bool)
    s = surface(m)
    assert s.sum() == 64 - 8  # only the 2×2×2 core is inside


def test_empty_cases():
    gt = cube((8, 8, 8), (2, 2, 2), (3, 3, 3))
    empty = np.zeros_like(gt)
    assert binary_case_metrics(empty, gt) == {"dice": 0.0, "jaccard": 0.0, "hd95": 0.0, "asd": 0.0}
    m = binary_case_metrics(gt, empty)
    assert m["dice"] == 0.0 and np.isnan(m["hd95"]) and np.isnan(m["asd"])
    assert dice(empty, empty) == 1.0 and jaccard(empty, empty) == 1.0
    with pytest.raises(ValueError):
        hd95(empty, gt)
