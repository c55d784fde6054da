"""Issue 19: the inference FLOPs ``zsk bench`` counts for hsi (one dense prediction of a scene through
``scene_probabilities``: node features, unary head, CRF pairwise energies and mean-field messages, and the
deconvolution refinement) equal a hand count written from the recipe's dimensions.

Convention (torch's flop counter, which zsk extends): a matrix product or convolution costs 2 x its
multiply-adds (conv: 2·N·C_out·C_in·prod(kernel)·prod(output spatial); a transposed conv the same with its
input spatial size, equal here as stride 1 and padding 1 keep the size; linear: 2·rows·in·out); elementwise
ops, BatchNorm, ReLU, softmax, log, averaging, max-pool/unpool, replicate padding and gathers cost 0.

The bench's scene comes from the recipe (here the demo's `data.bands`, no files at hand), whose size would
be ``hooks.DEFAULT_BENCH_SHAPE`` (145 x 145): too slow for a unit test, so the tests monkeypatch it to a
small scene (22 x 10 pixels) and build the spec through the real ``hooks.bench_spec``.
"""

from __future__ import annotations

import math
from pathlib import Path

import pytest
import torch

from zsk.core.bench import count_flops, count_flops_by_class
from zsk.core.run import load_config
from zsk.tasks.hsi import hooks
from zsk.tasks.hsi.config import Config

HEIGHT, WIDTH, BANDS = 22, 10, 12  # the monkeypatched bench scene (rows, cols) and data.bands


def group_sizes(bands: int, groups: int) -> list[int]:
    """Contiguous near-equal band groups, the larger ones first (12 bands, 2 groups: 6, 6; 13: 7, 6)."""
    return [bands // groups + (1 if g < bands % groups else 0) for g in range(groups)]


def feature_flops(cfg: Config, bands: int, h: int, w: int) -> dict[str, int]:
    """Node features of every pixel of an h x w scene (reflect-padded by patch // 2): the 3-D branch convs
    (spectral padding k // 2 keeps each group's b bands) and the fuse Linear(G·C_last -> D)."""
    m = cfg.model
    p = m.patch
    conv = 0
    if m.branch_padding == "same":  # every pixel's p x p patch through the branches: size kept by padding 1
        for b in group_sizes(bands, m.band_groups):
            c_in = 1
            for c_out, k in zip(m.branch_channels, m.branch_spectral_kernels, strict=True):
                conv += 2 * (h * w) * c_out * c_in * k * 3 * 3 * b * p * p
                c_in = c_out
    else:  # fully convolutional over row bands of tile_pixels pixels, each reading p - 1 more rows and cols
        rows = max(1, cfg.eval.tile_pixels // w)
        for r0 in range(0, h, rows):
            band_rows = min(h, r0 + rows) - r0
            for b in group_sizes(bands, m.band_groups):
                c_in = 1
                for layer, (c_out, k) in enumerate(zip(m.branch_channels, m.branch_spectral_kernels, strict=True)):
                    out_rows = band_rows + p - 1 - 2 * (layer + 1)  # each valid 3x3 conv drops 2 rows and cols
                    out_cols = w + p - 1 - 2 * (layer + 1)
                    conv += 2 * c_out * c_in * k * 3 * 3 * b * out_rows * out_cols
                    c_in = c_out
    width = m.band_groups * m.branch_channels[-1]
    return {"conv": conv, "matmul": 2 * (h * w) * width * m.feature_dim}


def crf_flops(cfg: Config, k: int, h: int, w: int) -> int:
    """Unary head, pairwise projections, energies V_pq and mean-field messages on the h x w grid.

    Unary: Linear(D -> K) per pixel. Pairwise: the first layer on [f_p, f_q] as two D -> hidden products per
    pixel (W_p f_p + b and W_q f_q), then per ordered pair (p, q = p + (dy, dx)) inside the scene the output
    Linear(hidden -> K²). With the energies cached (eval.crf_cache_mb large) they are computed once per
    dense prediction, otherwise once per mean-field iteration. Each iteration, each pair sends
    Σ_l V_pq(k, l) Q_q(l) (2·K² per pair) and, for the `full` update, Σ_k V_pq(k, l) Q_p(k) (2·K² again)."""
    m = cfg.model
    d, hid, n = m.feature_dim, m.pairwise_hidden, h * w
    flops = 2 * n * d * k  # unary
    flops += 2 * (2 * n * d * hid)  # the two halves of the pairwise first layer
    r = m.crf_radius
    pairs = sum((h - abs(dy)) * (w - abs(dx))
                for dy in range(-r, r + 1) for dx in range(-r, r + 1) if (dy, dx) != (0, 0))
    energies_computed = 1 if cfg.eval.crf_cache_mb > 0 else m.mean_field_iters
    flops += energies_computed * 2 * pairs * hid * k * k
    directions = 2 if m.mean_field_update == "full" else 1
    flops += m.mean_field_iters * directions * 2 * pairs * k * k
    return flops


def refine_flops(cfg: Config, k: int, h: int, w: int) -> int:
    """The deconvolution refinement run row band by row band (bands of tile_pixels // w rows rounded down to a
    multiple of 4, each read with a 16-row halo: the 15-pixel receptive radius rounded up to the stride 4).

    Per band of R rows: the 1x1 feature reduction D -> r on R x w; then on the replicate-padded R4 x W4
    (multiples of 4): enc1 (K + r -> c1, c1 -> c1, 3x3) at full size, enc2 (c1 -> c2, c2 -> c2) at half,
    dec2 (transposed c2 -> c2, c2 -> c1) at half after unpooling, dec1 (transposed c1 -> c1 twice) at full,
    and the 1x1 classifier c1 -> K at full size."""
    m = cfg.model
    c1, c2 = m.refine_widths
    red, d = m.refine_reduced_dim, m.feature_dim
    c_in = k + red
    halo, stride = 16, 4
    rows = max(1, cfg.eval.tile_pixels // w)
    step = max(stride, rows - rows % stride)
    flops = 0
    for a in range(0, h, step):
        r = min(h, a + step + halo) - max(0, a - halo)
        full = math.ceil(r / 4) * 4 * math.ceil(w / 4) * 4
        half = full // 4
        flops += 2 * r * w * red * d  # reduce
        flops += 2 * full * 9 * (c1 * c_in + c1 * c1)  # enc1
        flops += 2 * half * 9 * (c2 * c1 + c2 * c2)  # enc2
        flops += 2 * half * 9 * (c2 * c2 + c1 * c2)  # dec2
        flops += 2 * full * 9 * (c1 * c1 + c1 * c1)  # dec1
        flops += 2 * full * k * c1  # classifier
    return flops


@pytest.mark.parametrize("sets", [
    # the Indian Pines recipes' `valid` branches (fully convolutional features) on the demo's sizes, one row band
    ["model.branch_padding=valid", "model.patch=7"],
    # the same, features and refinement cut into bands of 40 pixels (4 rows), energies recomputed per iteration
    ["model.branch_padding=valid", "model.patch=7", "eval.tile_pixels=40", "eval.crf_cache_mb=0"],
    # the demo recipe as it is: `same` branches (per-patch features, chunk_pixels auto), 5 x 5 patches
    [],
    # `same`, 5 uneven groups (3, 3, 2, 2, 2 bands), 3 layers, radius 2, the `outgoing` update, 7-patch chunks,
    # small bands, no energy cache
    ["model.band_groups=5", "model.branch_channels=[3,4,5]", "model.branch_spectral_kernels=[5,3,3]",
     "model.crf_radius=2", "model.mean_field_update=outgoing", "model.mean_field_iters=3",
     "eval.tile_pixels=40", "eval.crf_cache_mb=0", "eval.chunk_pixels=7"],
])
def test_bench_inference_flops_equal_a_hand_count(sets: list[str], tmp_path: Path,
                                                  monkeypatch: pytest.MonkeyPatch) -> None:
    """count_flops(spec.infer_step) of the real bench spec (deep CRF with refinement) equals the hand count of
    its convs (branches, refinement) and its matrix products (fuse, unary, pairwise, messages)."""
    monkeypatch.setattr(hooks, "DEFAULT_BENCH_SHAPE", (HEIGHT, WIDTH, BANDS))
    cfg, _ = load_config("hsi", Config, "hsi/demo", [f"data.root={tmp_path}", f"data.bands={BANDS}", *sets])
    assert cfg.model.name == "crf" and cfg.model.refine and cfg.model.mean_field_iters > 0
    spec = hooks.bench_spec(cfg, torch.device("cpu"), None)
    assert spec.infer_samples == HEIGHT * WIDTH
    k = len(cfg.data.class_names)
    feats = feature_flops(cfg, BANDS, HEIGHT, WIDTH)
    hand = {"conv": feats["conv"] + refine_flops(cfg, k, HEIGHT, WIDTH),
            "matmul": feats["matmul"] + crf_flops(cfg, k, HEIGHT, WIDTH)}
    assert count_flops_by_class(spec.infer_step) == hand
    assert count_flops(spec.infer_step) == hand["conv"] + hand["matmul"]
