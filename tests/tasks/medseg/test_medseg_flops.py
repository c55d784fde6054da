"""`zsk bench`'s inference FLOPs of medseg (issue 19) against a hand count of the dual-task V-Net."""

from __future__ import annotations

import math

import pytest
import torch

from zsk.core.bench import count_flops
from zsk.core.recipe import load_recipe, parse_config
from zsk.tasks.medseg.config import Config
from zsk.tasks.medseg.hooks import bench_spec


def _windows(length: int, window: int, stride: int) -> int:
    """DTC's test_single_case: an axis shorter than the window is zero-padded to it (one window), else
    ceil((L - W) / stride) + 1 windows, the last clamped to the border."""
    return 1 if length <= window else math.ceil((length - window) / stride) + 1


def _dual_task_vnet_flops(f: int, patch: tuple[int, int, int], num_classes: int) -> int:
    """2 x MACs of one window through the dual-task V-Net with `f` filters and one input channel.

    Conv3d: 2 * C_out * C_in * k^3 * (output voxels); ConvTranspose3d (kernel 2, stride 2): 2 * C_in * C_out * 2^3 *
    (input voxels), i.e. every input voxel scatters into a 2x2x2 block of every output channel.
    """
    v = math.prod(patch)  # voxels at full resolution; level i (0..4) has v / 8**i voxels

    def conv3(cin: int, cout: int, level: int) -> int:  # 3x3x3, padding 1: keeps the size
        return 2 * cout * cin * 27 * v // 8**level

    def down(cin: int, cout: int, level: int) -> int:  # kernel 2 stride 2 from `level` to level + 1
        return 2 * cout * cin * 8 * v // 8 ** (level + 1)

    def up(cin: int, cout: int, level: int) -> int:  # transposed kernel 2 stride 2 from `level` to level - 1
        return 2 * cin * cout * 8 * v // 8**level

    # encoder: stage i (0..4) has width f * 2**i and 1, 2, 3, 3, 3 convolutions
    total = conv3(1, f, 0)
    for level, n_convs in enumerate((2, 3, 3, 3), start=1):
        w = f << level
        total += down(w // 2, w, level - 1) + n_convs * conv3(w, w, level)
    # decoder: up from level 4 to 3, 2, 1, 0 (halving the width), then 3, 3, 2, 1 convolutions
    for level, n_convs in zip((3, 2, 1, 0), (3, 3, 2, 1), strict=True):
        w = f << level
        total += up(2 * w, w, level + 1) + n_convs * conv3(w, w, level)
    # 1x1x1 heads: level set (one channel per foreground class) and segmentation (1 logit when binary)
    seg_out = 1 if num_classes == 2 else num_classes
    total += 2 * v * f * (num_classes - 1) + 2 * v * f * seg_out
    return total


@pytest.mark.parametrize(("num_classes", "volume"), [(2, (40, 30, 20)), (3, (48, 32, 24))])
def test_bench_inference_flops_equal_a_hand_count(num_classes: int, volume: tuple[int, int, int]) -> None:
    """`zsk bench`'s inference closure (sliding-window inference of one volume, the demo's V-Net, 4 filters,
    32x32x16 windows, stride 8) counts windows x the hand count of one window's Conv3d / ConvTranspose3d
    products (2 x MACs; biases, norms, ReLU, tanh, sigmoid/softmax, padding and averaging count 0, as in torch's
    counter). The volumes give 2 x 1 x 2 windows (the short axis padded) and 3 x 1 x 2 windows; the windows go
    through the model one or eight at a time (`eval.window_batch: auto`), which the FLOPs do not depend on."""
    names = ["background"] + [f"c{i}" for i in range(1, num_classes)]
    cfg = parse_config(Config, load_recipe("medseg/demo", [f"data.num_classes={num_classes}",
                                                           f"data.class_names={names}"]))
    torch.manual_seed(0)
    spec = bench_spec(cfg, torch.device("cpu"), None, volume_shape=volume)
    patch = tuple(cfg.data.patch_size)
    assert patch == (32, 32, 16) and cfg.model.n_filters == 4 and tuple(cfg.eval.stride) == (8, 8, 8)
    windows = math.prod(_windows(n, w, s) for n, w, s in zip(volume, patch, cfg.eval.stride, strict=True))
    assert windows == (4 if num_classes == 2 else 6)
    hand = windows * _dual_task_vnet_flops(cfg.model.n_filters, patch, num_classes)
    assert count_flops(spec.infer_step) == hand
