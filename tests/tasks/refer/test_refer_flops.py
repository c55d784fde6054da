"""Issue 19: ``zsk bench``'s inference FLOPs of AlignFormer equal a hand count from the recipe's dimensions.

Convention (torch's counter, zsk's ``count_flops``): 2 x the multiply-accumulates of every matrix product
and convolution (linear: 2·rows·in·out; 1x1 Conv1d the same; conv: 2·N·C_out·C_in/groups·k_h·k_w·H_out·W_out;
attention: Q Kᵀ and A·V at 2·B·L_q·L_k·width each, the heads splitting the width); elementwise ops, norms,
softmax, GELU, embedding look-ups, pooling and ``F.interpolate`` count 0.

Multi-scale deformable attention (``zsk.models.deformable_attention``) has two more products, counted as
the reference CUDA kernel computes them (``ms_deform_attn_im2col_bilinear``):

- the bilinear sampling of the values (``grid_sample``): every sampled point is a weighted sum of its 4
  corner pixels in every channel, 4 multiply-accumulates = 8 FLOPs per sampled point per channel
  (= zsk's sparse-product convention 2·nnz·d for the sampling matrix with 4 non-zeros per point);
- the attention-weighted sum of the L·P samples of each query and head (its A·V): 2 FLOPs per sample per
  channel.
"""

from __future__ import annotations

import math

import torch

from zsk.core.bench import count_flops
from zsk.core.recipe import load_recipe, parse_config
from zsk.tasks.refer.config import Config
from zsk.tasks.refer.hooks import bench_spec


def _linear(rows: int, fan_in: int, fan_out: int) -> int:
    return 2 * rows * fan_in * fan_out


def _attention(batch: int, lq: int, lk: int, width: int) -> int:
    """Q Kᵀ and A·V."""
    return 2 * 2 * batch * lq * lk * width


def _cross_attention_layer(b: int, lq: int, lk: int, d: int, kdim: int, ffn: int) -> int:
    """``CrossAttentionLayer``: Q and out projections on the queries, K and V projections on the keys,
    the attention, the two FFN products."""
    return (2 * _linear(b * lq, d, d) + 2 * _linear(b * lk, kdim, d) + _attention(b, lq, lk, d)
            + _linear(b * lq, d, ffn) + _linear(b * lq, ffn, d))


def hand_count(cfg: Config, b: int) -> dict[str, int]:
    """FLOPs of one AlignFormer forward of ``b`` expressions on one image (expanded to ``b``), by part."""
    m, s, t = cfg.model, cfg.data.image_size, cfg.data.max_tokens
    cl, md = m.text_dim, m.mask_dim
    parts: dict[str, int] = {}
    # BERT (no pooler): Q, K, V, output projections, attention over the T tokens, FFN
    parts["bert"] = m.text_layers * (4 * _linear(b * t, cl, cl) + _attention(b, t, t, cl)
                                     + 2 * _linear(b * t, cl, m.text_ffn))
    # Swin: patch embedding (4x4 conv, stride 4), then per stage patch merging (4C -> 2C on a quarter of the
    # tokens, stages 2-4) and blocks; window attention (qkv, attention, proj) runs on the map padded to
    # whole windows, the MLP (ratio 4) on the real tokens
    r = s // 4
    swin = 2 * b * m.embed_dim * 3 * 4 * 4 * r * r
    stage_tokens = []
    for i, depth in enumerate(m.depths):
        c = m.embed_dim * 2**i
        if i:
            r //= 2
            swin += _linear(b * r * r, 4 * (c // 2), c)
        padded = (math.ceil(r / m.window_size) * m.window_size) ** 2
        window = m.window_size**2
        block = (_linear(b * padded, c, 3 * c) + _attention(b, padded, window, c) + _linear(b * padded, c, c)
                 + _linear(b * r * r, c, 4 * c) + _linear(b * r * r, 4 * c, c))
        swin += depth * block
        stage_tokens.append((r * r, c))
    parts["swin"] = swin
    # VLBA after every stage (1x1 Conv1d = a linear layer per position) and the two zero-init gates per side
    vlba = 0
    for hw, c in stage_tokens:
        vlba += _linear(b * hw, c, c)  # vis_project
        vlba += _linear(b * t, cl, cl)  # lang_project
        vlba += _linear(b * hw, c, c) + 2 * _linear(b * t, cl, c)  # query; key, value
        vlba += _attention(b, hw, t, c)  # Q Kᵀ and softmax(A) V (pixels gather words)
        vlba += _linear(b * hw, c, c)  # W
        vlba += _linear(b * hw, c, cl) + 2 * b * t * hw * cl  # sym_value; softmax(Aᵀ) pix (words gather pixels)
        vlba += _linear(b * t, cl, cl)  # sym_W
        vlba += _linear(b * hw, 2 * c, c) + _linear(b * hw, c, c)  # project_mm
        vlba += _linear(b * t, 2 * cl, cl) + _linear(b * t, cl, cl)  # sym_project_mm
        vlba += 2 * _linear(b * hw, c, c) + 2 * _linear(b * t, cl, cl)  # res_gates, sym_res_gates
    parts["vlba"] = vlba
    # pixel decoder: 1x1 input projections of stages 2-4, then per layer MSDeformAttn + FFN over all tokens and
    # the pixel-to-word cross-attention layer
    levels = [hw for hw, _ in stage_tokens[1:]]
    tokens = sum(levels)
    dec = sum(_linear(b * hw, c, md) for hw, c in stage_tokens[1:])
    heads, n_levels, points = m.enc_heads, len(levels), m.enc_points
    samples = b * tokens * n_levels * points * md  # sampled points x channels (every head samples md / heads)
    deform = {
        "projections": (_linear(b * tokens, md, md)  # value_proj
                        + _linear(b * tokens, md, heads * n_levels * points * 2)  # sampling_offsets
                        + _linear(b * tokens, md, heads * n_levels * points)  # attention_weights
                        + _linear(b * tokens, md, md)),  # output_proj
        "bilinear_sampling": 2 * 4 * samples,
        "weighted_sum": 2 * samples,
    }
    parts.update({f"deform_{k}": m.enc_layers * v for k, v in deform.items()})
    dec += m.enc_layers * (_linear(b * tokens, md, m.enc_ffn) + _linear(b * tokens, m.enc_ffn, md))
    dec += m.enc_layers * _cross_attention_layer(b, tokens, t, md, cl, m.word_attn_ffn)
    # FPN: 1x1 adapter of stage 1, 3x3 conv, 1x1 mask-feature conv at stride 4
    hw1, c1 = stage_tokens[0]
    dec += 2 * b * md * c1 * hw1 + 2 * b * md * md * 9 * hw1 + 2 * b * md * md * hw1
    parts["pixel_decoder"] = dec
    # center embedding (txt_proj), query decoder cycling over the levels from stride 32, per query state the
    # kernel head (D -> D -> D -> mask_dim + 1) and the dynamic 1x1 kernel (einsum over the mask features)
    q = _linear(b, cl, cl)
    for i in range(m.dec_layers):
        q += _cross_attention_layer(b, 1, levels[::-1][i % n_levels], cl, md, m.dec_ffn)
    states = m.dec_layers + 1
    q += states * (2 * _linear(b, cl, cl) + _linear(b, cl, md + 1) + 2 * b * md * hw1)
    parts["query_decoder_and_kernels"] = q
    return parts


def test_bench_inference_flops_equal_a_hand_count() -> None:
    """The closure ``zsk bench`` times (``mask_logits`` of ``eval.expressions_per_batch`` expressions on one
    image, demo recipe: 64 px, Swin 16-d 2-2-2-2, window 4, BERT 2 x 32-d, 12 tokens) counts the hand
    count of every part: BERT, Swin (window attention on padded windows), VLBA, the MSDeformAttn pixel
    decoder with its bilinear sampling and weighted sum, the query decoder and the dynamic kernels."""
    cfg = parse_config(Config, load_recipe("refer/demo", ["data.root=/nonexistent"]))
    torch.manual_seed(0)
    spec = bench_spec(cfg, torch.device("cpu"), 2)
    hand = hand_count(cfg, cfg.eval.expressions_per_batch)
    assert spec.infer_samples == cfg.eval.expressions_per_batch
    assert count_flops(spec.infer_step) == sum(hand.values()), hand
