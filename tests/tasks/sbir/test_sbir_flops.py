"""`zsk bench` / `info` FLOPs of ACNet's networks against hand counts (issue 19).

Convention (torch's flop counter, which zsk's ``count_flops`` extends): a convolution counts 2 x its
multiply-adds, 2 * N * C_out * C_in * k^2 * (output pixels); a transposed convolution 2 * N * C_in * C_out * k^2
* (input pixels), as each input pixel scatters one k x k x C_out patch; a Linear 2 * N * in * out. Norms
(Batch/Group/InstanceNorm), activations, padding, pooling and the L2 normalisation count 0.
The hand counts are written from the architectures' layer tables and the recipes' sizes, not read from a counter.
"""

from __future__ import annotations

import pytest
import torch

from zsk.core.bench import count_flops
from zsk.core.recipe import load_recipe, parse_config
from zsk.tasks.sbir.config import Config
from zsk.tasks.sbir.hooks import _no_pretrained, bench_spec
from zsk.tasks.sbir.train import build_model


def _cfg(recipe: str) -> Config:
    return _no_pretrained(parse_config(Config, load_recipe(recipe, ["data.root=/nowhere"])))


def out_size(size: int, k: int, stride: int, pad: int) -> int:
    return (size + 2 * pad - k) // stride + 1


def conv(n: int, c_in: int, c_out: int, k: int, size_out: int) -> int:
    """A k x k convolution with a size_out x size_out output."""
    return 2 * n * c_out * c_in * k * k * size_out * size_out


def resnet10t(n: int, size: int, emb: int) -> int:
    """timm resnet10t: tiered deep stem (3x3 convs 3 -> 24 stride 2, 24 -> 32, 32 -> 64), 3x3/2 max pool, one
    BasicBlock per stage (64, 128, 256, 512; stages 2-4 stride 2 with an average-pool + 1x1 conv shortcut),
    global max pool, Linear(512, emb)."""
    s = out_size(size, 3, 2, 1)
    flops = conv(n, 3, 24, 3, s) + conv(n, 24, 32, 3, s) + conv(n, 32, 64, 3, s)
    s = out_size(s, 3, 2, 1)
    flops += 2 * conv(n, 64, 64, 3, s)
    c = 64
    for width in (128, 256, 512):
        s = out_size(s, 3, 2, 1)
        flops += conv(n, c, width, 3, s) + conv(n, width, width, 3, s) + conv(n, c, width, 1, s)
        c = width
    return flops + 2 * n * c * emb


def vgg16(n: int, size: int, emb: int) -> int:
    """timm vgg16: 13 3x3 convs (64 x2, 128 x2, 256 x3, 512 x3, 512 x3, a 2x2 max pool after each group), the
    pre-logits ConvMlp (7x7 conv 512 -> 4096 on the map, average-pooled up to 7x7 if smaller; 1x1 conv 4096 ->
    4096), global max pool, Linear(4096, emb)."""
    flops, c, s = 0, 3, size
    for widths in ((64, 64), (128, 128), (256, 256, 256), (512, 512, 512), (512, 512, 512)):
        for w in widths:
            flops += conv(n, c, w, 3, s)
            c = w
        s //= 2
    s = max(s, 7) - 7 + 1
    return flops + conv(n, 512, 4096, 7, s) + conv(n, 4096, 4096, 1, s) + 2 * n * 4096 * emb


EXTRACTORS = {"resnet10t": resnet10t, "vgg16": vgg16}


def generator(n: int, size: int, c: int, blocks: int) -> int:
    """G: 7x7 conv 3 -> C, 3x3/2 convs C -> 2C -> 4C, ``blocks`` residual blocks of two 3x3 4C convs, 3x3/2
    transposed convs 4C -> 2C -> C, 7x7 conv C -> 3 (reflect padding keeps the size of the stride-1 convs)."""
    s1 = out_size(size, 3, 2, 1)
    s2 = out_size(s1, 3, 2, 1)
    flops = conv(n, 3, c, 7, size) + conv(n, c, 2 * c, 3, s1) + conv(n, 2 * c, 4 * c, 3, s2)
    flops += blocks * 2 * conv(n, 4 * c, 4 * c, 3, s2)
    flops += 2 * n * 4 * c * 2 * c * 9 * s2 * s2 + 2 * n * 2 * c * c * 9 * (2 * s2) ** 2  # transposed: input pixels
    return flops + conv(n, c, 3, 7, 4 * s2)


def discriminator(n: int, size: int, c: int) -> int:
    """D (PatchGAN): 4x4 convs 3 -> C, C -> 2C, 2C -> 4C (stride 2), 4C -> 8C and 8C -> 1 (stride 1), padding 1."""
    flops = 0
    for c_in, c_out, stride in ((3, c, 2), (c, 2 * c, 2), (2 * c, 4 * c, 2), (4 * c, 8 * c, 1), (8 * c, 1, 1)):
        size = out_size(size, 4, stride, 1)
        flops += conv(n, c_in, c_out, 4, size)
    return flops


def test_bench_inference_flops_of_the_demo_equal_a_hand_count() -> None:
    """The demo's bench ``infer_step`` (`zsk bench --recipe sbir/demo`): E(p), the resnet10t extractor, on one
    evaluation batch of photos at the recipe's image size."""
    cfg = _cfg("sbir/demo")
    spec = bench_spec(cfg, torch.device("cpu"), None)
    hand = resnet10t(cfg.eval.batch_size, cfg.data.image_size, cfg.model.emb_dim)
    assert spec.infer_samples == cfg.eval.batch_size
    assert count_flops(spec.infer_step) == hand


@pytest.mark.parametrize("recipe", ["sbir/demo", "sbir/sketchy21_vgg16"])
def test_acnet_query_and_training_flops_equal_a_hand_count(recipe: str) -> None:
    """What `info` counts, on the meta device (shapes only) at the recipe's image size: a gallery photo E(p),
    a sketch query E(G(s)) and one training pair's forward (G twice, D three times, E three times).
    ``sbir/demo`` is the demo's resnet10t with its small G and D; ``sbir/sketchy21_vgg16`` the paper's VGG-16
    extractor with the official G (8 blocks) and D at 224 pixels."""
    cfg = _cfg(recipe)
    m = cfg.model
    size, n = cfg.data.image_size, 2
    with torch.device("meta"):
        model = build_model(cfg, 6).eval()
    x = torch.zeros(n, 3, size, size, device="meta")
    e = EXTRACTORS[m.backbone](n, size, m.emb_dim)
    g = generator(n, size, m.generator_channels, m.generator_blocks)
    d = discriminator(n, size, m.discriminator_channels)
    with torch.no_grad():
        assert count_flops(lambda: model.embed_photos(x)) == e
        assert count_flops(lambda: model.embed_sketches(x)) == g + e
        assert count_flops(lambda: model(x, x)) == 2 * g + 3 * d + 3 * e
