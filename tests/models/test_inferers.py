"""The shared N-d inferers against loops written here independently: window placement, stitching,
padding, blending and halo tiling."""

from __future__ import annotations

import itertools
import math

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from zsk.models.inferers import (
    MeasuredBatch,
    gaussian_importance,
    sliding_window_inference,
    symmetric_padding,
    tiled_inference,
    window_starts,
)


def pointwise(x: torch.Tensor) -> torch.Tensor:
    """A per-position predictor (N, C, *w) -> (N, 2, *w): stitching must reproduce it everywhere."""
    s = x.sum(1, keepdim=True)
    return torch.cat([torch.sigmoid(2 * s - 0.5), torch.tanh(s)], dim=1)


def test_window_starts_follow_mmseg_and_dtc() -> None:
    # LA: 180 voxels, window 112, stride 18 -> ceil(68/18) + 1 = 5 windows, the last clamped to 68
    assert window_starts(180, 112, 18) == [0, 18, 36, 54, 68]
    # mmseg VOC: 512-wide image, crop 512, stride 341 -> one window; 700 wide -> 2, the last ending at 700
    assert window_starts(512, 512, 341) == [0]
    assert window_starts(700, 512, 341) == [0, 188]
    assert window_starts(50, 112, 18) == [0]
    for length, w, s in itertools.product(range(1, 40), range(1, 12), range(1, 9)):
        starts = window_starts(length, w, s)
        # mmseg: h_grids = max(h - crop + stride - 1, 0) // stride + 1
        assert len(starts) == max(length - w + s - 1, 0) // s + 1
        assert starts[-1] == max(length - w, 0)
        if s <= w:  # strides up to the window leave no gap
            covered = np.zeros(length, bool)
            for a in starts:
                covered[a:a + w] = True
            assert covered.all()


def test_a_stride_beyond_the_window_is_refused() -> None:
    with pytest.raises(ValueError, match="stride"):
        sliding_window_inference(torch.zeros(1, 10), (3,), (4,), pointwise)
    # on an axis no longer than the window the stride never applies (DTC: stride 18 over a 16-voxel axis)
    assert sliding_window_inference(torch.zeros(1, 3), (3,), (4,), pointwise).shape == (2, 3)


@pytest.mark.parametrize("spatial,window,stride", [((23,), (8,), (5,)), ((13, 17), (6, 5), (4, 3)),
                                                   ((9, 11, 7), (4, 5, 3), (3, 2, 2))])
@pytest.mark.parametrize("window_batch", [1, 3])
def test_n_d_sliding_window_equals_the_pointwise_map(spatial, window, stride, window_batch) -> None:
    x = torch.randn(2, *spatial, generator=torch.Generator().manual_seed(0))
    out = sliding_window_inference(x, window, stride, pointwise, window_batch=window_batch)
    assert out.shape == (2, *spatial)
    np.testing.assert_allclose(out.numpy(), pointwise(x[None])[0].numpy(), atol=1e-6)


def _loop_average(x: torch.Tensor, window: tuple[int, ...], stride: tuple[int, ...], predictor) -> torch.Tensor:
    """Overlapping windows averaged by an explicit loop over every output position (the reference)."""
    spatial = x.shape[1:]
    starts = [window_starts(s, w, st) for s, w, st in zip(spatial, window, stride, strict=True)]
    preds = {}
    for start in itertools.product(*starts):
        box = tuple(slice(a, min(a + w, s)) for a, w, s in zip(start, window, spatial, strict=True))
        preds[start] = predictor(x[(slice(None), *box)][None])[0]
    out = torch.zeros(predictor(x[None]).shape[1], *spatial)
    for pos in itertools.product(*[range(s) for s in spatial]):
        values = [p[(slice(None), *[q - a for q, a in zip(pos, start, strict=True)])]
                  for start, p in preds.items()
                  if all(a <= q < a + w for q, a, w in zip(pos, start, window, strict=True))]
        out[(slice(None), *pos)] = torch.stack(values).mean(0)
    return out


def test_overlaps_are_averaged_like_an_explicit_loop() -> None:
    # a predictor whose output depends on the window's content (its mean), so overlaps differ
    def contextual(w: torch.Tensor) -> torch.Tensor:
        return w + w.mean(dim=tuple(range(1, w.dim())), keepdim=True)

    x = torch.randn(1, 10, 9, generator=torch.Generator().manual_seed(1))
    out = sliding_window_inference(x, (4, 5), (3, 2), contextual, window_batch=4)
    np.testing.assert_allclose(out.numpy(), _loop_average(x, (4, 5), (3, 2), contextual).numpy(), atol=1e-6)


def test_symmetric_padding_is_cropped_and_none_clips_the_window() -> None:
    assert symmetric_padding((5, 12), (8, 8)) == [(1, 2), (0, 0)]
    x = torch.randn(1, 5, 12)
    seen = []

    def record(w: torch.Tensor) -> torch.Tensor:
        seen.append(tuple(w.shape[2:]))
        return w * 2

    padded = sliding_window_inference(x, (8, 8), (4, 4), record, pad="symmetric")
    assert set(seen) == {(8, 8)} and padded.shape == (1, 5, 12)
    np.testing.assert_allclose(padded.numpy(), (x * 2).numpy())
    seen.clear()
    clipped = sliding_window_inference(x, (8, 8), (4, 4), record, pad="none")
    assert set(seen) == {(5, 8)}  # mmseg: the short axis gets one window the size of the image
    np.testing.assert_allclose(clipped.numpy(), (x * 2).numpy())


def test_gaussian_blending_weights_the_window_centre() -> None:
    w = gaussian_importance((7, 5))
    assert w.shape == (7, 5) and float(w.max()) == 1.0 and float(w[3, 2]) == 1.0
    assert float(w[0, 0]) < float(w[3, 2]) and float(w.min()) > 0
    # a position-independent predictor gives the same map whatever the blending
    x = torch.randn(2, 12, 10)
    gauss = sliding_window_inference(x, (7, 5), (3, 2), pointwise, blend="gaussian")
    np.testing.assert_allclose(gauss.numpy(), pointwise(x[None])[0].numpy(), atol=1e-6)

    # a predictor that marks window borders: Gaussian blending trusts centres more than the mean does
    def border_high(win: torch.Tensor) -> torch.Tensor:
        out = torch.zeros_like(win[:, :1])
        out[..., 0, :] = out[..., -1, :] = 1.0
        return out

    mean = sliding_window_inference(x, (7, 5), (3, 2), border_high)
    gauss = sliding_window_inference(x, (7, 5), (3, 2), border_high, blend="gaussian")
    assert float(gauss[:, 3:-3].mean()) < float(mean[:, 3:-3].mean())


def test_tiled_inference_with_a_halo_equals_one_pass() -> None:
    conv = torch.nn.Conv2d(3, 4, kernel_size=5, padding=2)  # receptive field: 2 pixels each side
    net = torch.nn.Sequential(conv, torch.nn.ReLU(), torch.nn.Conv2d(4, 2, kernel_size=3, padding=1))
    x = torch.randn(3, 23, 17, generator=torch.Generator().manual_seed(2))
    with torch.no_grad():
        whole = net(x[None])[0]
        tiled = tiled_inference(x, (6, 5), (3, 3), net)
        short = tiled_inference(x, (6, 5), (1, 1), net)
    np.testing.assert_allclose(tiled.numpy(), whole.numpy(), atol=1e-5)
    assert not np.allclose(short.numpy(), whole.numpy(), atol=1e-5)  # a halo below the field shows seams


def test_tiled_inference_rounds_tiles_to_the_network_stride() -> None:
    sizes = []

    def strided(w: torch.Tensor) -> torch.Tensor:
        sizes.append(tuple(w.shape[2:]))
        return F.interpolate(F.avg_pool2d(w, 4), scale_factor=4)

    x = torch.randn(1, 32, 16)
    tiled_inference(x, (5, 16), (0, 0), strided, multiple=(4, 4))
    assert all(h % 4 == 0 for h, _ in sizes) and sizes[0] == (8, 16)
    assert len(sizes) == math.ceil(32 / 8)


def test_measured_batch_times_real_windows_once_and_keeps_the_fastest() -> None:
    """Issue 19: `MeasuredBatch` warms up and times each candidate on the input's own windows (each window
    computed once), keeps the fastest per window for the rest and for later inputs; output unchanged."""
    x = torch.randn(2, 30, 17)
    now = {"t": 0.0}
    seen: list[int] = []

    def predictor(w: torch.Tensor) -> torch.Tensor:
        seen.append(w.shape[0])
        now["t"] += {1: 1.0, 3: 1.5}.get(w.shape[0], 0.0)  # per window: 1 s alone, 0.5 s in threes
        return pointwise(w)

    memo: dict = {}
    measured = MeasuredBatch((1, 3), memo, key="k", clock=lambda: now["t"])
    out = sliding_window_inference(x, (4, 5), (3, 2), predictor, window_batch=measured)
    n = len(window_starts(30, 4, 3)) * len(window_starts(17, 5, 2))
    assert sum(seen) == n  # every window once, the measured ones included
    assert seen[:4] == [1, 3, 1, 3] and set(seen[4:-1]) <= {3} and seen[-1] <= 3 and memo == {"k": 3}
    torch.testing.assert_close(out, sliding_window_inference(x, (4, 5), (3, 2), pointwise, window_batch=1))
    seen.clear()
    sliding_window_inference(x, (4, 5), (3, 2), predictor, window_batch=MeasuredBatch((1, 3), memo, key="k"))
    assert seen[0] == 3  # remembered: no second measurement
