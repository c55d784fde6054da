"""zsk.models.deformable_attention: the grid_sample implementation equals a direct per-point bilinear loop,
including samples that fall partly or wholly outside a level, and the module's reference initialisation."""

from __future__ import annotations

import math

import torch

from zsk.models.deformable_attention import MSDeformAttn, ms_deform_attn, ms_deform_attn_loop


def test_grid_sample_implementation_equals_the_direct_loop() -> None:
    g = torch.Generator().manual_seed(0)
    shapes = [(5, 7), (3, 4), (2, 2)]
    n, m, d, lq, p = 2, 2, 3, 4, 3
    value = torch.randn(n, sum(h * w for h, w in shapes), m, d, generator=g, dtype=torch.float64)
    # locations in [-0.2, 1.2]: some samples lie outside the map (zero padding)
    loc = torch.rand(n, lq, m, len(shapes), p, 2, generator=g, dtype=torch.float64) * 1.4 - 0.2
    w = torch.rand(n, lq, m, len(shapes), p, generator=g, dtype=torch.float64)
    fast = ms_deform_attn(value, torch.tensor(shapes), loc, w)
    slow = ms_deform_attn_loop(value, shapes, loc, w)
    assert fast.shape == (n, lq, m * d)
    torch.testing.assert_close(fast, slow, rtol=0, atol=1e-10)


def test_a_sample_at_a_pixel_centre_returns_that_pixel() -> None:
    shapes = [(4, 6)]
    value = torch.arange(24 * 2, dtype=torch.float32).view(1, 24, 1, 2)
    y, x = 2, 5
    loc = torch.tensor([(x + 0.5) / 6, (y + 0.5) / 4]).view(1, 1, 1, 1, 1, 2)
    out = ms_deform_attn(value, torch.tensor(shapes), loc, torch.ones(1, 1, 1, 1, 1))
    assert out.flatten().tolist() == value[0, y * 6 + x, 0].tolist()


def test_module_initialisation_and_padding_mask() -> None:
    attn = MSDeformAttn(d_model=16, n_levels=2, n_heads=4, n_points=2)
    bias = attn.sampling_offsets.bias.view(4, 2, 2, 2)
    # head h points in direction 2πh/4, scaled so the larger coordinate is 1, point i at distance i + 1
    for h in range(4):
        d = torch.tensor([math.cos(2 * math.pi * h / 4), math.sin(2 * math.pi * h / 4)])
        d = d / d.abs().max()
        for i in range(2):
            torch.testing.assert_close(bias[h, 0, i], d * (i + 1))
    assert attn.attention_weights.weight.abs().sum() == 0 and attn.sampling_offsets.weight.abs().sum() == 0
    shapes = torch.tensor([[4, 4], [2, 2]])
    src = torch.randn(1, 20, 16)
    ref = torch.rand(1, 20, 2, 2)
    pad = torch.zeros(1, 20, dtype=torch.bool)
    base = attn(src, ref, src, shapes, None, pad)
    pad[0, 16:] = True  # hide the coarse level: its values must not reach the output
    src2 = src.clone()
    src2[0, 16:] = 100.0
    torch.testing.assert_close(attn(src, ref, src2, shapes, None, pad), attn(src, ref, src, shapes, None, pad))
    assert not torch.allclose(base, attn(src, ref, src, shapes, None, pad))
