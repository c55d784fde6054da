"""`zsk bench`'s inference FLOPs of contrast (issue 19) against hand counts of MetAug's networks."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from zsk.core.bench import count_flops
from zsk.core.recipe import load_recipe, parse_config
from zsk.tasks.contrast.config import Config
from zsk.tasks.contrast.hooks import bench_spec

LAYER_INDEX = {"conv5": 5, "fc6": 6, "fc7": 7, "fc8": 8}


def _out(size: int, kernel: int, stride: int, pad: int) -> int:
    return (size + 2 * pad - kernel) // stride + 1


def _alexnet_half_flops(cin: int, channels: list[int], fc_dim: int, feat_dim: int, size: int, layer: int) -> int:
    """2 x MACs of one image through CMC's AlexNet-half up to `layer` (5: conv5, 6: fc6, 7: fc7, 8: fc8).

    conv1 11x11 stride 4 pad 2, max-pool 3/2; conv2 5x5 pad 2, max-pool 3/2; conv3-5 3x3 pad 1, max-pool 3/2
    after conv5; then fc6 (c5 * s * s -> fc_dim), fc7 (fc_dim -> fc_dim), fc8 (fc_dim -> feat_dim).
    """
    c1, c2, c3, c4, c5 = channels
    s1 = _out(size, 11, 4, 2)
    s2 = _out(s1, 3, 2, 0)  # pool1; conv2 keeps the size
    s3 = _out(s2, 3, 2, 0)  # pool2; conv3..conv5 keep the size
    s5 = _out(s3, 3, 2, 0)  # pool5
    total = 2 * c1 * cin * 11 * 11 * s1 * s1 + 2 * c2 * c1 * 5 * 5 * s2 * s2
    total += 2 * 3 * 3 * s3 * s3 * (c3 * c2 + c4 * c3 + c5 * c4)
    linears = [(c5 * s5 * s5, fc_dim), (fc_dim, fc_dim), (fc_dim, feat_dim)][: max(0, layer - 5)]
    return total + sum(2 * i * o for i, o in linears)


def _cfg(sets: list[str]) -> Config:
    return parse_config(Config, load_recipe("contrast/demo", sets))


@pytest.mark.parametrize(("layer", "features", "size"), [("fc6", "encoder", 64), ("fc7", "encoder", 96),
                                                         ("conv5", "encoder", 96), ("fc6", "encoder+generator", 64)])
def test_bench_inference_flops_of_the_alexnet_views_equal_a_hand_count(layer: str, features: str, size: int) -> None:
    """`zsk bench`'s inference closure (the linear-probe forward of a batch, demo AlexNet-half widths) counts the
    three view encoders (L: 1 channel, ab: 2, whole Lab image: 3) up to the probed layer, the linear probe on
    their concatenated activations, and with `encoder+generator` a second full encoder pass to the fc8 embeddings
    plus each view's meta generator fc1, fc2 (2 x MACs of every Conv2d and Linear; biases, BatchNorm, ReLU,
    max-pools, L2 normalisation count 0, as in torch's counter). conv5 probes pool each view to 6 x 6 (no FLOPs)."""
    cfg = _cfg([f"eval.layer={layer}", f"eval.features={features}", f"data.image_size={size}"])
    torch.manual_seed(0)
    spec = bench_spec(cfg, torch.device("cpu"), None)
    m = cfg.model
    batch = cfg.train.batch_size
    classes = 4  # the sample set's classes (data.root=@sample)
    assert m.backbone == "alexnet" and batch == 16 and spec.infer_samples == batch

    def views(upto: int) -> int:
        return sum(_alexnet_half_flops(cin, m.channels, m.fc_dim, m.feat_dim, size, upto) for cin in (1, 2, 3))

    per_image = views(LAYER_INDEX[layer])
    probe_in = 3 * (m.channels[4] * 36 if layer == "conv5" else m.fc_dim)
    if features == "encoder+generator":
        per_image += views(8)  # embeddings recomputed by a separate pass
        h = m.generator_hidden
        per_image += 3 * (2 * m.feat_dim * h + 2 * h * h)  # generators to layer 2 (fc1, fc2)
        probe_in += 3 * h
    per_image += 2 * probe_in * classes
    assert count_flops(spec.infer_step) == batch * per_image


def test_bench_inference_flops_of_resnet_views_equal_a_hand_count() -> None:
    """The ResNet-18 view encoders (CMC-style, `eval.layer=pool`) with a batch of 2 at 64 x 64: the trunk's
    convolutions are read off forward hooks on every nn.Conv2d (2 * N * C_out * C_in/groups * k_h * k_w * H_out *
    W_out from the module's weight and output shapes), plus the probe Linear (3 * 512 -> classes) by formula; the
    unused fc embedding layer is not run. Norms, pools, residual adds count 0."""
    cfg = _cfg(["model.backbone=resnet18", "eval.layer=pool", "data.image_size=64"])
    torch.manual_seed(0)
    spec = bench_spec(cfg, torch.device("cpu"), 2)
    convs: list[int] = []

    def hook(mod: nn.Module, args: tuple, out: torch.Tensor) -> None:
        assert isinstance(mod, nn.Conv2d)
        c_out, c_in_per_group, kh, kw = mod.weight.shape
        convs.append(2 * out.shape[0] * c_out * c_in_per_group * kh * kw * out.shape[2] * out.shape[3])

    handles = [mod.register_forward_hook(hook) for mod in spec.model.encoder.modules() if isinstance(mod, nn.Conv2d)]
    try:
        spec.infer_step()
    finally:
        for h in handles:
            h.remove()
    assert len(convs) == 3 * 20  # ResNet-18: stem + 16 block convs + 3 downsample 1x1 convs, per view
    hand = sum(convs) + 2 * 2 * (3 * 512) * 4
    assert count_flops(spec.infer_step) == hand
