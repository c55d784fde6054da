"""Issue 19: the FLOPs ``zsk bench`` (and ``info``) count for SATS's incremental SegFormer equal a hand count.

Convention (torch's flop counter, which zsk extends): a matrix product or convolution costs 2 x its
multiply-adds (conv: 2·N·C_out·(C_in/groups)·k·k·H_out·W_out); elementwise ops, GELU, LayerNorm, softmax,
nearest/bilinear resizing and argmax cost 0. Every count below is written from the recipe's dimensions
(``model.*`` widths, heads, depths, reduction ratios, ``data.crop_size``, ``data.steps``), not read from
the model's modules.
"""

from __future__ import annotations

import pytest
import torch

from zsk.core.bench import count_flops, count_flops_by_class
from zsk.core.run import load_config
from zsk.tasks.css.config import Config
from zsk.tasks.css.hooks import bench_spec


def conv_out(size: int, kernel: int, stride: int, pad: int) -> int:
    return (size + 2 * pad - kernel) // stride + 1


def segformer_hand_count(cfg: Config, outputs: int, batch: int = 1) -> dict[str, int]:
    """{"conv", "matmul"} FLOPs of one forward of the incremental SegFormer on a square crop, ``outputs``
    classifier channels (the active steps' 1x1 convolutions)."""
    m = cfg.model
    side, c_in = cfg.data.crop_size, 3
    conv = matmul = 0
    sides = []
    for i in range(4):
        c = m.embed_dims[i]
        k, s = (7, 4) if i == 0 else (3, 2)  # overlapping patch merging
        side = conv_out(side, k, s, k // 2)
        sides.append(side)
        n = side * side
        conv += 2 * batch * c * c_in * k * k * n
        heads, r, hidden = m.num_heads[i], m.sr_ratios[i], int(c * m.mlp_ratio)
        for _ in range(m.depths[i]):
            # efficient self-attention: Q on every token, K/V on the r x r-reduced grid (an r x r stride-r conv)
            kv_tokens = n
            if r > 1:
                kv_tokens = conv_out(side, r, r, 0) ** 2
                conv += 2 * batch * c * c * r * r * kv_tokens
            matmul += 2 * batch * n * c * c  # q
            matmul += 2 * batch * kv_tokens * c * (2 * c)  # kv
            matmul += 2 * (2 * batch * heads * n * kv_tokens * (c // heads))  # Q Kᵀ and A V
            matmul += 2 * batch * n * c * c  # output projection
            # Mix-FFN: fc1, 3x3 depth-wise conv (C_in/groups = 1), fc2
            matmul += 2 * (2 * batch * n * c * hidden)
            conv += 2 * batch * hidden * 1 * 3 * 3 * n
        c_in = c
    # decoder: a 1x1 conv per stage at its own resolution, the fusing 1x1 conv and the classifiers at 1/4
    d, n1 = m.decoder_dim, sides[0] * sides[0]
    conv += sum(2 * batch * d * m.embed_dims[i] * sides[i] * sides[i] for i in range(4))
    conv += 2 * batch * d * (4 * d) * n1
    conv += 2 * batch * outputs * d * n1
    return {"conv": conv, "matmul": matmul}


@pytest.mark.parametrize("sets", [
    [],  # the demo recipe: MiT 16/32/40/64, one block per stage, sr 8/4/2/1, 64 px crops
    # two blocks in stages 1 and 4, a crop not divisible by 32 (stage grids 18/9/5/3: floor-reduced K/V
    # grids, nearest resizing in the decoder) and a wider decoder
    ["model.depths=[2,1,1,2]", "data.crop_size=72", "model.decoder_dim=24", "model.mlp_ratio=2.0"],
])
def test_bench_inference_flops_equal_a_hand_count(sets: list[str]) -> None:
    """``zsk bench``'s inference closure (the model at the first incremental step, one crop) counts exactly
    the hand count: patch-merging, spatial-reduction, depth-wise and decoder convolutions (conv class);
    the attention projections, Q Kᵀ / A V over the reduced keys and the Mix-FFN linears (matmul class)."""
    torch.manual_seed(0)
    cfg, _ = load_config("css", Config, "css/demo", sets)
    spec = bench_spec(cfg, torch.device("cpu"), 1)
    steps = cfg.data.steps
    assert steps is not None and len(steps) > 1  # the bench times step 1: classifiers of steps 0 and 1
    hand = segformer_hand_count(cfg, len(steps[0]) + len(steps[1]))
    assert count_flops_by_class(spec.infer_step) == hand
    assert count_flops(spec.infer_step) == hand["conv"] + hand["matmul"]
