"""Dual-task V-Net shapes and size, the transform layer, the ramp-up and the DTC losses against
independently written formulas."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from zsk.tasks.medseg.losses import (
    LossConfig,
    consistency_weight,
    dice_loss,
    dtc_loss,
    dual_task_consistency,
    sigmoid_rampup,
)
from zsk.tasks.medseg.model import DualTaskVNet, foreground_probabilities, transform_layer


def assert_close(a, b, atol=1e-6, rtol=1e-5):
    """Element-wise closeness via numpy (torch.testing.assert_close imports torch.distributed, slow)."""
    np.testing.assert_allclose(np.asarray(a.detach()), np.asarray(b.detach()), atol=atol, rtol=rtol)

def _expected_params(f: int, heads_out: tuple[int, int]) -> int:
    """Parameter count of the spec's V-Net table, written from the table (conv + bias, BN weight + bias)."""

    def conv_block(n, i, o):
        return (i * o * 27 + o + 2 * o) + (n - 1) * (o * o * 27 + o + 2 * o)

    def updown(i, o):
        return i * o * 8 + o + 2 * o

    enc = (conv_block(1, 1, f) + updown(f, 2 * f) + conv_block(2, 2 * f, 2 * f) + updown(2 * f, 4 * f)
           + conv_block(3, 4 * f, 4 * f) + updown(4 * f, 8 * f) + conv_block(3, 8 * f, 8 * f)
           + updown(8 * f, 16 * f) + conv_block(3, 16 * f, 16 * f))
    dec = (updown(16 * f, 8 * f) + conv_block(3, 8 * f, 8 * f) + updown(8 * f, 4 * f) + conv_block(3, 4 * f, 4 * f)
           + updown(4 * f, 2 * f) + conv_block(2, 2 * f, 2 * f) + updown(2 * f, f) + conv_block(1, f, f))
    heads = sum(f * c + c for c in heads_out)
    return enc + dec + heads


def test_paper_vnet_size():
    model = DualTaskVNet(num_classes=2, n_filters=16)
    n = sum(p.numel() for p in model.parameters())
    assert n == _expected_params(16, (1, 1))
    assert n == 9_448_866  # the V-Net of UA-MT/DTC has 9.44 M parameters


def test_shapes_binary_and_multiclass():
    torch.manual_seed(0)
    x = torch.randn(2, 1, 16, 32, 16)
    lsf, seg = DualTaskVNet(2, n_filters=2).eval()(x)
    assert lsf.shape == (2, 1, 16, 32, 16) and seg.shape == (2, 1, 16, 32, 16)
    assert lsf.abs().max() <= 1.0
    model = DualTaskVNet(4, n_filters=2).eval()
    lsf, seg = model(x)
    assert lsf.shape == (2, 3, 16, 32, 16) and seg.shape == (2, 4, 16, 32, 16)
    fg = foreground_probabilities(seg, 4)
    assert fg.shape == lsf.shape
    assert_close(fg, torch.softmax(seg, 1)[:, 1:])
    assert sum(p.numel() for p in model.parameters()) == _expected_params(2, (3, 4))


def test_dropout_only_in_training():
    torch.manual_seed(0)
    model = DualTaskVNet(2, n_filters=2)
    x = torch.randn(2, 1, 16, 16, 32)
    model.eval()
    a, b = model(x)[1], model(x)[1]
    assert_close(a, b)
    model.train()
    torch.manual_seed(1)
    c = model(x)[1]
    torch.manual_seed(2)
    d = model(x)[1]
    assert not torch.allclose(c, d)


def test_transform_layer_formula():
    phi = torch.tensor([-0.01, -1e-3, 0.0, 1e-3, 0.2])
    expected = torch.tensor([1.0 / (1.0 + math.exp(1500 * v)) for v in phi.tolist()])
    assert_close(transform_layer(phi, 1500.0), expected)
    assert transform_layer(torch.tensor(0.0)).item() == pytest.approx(0.5)
    # inside (negative level set) maps to foreground
    assert transform_layer(torch.tensor(-0.01)).item() > 0.99


def test_rampup_schedule():
    assert sigmoid_rampup(0, 40) == pytest.approx(math.exp(-5))
    assert sigmoid_rampup(20, 40) == pytest.approx(math.exp(-5 * 0.25))
    assert sigmoid_rampup(40, 40) == 1.0 and sigmoid_rampup(400, 40) == 1.0
    assert sigmoid_rampup(3, 0) == 1.0
    cfg = LossConfig()
    # t = floor(iteration / 150): iterations 3000..3149 share t = 20
    assert consistency_weight(3000, cfg) == pytest.approx(math.exp(-1.25))
    assert consistency_weight(3149, cfg) == pytest.approx(math.exp(-1.25))
    assert consistency_weight(3150, cfg) == pytest.approx(math.exp(-5 * (1 - 21 / 40) ** 2))
    assert consistency_weight(6000, LossConfig(dtc_weight=0.1)) == pytest.approx(0.1)


def test_dice_loss_hand_computed():
    p = torch.tensor([1.0, 0.0, 0.5, 0.0]).view(1, 1, 4)
    g = torch.tensor([1.0, 0.0, 1.0, 0.0]).view(1, 1, 4)
    eps = 1e-5
    # Σpg = 1.5, Σp² = 1.25, Σg² = 2
    assert dice_loss(p, g, eps).item() == pytest.approx(1 - (3 + eps) / (3.25 + eps))
    assert dice_loss(g, g).item() == pytest.approx(0.0, abs=1e-6)


def _batch(seed=0, n=4, shape=(4, 4, 4)):
    g = torch.Generator().manual_seed(seed)
    return (torch.rand(n, 1, *shape, generator=g) * 2 - 1, torch.randn(n, 1, *shape, generator=g),
            torch.randint(0, 2, (n, *shape), generator=g), torch.rand(n, 1, *shape, generator=g) * 2 - 1,
            torch.tensor([True, True, False, False]))


def test_dtc_loss_composition():
    lsf, seg, label, sdf, labeled = _batch()
    cfg = LossConfig(beta=0.3, k=1500.0)
    out = dtc_loss(lsf, seg, label, sdf, labeled, 3000, 2, cfg)
    p = torch.sigmoid(seg)
    l_dice = dice_loss(p[:2], (label[:2] == 1)[:, None].float())
    l_lsf = ((lsf[:2] - sdf[:2]) ** 2).mean()
    l_dtc = ((torch.sigmoid(-1500 * lsf) - p) ** 2).mean()  # every sample, labelled or not
    lam = math.exp(-1.25)
    assert out["loss"].item() == pytest.approx((l_dice + 0.3 * l_lsf + lam * l_dtc).item(), rel=1e-5)
    assert out["dtc_weight"].item() == pytest.approx(lam)
    bce = torch.nn.functional.binary_cross_entropy_with_logits(seg[:2, 0], label[:2].float())
    assert out["loss_ce"].item() == pytest.approx(bce.item(), rel=1e-5)  # logged ...
    out_ce = dtc_loss(lsf, seg, label, sdf, labeled, 3000, 2, LossConfig(ce_weight=0.5))
    assert out_ce["loss"].item() == pytest.approx(out["loss"].item() + 0.5 * bce.item(), rel=1e-5)  # ... added on request


def test_unlabelled_samples_only_enter_consistency():
    lsf, seg, label, sdf, labeled = _batch(1)
    cfg = LossConfig()
    base = dtc_loss(lsf, seg, label, sdf, labeled, 6000, 2, cfg)
    label2, sdf2 = label.clone(), sdf.clone()
    label2[2:] = 1 - label2[2:]
    sdf2[2:] = -sdf2[2:]
    same = dtc_loss(lsf, seg, label2, sdf2, labeled, 6000, 2, cfg)
    assert same["loss"].item() == pytest.approx(base["loss"].item())
    lsf2 = lsf.clone()
    lsf2[3] = -lsf2[3]
    changed = dtc_loss(lsf2, seg, label, sdf, labeled, 6000, 2, cfg)
    assert changed["loss_dtc"].item() != pytest.approx(base["loss_dtc"].item())
    assert changed["loss_dice"].item() == pytest.approx(base["loss_dice"].item())


def test_consistency_gradient_reaches_both_heads():
    lsf = (torch.randn(2, 1, 3, 3, 3) * 1e-3).requires_grad_()
    seg = torch.randn(2, 1, 3, 3, 3).requires_grad_()
    dual_task_consistency(lsf, torch.sigmoid(seg), 1500.0).backward()
    assert lsf.grad.abs().sum() > 0 and seg.grad.abs().sum() > 0


def test_multiclass_loss_uses_one_level_set_per_foreground_class():
    g = torch.Generator().manual_seed(0)
    lsf = torch.rand(2, 2, 4, 4, 4, generator=g) * 2 - 1
    seg = torch.randn(2, 3, 4, 4, 4, generator=g)
    label = torch.randint(0, 3, (2, 4, 4, 4), generator=g)
    sdf = torch.rand(2, 2, 4, 4, 4, generator=g)
    out = dtc_loss(lsf, seg, label, sdf, torch.tensor([True, False]), 10**6, 3, LossConfig())
    fg = torch.softmax(seg, 1)[:, 1:]
    onehot = torch.stack([label == 1, label == 2], 1).float()
    inter = (fg[:1] * onehot[:1]).sum((0, 2, 3, 4))
    den = (fg[:1] ** 2).sum((0, 2, 3, 4)) + (onehot[:1] ** 2).sum((0, 2, 3, 4))
    dice = (1 - (2 * inter + 1e-5) / (den + 1e-5)).mean()
    assert out["loss_dice"].item() == pytest.approx(dice.item(), rel=1e-5)
    assert out["loss_ce"].item() == pytest.approx(torch.nn.functional.cross_entropy(seg[:1], label[:1]).item(), rel=1e-5)
