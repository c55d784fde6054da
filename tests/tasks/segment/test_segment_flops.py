"""Issue 19: the FLOPs ``zsk bench`` (and ``info``) count for ZegCLIP equal a hand count per op.

Convention (torch's flop counter, which zsk extends): a matrix product or convolution costs 2 x its
multiply-adds; elementwise ops, LayerNorm, softmax, L2 normalisation, embedding look-ups and the bilinear
upsampling of the mask logits cost 0. Every count below is written from the recipe's dimensions (the
open_clip tiny config, the crop size, the ZegCLIP head settings), not read from the model's modules.
"""

from __future__ import annotations

import pytest
import torch

from zsk.core.bench import count_flops, count_flops_by_class
from zsk.core.run import load_config
from zsk.models.clip import TINY_CONFIGS
from zsk.tasks.segment.config import Config
from zsk.tasks.segment.data import load_benchmark
from zsk.tasks.segment.hooks import bench_spec


def attention(batch: int, lq: int, lk: int, width: int, heads: int) -> int:
    """Multi-head attention: Q, K, V, output projections (2·rows·width·width each), Q Kᵀ and A V
    (2·B·heads·Lq·Lk·head_dim each)."""
    hd = width // heads
    projections = 2 * batch * width * width * (lq + lk + lk + lq)
    return projections + 2 * (2 * batch * heads * lq * lk * hd)


def zegclip_hand_count(cfg: Config, num_classes: int, batch: int = 1) -> dict[str, int]:
    """{"conv", "matmul"} FLOPs of one ZegCLIP forward at the crop size over ``num_classes`` class queries."""
    vision = TINY_CONFIGS[cfg.model.clip.name]["vision_cfg"]
    width, layers, patch = vision["width"], vision["layers"], vision["patch_size"]
    heads, hidden = width // vision["head_width"], int(width * vision["mlp_ratio"])
    dim = TINY_CONFIGS[cfg.model.clip.name]["embed_dim"]
    grid = cfg.data.crop_size // patch
    hw, n = grid * grid, cfg.model.num_prompts
    tokens = 1 + n + hw  # CLS, deep prompts, patch tokens
    # patch embedding: a P x P stride-P convolution from RGB, no bias
    conv = 2 * batch * width * 3 * patch * patch * hw
    # the shared prompt projection, applied once to every layer's N prompts
    matmul = 2 * layers * n * width * width
    # each frozen block: self-attention over all tokens (the fused MHA op) + the 2-layer MLP
    matmul += layers * (attention(batch, tokens, tokens, width, heads) + 2 * (2 * batch * tokens * width * hidden))
    # ln_post(x) @ proj over every token
    matmul += 2 * batch * tokens * width * dim
    # relationship descriptor: Linear(2D -> D) on every class query
    matmul += 2 * batch * num_classes * (2 * dim) * dim
    # decoder layers: cross-attention of the class queries to the patch tokens, then the FFN
    ffn = cfg.model.decoder_ffn_ratio * dim
    per_layer = attention(batch, num_classes, hw, dim, cfg.model.decoder_heads)
    per_layer += 2 * (2 * batch * num_classes * dim * ffn)
    matmul += cfg.model.decoder_layers * per_layer
    return {"conv": conv, "matmul": matmul}


@pytest.mark.parametrize("sets", [
    [],  # the demo recipe: tiny-vit-p8, 96 px crops (12 x 12 tokens), 4 prompts, 1 decoder layer of 4 heads
    ["model.clip.name=tiny-vit-p16", "data.crop_size=64", "model.num_prompts=3", "model.decoder_layers=2",
     "model.decoder_heads=2"],
])
def test_bench_inference_flops_equal_a_hand_count(sets: list[str]) -> None:
    """``zsk bench``'s inference closure (one whole crop, every VOC class) counts exactly the hand count:
    patch-embedding convolution (conv class); prompt projection, fused self-attention blocks with their MLP,
    the output projection, the relationship descriptor and the cross-attention decoder (matmul class)."""
    torch.manual_seed(0)
    cfg, _ = load_config("segment", Config, "segment/demo", sets)
    spec = bench_spec(cfg, torch.device("cpu"), 1)
    hand = zegclip_hand_count(cfg, len(load_benchmark(cfg.data).class_names))
    assert count_flops_by_class(spec.infer_step) == hand
    assert count_flops(spec.infer_step) == hand["conv"] + hand["matmul"]


def test_text_encoder_flops_equal_a_hand_count() -> None:
    """The frozen CLIP text tower that embeds the class names (not in the bench's inference closure, which
    takes embeddings computed once): per layer causal self-attention over the full context (its masked
    product is computed in full: the in-projection as a batched product, Q Kᵀ and A V in the CPU attention
    kernel, the output projection) and the 2-layer MLP, then the final projection of the EOT token only."""
    from zsk.models.clip import CLIPTextEncoder, class_text_embeddings, load_clip

    torch.manual_seed(0)
    name = "tiny-vit-p8"
    text = TINY_CONFIGS[name]["text_cfg"]
    width, heads, layers, ctx = text["width"], text["heads"], text["layers"], text["context_length"]
    hidden = 4 * width  # open_clip's default mlp_ratio
    dim = TINY_CONFIGS[name]["embed_dim"]
    loaded = load_clip(name, None)
    encoder = CLIPTextEncoder(loaded.model, loaded.tokenizer)
    classes = ["aeroplane", "bicycle", "bird"]
    rows = len(classes)  # one template ("single")
    hand = layers * (attention(rows, ctx, ctx, width, heads) + 2 * (2 * rows * ctx * width * hidden))
    hand += 2 * rows * width * dim
    assert count_flops(lambda: class_text_embeddings(encoder, classes, "single")) == hand
