"""Issue 19: the inference FLOPs ``zsk bench`` counts for gzsl (the image path: a torchvision ResNet's pooled
features, then hit@k scoring against the graph network's predicted classifiers of the unseen nodes) equal a
hand count written from the architecture, the crop size and the sample graph's sizes.

Convention (torch's flop counter, which zsk extends): a convolution or matrix product costs 2 x its
multiply-adds (conv: 2·N·C_out·C_in·k·k·H_out·W_out); BatchNorm, ReLU, max/average pooling, the residual
additions, the appended bias input (a concatenation) and the ranking behind hit@k (comparisons) cost 0.

The bench's images are a batch of ``eval.batch_size`` random ``data.crop``² images; the tests shrink both
(32-40 px, 1-2 images) so a ResNet-50 forward takes well under a second on one CPU thread.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from zsk.core.bench import count_flops, count_flops_by_class
from zsk.core.run import load_config
from zsk.tasks.gzsl.config import Config
from zsk.tasks.gzsl.data import write_sample
from zsk.tasks.gzsl.hooks import bench_spec

# torchvision's ResNets: (block kind, blocks per stage); stage widths 64, 128, 256, 512, strides 1, 2, 2, 2
RESNETS = {"resnet18": ("basic", [2, 2, 2, 2]), "resnet34": ("basic", [3, 4, 6, 3]),
           "resnet50": ("bottleneck", [3, 4, 6, 3])}


def out_size(size: int, kernel: int, stride: int, pad: int) -> int:
    return (size + 2 * pad - kernel) // stride + 1


def conv(batch: int, c_in: int, c_out: int, kernel: int, side: int) -> int:
    """A square convolution with a square side x side output, no groups."""
    return 2 * batch * c_out * c_in * kernel * kernel * side * side


def resnet_flops(name: str, batch: int, crop: int) -> tuple[int, int]:
    """(conv FLOPs, pooled feature width) of a torchvision ResNet without its fc layer on crop x crop images.

    Stem: 7x7 stride-2 conv 3 -> 64, then a 3x3 stride-2 max-pool. Basic block (in -> planes, stride s):
    3x3/s in -> planes, 3x3 planes -> planes. Bottleneck (expansion 4): 1x1 in -> planes, 3x3/s planes -> planes,
    1x1 planes -> 4·planes. A 1x1/s projection shortcut where the stride or the width changes."""
    kind, blocks = RESNETS[name]
    expansion = 1 if kind == "basic" else 4
    side = out_size(crop, 7, 2, 3)
    flops = conv(batch, 3, 64, 7, side)
    side = out_size(side, 3, 2, 1)  # max-pool
    c_in = 64
    for planes, n_blocks, first_stride in zip([64, 128, 256, 512], blocks, [1, 2, 2, 2], strict=True):
        for i in range(n_blocks):
            s = first_stride if i == 0 else 1
            out = out_size(side, 3, s, 1)
            if kind == "basic":
                flops += conv(batch, c_in, planes, 3, out) + conv(batch, planes, planes, 3, out)
            else:
                flops += conv(batch, c_in, planes, 1, side)
                flops += conv(batch, planes, planes, 3, out)
                flops += conv(batch, planes, planes * expansion, 1, out)
            if s != 1 or c_in != planes * expansion:
                flops += conv(batch, c_in, planes * expansion, 1, out_size(side, 1, s, 0))
            c_in, side = planes * expansion, out
    return flops, c_in


@pytest.fixture(scope="module")
def sample(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("gzsl-sample")
    write_sample(root)
    return root


@pytest.mark.parametrize(("sets", "batch", "crop"), [
    # the demo recipe's resnet18 (512-d features): its 2049-d [W | b] targets do not match, so the bench
    # scores against random 513-d candidates (512 features + the bias input)
    ([], 2, 32),
    # the paper's resnet50: 2048 features + the bias input against the 2049-d predicted classifiers
    (["model.cnn=resnet50"], 1, 40),
    # GCNZ-style targets without bias: 2048-d features against 2048-d classifiers, no bias input
    (["model.cnn=resnet50", "model.target_bias=false"], 1, 33),
])
def test_bench_image_inference_flops_equal_a_hand_count(sample: Path, sets: list[str], batch: int,
                                                        crop: int) -> None:
    """count_flops(spec.infer_step) of the real bench spec equals the ResNet's convolutions plus the scoring
    product (B, F[+1]) @ (F[+1], C) over the C = nodes - seen unseen candidates: 2·B·(F[+1])·C."""
    cfg, _ = load_config("gzsl", Config, "gzsl/demo", [f"data.root={sample}", f"data.crop={crop}",
                                                       f"data.resize={crop}", f"eval.batch_size={batch}", *sets])
    spec = bench_spec(cfg, torch.device("cpu"), None)
    assert spec.infer_samples == batch
    nodes = len(json.loads((sample / cfg.data.graph).read_text())["wnids"])
    seen = len(json.loads((sample / cfg.data.split).read_text())["train"])
    candidates = nodes - seen
    conv_flops, features = resnet_flops(cfg.model.cnn, batch, crop)
    scored_dim = features + 1 if cfg.model.target_bias else features  # the constant 1 meets the bias column
    matmul_flops = 2 * batch * scored_dim * candidates
    assert count_flops_by_class(spec.infer_step) == {"conv": conv_flops, "matmul": matmul_flops}
    assert count_flops(spec.infer_step) == conv_flops + matmul_flops
