"""Issue 19: ``zsk bench``'s inference FLOPs of Ro-CT-BERT equal a hand count from the recipe's dimensions.

Convention (torch's counter, zsk's ``count_flops``): 2 x the multiply-accumulates of every matrix product
(linear: 2·rows·in·out; attention: Q Kᵀ and A·V at 2·B·L·L·hidden each, the heads splitting the hidden
width); embedding look-ups, elementwise ops, LayerNorm, softmax, GELU, the cosine classifier's
normalisations and the fusion's standardisation count 0.
"""

from __future__ import annotations

import dataclasses

import pytest
import torch

from zsk.core.bench import count_flops
from zsk.core.recipe import load_recipe, parse_config
from zsk.tasks.fakenews.config import Config
from zsk.tasks.fakenews.hooks import bench_spec


def _linear(rows: int, fan_in: int, fan_out: int) -> int:
    return 2 * rows * fan_in * fan_out


def encoder_flops(b: int, length: int, hidden: int, layers: int, ffn: int) -> int:
    """A BERT / RoBERTa encoder on ``b`` sequences of ``length`` tokens: per layer the Q, K, V and output
    projections, Q Kᵀ and A·V over all token pairs (the mask is all ones), the two FFN products."""
    per_layer = (4 * _linear(b * length, hidden, hidden) + 2 * 2 * b * length * length * hidden
                 + _linear(b * length, hidden, ffn) + _linear(b * length, ffn, hidden))
    return layers * per_layer


def demo_cfg() -> Config:
    return parse_config(Config, load_recipe("fakenews/demo"))


@pytest.mark.parametrize("case", ["fusion", "one branch, cosine head", "one branch, pooler, linear head"])
def test_bench_inference_flops_equal_a_hand_count(case: str) -> None:
    """The closure ``zsk bench`` times (one eval batch through the model): with the demo's two branches the
    two encoders' [CLS] features and the fusion MLP (2·48 -> 64 -> 2) and no branch classifier; with one
    branch its encoder and its classifier (the heated softmax's cos(f, w) is a (B, D) x (D, C) product),
    plus the pooler's D x D layer when the branch pools with it."""
    cfg = demo_cfg()
    if case != "fusion":
        ctbert = cfg.model.branches["ctbert"]
        if "pooler" in case:
            ctbert = dataclasses.replace(ctbert, pooling="pooler")
            cfg.model.heated_softmax = "linear"
        cfg.model.branches = {"ctbert": ctbert}
    torch.manual_seed(0)
    b = 4
    spec = bench_spec(cfg, torch.device("cpu"), b)
    length, classes = cfg.data.max_length, len(cfg.data.classes)
    hand = 0
    for branch in cfg.model.branches.values():
        enc = branch.encoder
        hand += encoder_flops(b, length, enc.hidden_size, enc.num_layers, enc.intermediate_size)
    if case == "fusion":
        width = sum(br.encoder.hidden_size for br in cfg.model.branches.values())
        hand += _linear(b, width, cfg.model.fusion_hidden) + _linear(b, cfg.model.fusion_hidden, classes)
    else:
        hidden = cfg.model.branches["ctbert"].encoder.hidden_size
        hand += _linear(b, hidden, classes)  # cosine or linear classifier
        if "pooler" in case:
            hand += _linear(b, hidden, hidden)
    assert spec.infer_samples == b
    assert count_flops(spec.infer_step) == hand
