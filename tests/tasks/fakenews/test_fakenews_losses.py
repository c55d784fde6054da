"""Heated-up softmax, its schedule, and FGM against independently written formulas."""

from __future__ import annotations

import math

import pytest
import torch
from torch import nn

from zsk.tasks.fakenews.adversarial import fgm_loss, fgm_perturbation, perturbed_embedding
from zsk.tasks.fakenews.losses import heated_alpha, heated_softmax, heated_softmax_cross_entropy


def test_heated_softmax_by_hand():
    z = torch.tensor([[1.0, 0.0], [0.5, 2.0]])
    y = torch.tensor([0, 0])
    alpha = 4.0
    # sample 1: p(0) = e^4 / (e^4 + e^0); sample 2: p(0) = e^2 / (e^2 + e^8)
    p1 = math.exp(4) / (math.exp(4) + 1.0)
    p2 = math.exp(2) / (math.exp(2) + math.exp(8))
    assert heated_softmax(z, alpha)[0, 0].item() == pytest.approx(p1, rel=1e-6)
    assert heated_softmax(z, alpha)[1, 0].item() == pytest.approx(p2, rel=1e-6)
    expected = -(math.log(p1) + math.log(p2)) / 2
    assert heated_softmax_cross_entropy(z, y, alpha).item() == pytest.approx(expected, rel=1e-6)
    # alpha = 1 is the ordinary cross-entropy
    assert heated_softmax_cross_entropy(z, y, 1.0).item() == pytest.approx(
        torch.nn.functional.cross_entropy(z, y).item(), rel=1e-6)


def test_heated_softmax_sharpens_and_heats():
    z = torch.tensor([[0.3, -0.2]])
    y = torch.tensor([0])
    easy4 = heated_softmax_cross_entropy(z, y, 4.0).item()
    easy05 = heated_softmax_cross_entropy(z, y, 0.5).item()
    assert easy4 < easy05  # a correct sample costs less when sharpened, more when heated up


def test_paper_schedule():
    alphas, milestones = [4.0, 1.0, 0.5], [10, 20]
    got = [heated_alpha(e, alphas, milestones) for e in range(30)]
    assert got == [4.0] * 10 + [1.0] * 10 + [0.5] * 10  # epochs 1-10, 11-20, 21-30 of the paper
    assert heated_alpha(45, alphas, milestones) == 0.5
    with pytest.raises(ValueError, match="need 2 milestones"):
        heated_alpha(0, alphas, [10])


class Tiny(nn.Module):
    """Embedding -> mean -> linear: small enough to write FGM's two passes out by hand."""

    def __init__(self) -> None:
        super().__init__()
        torch.manual_seed(0)
        self.emb = nn.Embedding(7, 4)
        self.lin = nn.Linear(4, 2)

    def forward(self, ids: torch.Tensor) -> torch.Tensor:
        return self.lin(torch.tanh(self.emb(ids)).mean(1))


def test_fgm_perturbation_norm_and_zero():
    g = torch.tensor([[3.0, 4.0], [0.0, 0.0]])
    r = fgm_perturbation(g, 0.5)
    assert torch.allclose(r, g * 0.5 / 5.0)
    assert torch.linalg.vector_norm(r).item() == pytest.approx(0.5)
    assert torch.equal(fgm_perturbation(torch.zeros(2, 2), 1.0), torch.zeros(2, 2))


def test_fgm_gradient_is_sum_of_clean_and_adversarial_passes():
    model = Tiny()
    ids = torch.tensor([[1, 2, 3], [3, 4, 4]])
    y = torch.tensor([0, 1])
    eps = 0.7
    E0 = model.emb.weight.detach().clone()
    W0 = model.lin.weight.detach().clone()

    def loss_fn(m: nn.Module) -> torch.Tensor:
        return nn.functional.cross_entropy(m(ids), y)

    total, clean, adv = fgm_loss(model, model.emb, loss_fn, eps)
    total.backward()
    got = {n: p.grad.clone() for n, p in model.named_parameters()}

    # the embedding matrix and every other weight are unchanged (nothing to restore)
    assert torch.equal(model.emb.weight, E0) and torch.equal(model.lin.weight, W0)
    assert not model.emb._forward_hooks  # the perturbation hook is removed

    # reference: clean pass, r = eps g/||g||, then a second model whose embedding IS E + r
    ref = Tiny()
    ref.load_state_dict(model.state_dict())
    l1 = loss_fn(ref)
    g1 = torch.autograd.grad(l1, list(ref.parameters()))
    g_emb = g1[0]
    r = eps * g_emb / g_emb.norm()
    adv_model = Tiny()
    adv_model.load_state_dict(model.state_dict())
    with torch.no_grad():
        adv_model.emb.weight.add_(r)
    l2 = loss_fn(adv_model)
    g2 = torch.autograd.grad(l2, list(adv_model.parameters()))
    for (name, _), a, b in zip(ref.named_parameters(), g1, g2, strict=True):
        assert torch.allclose(got[name], a + b, atol=1e-6), name
    assert clean.item() == pytest.approx(l1.item(), rel=1e-6)
    assert adv.item() == pytest.approx(l2.item(), rel=1e-6)
    assert total.item() == pytest.approx(l1.item() + l2.item(), rel=1e-6)
    assert adv.item() > clean.item()  # the perturbation goes uphill


def test_perturbed_embedding_changes_only_inside_the_block():
    emb = nn.Embedding(5, 3)
    ids = torch.tensor([[0, 4]])
    r = torch.zeros(5, 3)
    r[4] = 1.0
    before = emb(ids).detach().clone()
    with perturbed_embedding(emb, r):
        inside = emb(ids).detach().clone()
    after = emb(ids).detach()
    assert torch.equal(before, after)
    assert torch.equal(inside[0, 0], before[0, 0])
    assert torch.allclose(inside[0, 1], before[0, 1] + 1.0)
