"""`zsk bench`'s inference FLOPs of adapt (issue 19) against a hand count of STAL's DeepLabv3+ teacher."""

from __future__ import annotations

import math

import pytest
import torch

from zsk.core.bench import count_flops
from zsk.core.recipe import load_recipe, parse_config
from zsk.tasks.adapt.config import Config
from zsk.tasks.adapt.hooks import bench_spec


def _conv(c_out: int, c_in: int, k: int, h: int, w: int) -> int:
    """A k x k convolution producing c_out x h x w: 2 * C_out * C_in * k^2 * H_out * W_out."""
    return 2 * c_out * c_in * k * k * h * w


def _deeplab_flops(cfg: Config, size: tuple[int, int]) -> int:
    """2 x MACs of one image of `size` through the DeepLabv3+ (encoder, decoder with ASPP, classifier and
    representation heads, aux head): every convolution of the network, dilations do not change the count."""
    m, c = cfg.model, cfg.data.num_classes
    b, s, d = m.base_width, m.stem_width, m.decoder_channels
    h1, w1 = ((n + 2 - 3) // 2 + 1 for n in size)  # stem conv 3x3 stride 2 pad 1
    hp, wp = (math.ceil((n + 2 - 3) / 2) + 1 for n in (h1, w1))  # max-pool 3 stride 2 pad 1 ceil_mode (1/4)
    h2, w2 = ((n + 2 - 3) // 2 + 1 for n in (hp, wp))  # layer2's stride 2; layers 3-4 dilated (1/8)
    a1, a2 = hp * wp, h2 * w2
    total = _conv(s, 3, 3, h1, w1) + _conv(s, s, 3, h1, w1) + _conv(2 * s, s, 3, h1, w1)
    inplanes = 2 * s
    for planes, blocks, (h, w) in zip((b, 2 * b, 4 * b, 8 * b), m.layers, ((hp, wp), (h2, w2), (h2, w2), (h2, w2)),
                                      strict=True):
        for i in range(blocks):
            h_in, w_in = (hp, wp) if planes == 2 * b and i == 0 else (h, w)  # layer2's first 1x1 runs at 1/4
            total += _conv(planes, inplanes, 1, h_in, w_in) + _conv(planes, planes, 3, h, w)
            total += _conv(4 * planes, planes, 1, h, w)
            if i == 0:  # every first block has a 1x1 projection shortcut (stride or width change)
                total += _conv(4 * planes, inplanes, 1, h, w)
            inplanes = 4 * planes
    # decoder: low-level 1x1 on layer1; ASPP on layer4 (pooled 1x1 on a 1x1 map, 1x1, three dilated 3x3); head
    total += _conv(d, 4 * b, 1, hp, wp)
    total += _conv(d, 32 * b, 1, 1, 1) + _conv(d, 32 * b, 1, h2, w2) + 3 * _conv(d, 32 * b, 3, h2, w2)
    total += _conv(d, 5 * d, 3, h2, w2)
    # classifier and representation heads on the 1/4 concatenation [low, upsampled head]: 3x3, 3x3, 1x1
    for out in (c, d):
        total += _conv(d, 2 * d, 3, hp, wp) + _conv(d, d, 3, hp, wp) + _conv(out, d, 1, hp, wp)
    # aux head on layer3: 3x3 then 1x1 to the classes
    total += _conv(d, 16 * b, 3, h2, w2) + _conv(c, d, 1, h2, w2)
    assert a1 > a2 > 1
    return total


@pytest.mark.parametrize(("select_size", "selector"), [((48, 96), "entropy"), ((40, 56), "ripu")])
def test_bench_inference_flops_equal_a_hand_count(select_size: tuple[int, int], selector: str) -> None:
    """`zsk bench`'s inference closure (one selection score: the image resized to train.al.select_size, the demo's
    teacher forward, upsampled entropy / RIPU map) counts 2 x MACs of every Conv2d of the deep-stem ResNet
    (OS8), ASPP, DeepLabv3+ decoder, classifier, representation and aux heads. Bilinear resizes, BatchNorm, ReLU,
    softmax, entropy and RIPU's pools count 0, as in torch's counter; the convolutions' biases are not counted.
    The image is 64 x 128 instead of the bench's 1024 x 2048 (only the resize before and after depends on it)."""
    h, w = select_size
    cfg = parse_config(Config, load_recipe("adapt/demo", [f"train.al.select_size=[{h},{w}]",
                                                          f"train.al.selector={selector}"]))
    torch.manual_seed(0)
    spec = bench_spec(cfg, torch.device("cpu"), None, image_shape=(64, 128))
    assert tuple(cfg.model.layers) == (1, 1, 1, 3) and cfg.model.base_width == 4 and cfg.data.num_classes == 19
    assert count_flops(spec.infer_step) == _deeplab_flops(cfg, select_size)
