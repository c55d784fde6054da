"""N-dimensional inferers shared by the dense-prediction tasks, in the spirit of MONAI's
``sliding_window_inference``: the paper's window, stride and padding rule are arguments, so segment
(mmseg ``slide_inference``), medseg (DTC's ``test_single_case``) and hsi (row bands with a halo)
run the same code.

Inputs are ``(C, *spatial)`` tensors; a predictor maps a batch of windows ``(N, C, *window)`` to scores
``(N, K, *window)`` of the same spatial size.
"""

from __future__ import annotations

import itertools
import math
import time
from collections.abc import Callable, Sequence
from typing import Literal

import torch
import torch.nn.functional as F
from torch import Tensor

Predictor = Callable[[Tensor], Tensor]


def window_starts(length: int, window: int, stride: int) -> list[int]:
    """Start offsets along one axis: ``ceil((L - W) / s) + 1`` windows with the last shifted to end at
    the border (mmseg's ``slide_inference`` and DTC's ``test_single_case`` both use this rule); one
    window at 0 when the axis is not longer than the window."""
    if stride < 1:
        raise ValueError(f"stride must be >= 1, got {stride}")
    if length <= window:
        return [0]
    n = math.ceil((length - window) / stride) + 1
    return [min(stride * i, length - window) for i in range(n)]


def symmetric_padding(shape: Sequence[int], window: Sequence[int]) -> list[tuple[int, int]]:
    """(before, after) zero padding per axis so each axis is at least the window (DTC pads this way)."""
    pads = []
    for size, w in zip(shape, window, strict=True):
        total = max(w - size, 0)
        pads.append((total // 2, total - total // 2))
    return pads


def gaussian_importance(window: Sequence[int], sigma_scale: float = 0.125, device: torch.device | None = None) -> Tensor:
    """A separable Gaussian weight map over a window (sigma = ``sigma_scale`` x size per axis), largest at
    the centre, scaled to a maximum of 1 and floored at its smallest positive value (MONAI's
    ``compute_importance_map``)."""
    weights = torch.ones((), device=device)
    for size in window:
        x = torch.arange(size, device=device, dtype=torch.float32) - (size - 1) / 2
        sigma = max(size * sigma_scale, 1e-6)
        g = torch.exp(-0.5 * (x / sigma) ** 2)
        weights = weights[..., None] * g
    weights = weights / weights.max()
    positive = weights[weights > 0]
    return weights.clamp_min(float(positive.min()) if positive.numel() else 1e-6)


def default_clock(device: torch.device) -> Callable[[], float]:
    """The clock to time work on ``device``: the process's CPU time when torch runs one CPU thread (other
    processes' load does not count), else wall time after synchronising a GPU."""
    if device.type == "cpu" and torch.get_num_threads() == 1:
        return time.process_time
    if device.type == "cuda":
        return lambda: (torch.cuda.synchronize(device), time.perf_counter())[1]
    return time.perf_counter


class MeasuredBatch:
    """A window batch chosen by timing the real windows of the first input: each candidate size runs once
    as a warm-up (kernels, allocations) and once timed, then the fastest per window is kept, for the rest
    of the input and in ``memo[key]`` for later inputs (no window is computed twice; the measured windows
    are real output). Batching windows pays on a GPU and for small models, not for a large 3-D model on a
    CPU (issue 19), so the choice is measured rather than fixed per device."""

    def __init__(self, candidates: Sequence[int] = (1, 8), memo: dict | None = None, key: object = None,
                 clock: Callable[[], float] | None = None) -> None:
        self.candidates = [max(1, int(c)) for c in candidates]
        self.memo = memo if memo is not None else {}
        self.key = key
        self.clock = clock
        self.queue = [*self.candidates, *self.candidates]  # warm-up round, then timed round
        self.calls = 0
        self.cost: dict[int, float] = {}

    @property
    def chosen(self) -> int | None:
        return self.memo.get(self.key)

    def next(self) -> int:
        """The size of the next batch of windows."""
        if self.chosen is not None:
            return self.chosen
        return self.queue[0] if self.queue else self.candidates[0]

    def done(self, size: int, requested: int, seconds: float) -> None:
        """Record a batch of `size` windows (of `requested`) that took `seconds`."""
        if self.chosen is not None or not self.queue:
            return
        self.queue.pop(0)
        self.calls += 1
        if self.calls > len(self.candidates) and size == requested:  # timed round, a full batch
            self.cost[requested] = seconds / size
        if not self.queue:
            if self.cost:
                self.memo[self.key] = min(self.cost, key=self.cost.__getitem__)
            # an input too small for a full timed round: decide on a later, larger input


@torch.no_grad()
def sliding_window_inference(inputs: Tensor, window: Sequence[int], stride: Sequence[int], predictor: Predictor, *,
                             window_batch: int | MeasuredBatch = 1, blend: Literal["mean", "gaussian"] = "mean",
                             pad: Literal["none", "symmetric"] = "none", sigma_scale: float = 0.125) -> Tensor:
    """Scores ``(K, *spatial)`` of an input ``(C, *spatial)`` scored window by window.

    Windows follow :func:`window_starts` on every axis (row-major order), go through ``predictor``
    ``window_batch`` at a time (or as many as a :class:`MeasuredBatch` picks), and overlapping scores are averaged (``blend="mean"``) or weighted by
    :func:`gaussian_importance`. ``pad="symmetric"`` zero-pads axes shorter than the window and crops
    the padding off the result (DTC); with ``pad="none"`` such an axis gets one window clipped to the
    input (mmseg), so the predictor sees a smaller window.
    """
    spatial = tuple(inputs.shape[1:])
    if len(window) != len(spatial) or len(stride) != len(spatial):
        raise ValueError(f"window {tuple(window)} and stride {tuple(stride)} must have one entry per spatial axis "
                         f"of the input {spatial}")
    pads = symmetric_padding(spatial, window) if pad == "symmetric" else [(0, 0)] * len(spatial)
    flat = [v for pair in reversed(pads) for v in pair]  # F.pad wants the last axis first
    x = F.pad(inputs, flat) if any(flat) else inputs
    shape = tuple(x.shape[1:])
    if any(st < 1 or (st > w and s > w) for s, w, st in zip(shape, window, stride, strict=True)):
        raise ValueError(f"stride {tuple(stride)} must be at least 1, and at most the window {tuple(window)} on every "
                         f"axis longer than the window (input {shape}): a larger stride leaves positions uncovered")
    sizes = [min(w, s) for w, s in zip(window, shape, strict=True)]
    starts = list(itertools.product(*[window_starts(s, w, st) for s, w, st in zip(shape, window, stride, strict=True)]))
    weight = gaussian_importance(sizes, sigma_scale, x.device) if blend == "gaussian" else None
    total: Tensor | None = None
    count = torch.zeros((1, *shape), device=x.device)
    measured = window_batch if isinstance(window_batch, MeasuredBatch) else None
    clock = (measured.clock or default_clock(x.device)) if measured is not None else None
    i = 0
    while i < len(starts):
        requested = measured.next() if measured is not None else max(1, int(window_batch))  # type: ignore[arg-type]
        chunk = starts[i:i + requested]
        i += len(chunk)
        boxes = [tuple(slice(a, a + w) for a, w in zip(start, sizes, strict=True)) for start in chunk]
        t0 = clock() if clock is not None else 0.0
        out = predictor(torch.stack([x[(slice(None), *box)] for box in boxes]))
        if measured is not None and clock is not None:
            measured.done(len(chunk), requested, clock() - t0)
        if total is None:
            total = torch.zeros((out.shape[1], *shape), device=out.device, dtype=out.dtype)
            count = count.to(out.device)
        for box, scores in zip(boxes, out, strict=True):
            if weight is None:
                total[(slice(None), *box)] += scores
                count[(slice(None), *box)] += 1
            else:
                total[(slice(None), *box)] += scores * weight
                count[(slice(None), *box)] += weight
    assert total is not None
    total /= count
    crop = tuple(slice(lo, s - hi) for (lo, hi), s in zip(pads, shape, strict=True))
    return total[(slice(None), *crop)]


def tile_starts(length: int, tile: int) -> range:
    """Start offsets of non-overlapping tiles of ``tile`` along an axis (the last may be shorter)."""
    return range(0, length, max(1, tile))


@torch.no_grad()
def tiled_inference(inputs: Tensor, tile: Sequence[int], halo: Sequence[int], predictor: Predictor,
                    multiple: Sequence[int] | None = None) -> Tensor:
    """Scores ``(K, *spatial)`` of a fully convolutional predictor run tile by tile to bound memory:
    each tile is read with ``halo`` extra context on every side (clipped at the border) and only its
    own interior is kept, so with a halo at least the receptive field the result equals one pass over
    the whole input. ``multiple`` rounds tile sizes up to a multiple per axis (a network's stride)."""
    spatial = tuple(inputs.shape[1:])
    mult = tuple(multiple) if multiple is not None else (1,) * len(spatial)
    sizes = [max(m, math.ceil(max(1, t) / m) * m) for t, m in zip(tile, mult, strict=True)]
    out: Tensor | None = None
    for start in itertools.product(*[tile_starts(s, t) for s, t in zip(spatial, sizes, strict=True)]):
        lo = [max(0, a - h) for a, h in zip(start, halo, strict=True)]
        hi = [min(s, a + t + h) for a, t, h, s in zip(start, sizes, halo, spatial, strict=True)]
        scores = predictor(inputs[(slice(None), *[slice(a, b) for a, b in zip(lo, hi, strict=True)])][None])[0]
        if out is None:
            out = torch.empty((scores.shape[0], *spatial), device=scores.device, dtype=scores.dtype)
        keep = tuple(slice(a - l_, min(a + t, s) - l_) for a, l_, t, s in zip(start, lo, sizes, spatial, strict=True))
        dest = tuple(slice(a, min(a + t, s)) for a, t, s in zip(start, sizes, spatial, strict=True))
        out[(slice(None), *dest)] = scores[(slice(None), *keep)]
    assert out is not None
    return out
