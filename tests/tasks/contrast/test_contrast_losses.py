"""MetAug's loss terms against independent loop implementations and hand-worked cases (Li et al., ICML 2022;
jiangmengli/metaug NCE/NCECriterion_MetAug.py::CircleLoss, util.py::margin_injection_loss_calc)."""

from __future__ import annotations

import math

import pytest
import torch

from zsk.tasks.contrast.losses import (
    DIRECTIONS,
    LossWeights,
    contrast_scores,
    margin_bounds,
    margin_injection_loss,
    metaug_objective,
    oucl_loss,
)
from zsk.tasks.contrast.model import MemoryBank


def _scores(b: int = 3, k: int = 5, seed: int = 0) -> list[torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    return [torch.rand(b, k + 1, generator=g, dtype=torch.float64) * 2 - 1 for _ in range(6)]


def _oucl_loops(scores, gamma, dp, dn, adaptive=False, m=0.25):  # noqa: ANN001, ANN202
    total = 0.0
    b = scores[0].shape[0]
    for i in range(b):
        pos = [(float(s[i, 0]) + 1) / 2 for s in scores]
        neg = [(float(v) + 1) / 2 for s in scores for v in s[i, 1:]]
        ap = [max(0.0, 1 + m - p) if adaptive else 1.0 for p in pos]
        an = [max(0.0, n + m) if adaptive else 1.0 for n in neg]
        lse_n = math.log(sum(math.exp(a * gamma * (n - dn)) for a, n in zip(an, neg, strict=True)))
        lse_p = math.log(sum(math.exp(-a * gamma * (p - dp)) for a, p in zip(ap, pos, strict=True)))
        total += math.log1p(math.exp(lse_n + lse_p))
    return total / b / gamma * 16


@pytest.mark.parametrize("gamma,margins,adaptive", [(16.0, False, False), (8.0, True, False), (16.0, True, True)])
def test_oucl_matches_a_loop_implementation(gamma: float, margins: bool, adaptive: bool) -> None:
    s = _scores()
    dp, dn = (0.75, 0.25) if margins else (0.0, 0.0)
    got = float(oucl_loss(s, gamma, margins, 0.25, adaptive, 0.25))
    assert got == pytest.approx(_oucl_loops(s, gamma, dp, dn, adaptive), rel=1e-10)


def test_oucl_prefers_separated_scores() -> None:
    good = [torch.tensor([[1.0, -1.0, -1.0]])] * 6
    bad = [torch.tensor([[-1.0, 1.0, 1.0]])] * 6
    assert float(oucl_loss(good)) < 1e-3 < 10 < float(oucl_loss(bad))


def test_margin_bounds_hand_worked() -> None:
    ref_pos = torch.tensor([[0.9, 0.7], [0.4, 0.6]])
    ref_neg = torch.tensor([[0.2, 0.5], [0.8, 0.1]])
    # anchor 0: s_p^min = 0.7, s_n^max = 0.5; anchor 1: 0.4, 0.8
    lo, hi = margin_bounds(ref_pos, ref_neg, "large")
    assert lo.flatten().tolist() == pytest.approx([0.5, 0.4]) and hi.flatten().tolist() == pytest.approx([0.7, 0.8])
    lo, hi = margin_bounds(ref_pos, ref_neg, "small")
    assert lo.flatten().tolist() == pytest.approx([0.7, 0.8]) and hi.flatten().tolist() == pytest.approx([0.5, 0.4])
    lo, hi = margin_bounds(ref_pos, ref_neg, "mean")
    assert lo.flatten().tolist() == pytest.approx([0.6, 0.6]) == hi.flatten().tolist()


def test_margin_injection_hand_worked() -> None:
    # one anchor, one direction: ref s = [pos 0.6, neg 0.2] -> mapped [0.8, 0.6]; large: M+ = 0.6, M- = 0.8
    ref = [torch.tensor([[0.6, 0.2]])]
    aug = [torch.tensor([[1.0, 0.0]])]  # mapped: pos 1.0, neg 0.5
    got = float(margin_injection_loss(aug, ref, "large", pos_weight=1e-4))
    assert got == pytest.approx((1.0 - 0.6) * 1e-4 + (0.8 - 0.5))


def test_contrast_scores_are_bank_dot_products() -> None:
    g = torch.Generator().manual_seed(1)
    banks = {v: torch.randn(10, 4, generator=g) for v in ("l", "ab", "ori")}
    feats = {v: torch.randn(2, 4, generator=g) for v in ("l", "ab", "ori")}
    idx = torch.randint(0, 10, (2, 3), generator=g)
    out = contrast_scores(banks, feats, idx)
    pairs = {"ab2l": ("ab", "l"), "l2ab": ("l", "ab"), "ori2l": ("ori", "l"), "l2ori": ("l", "ori"),
             "ab2ori": ("ab", "ori"), "ori2ab": ("ori", "ab")}
    for d, s in zip(DIRECTIONS, out, strict=True):
        f, b = pairs[d]
        for i in range(2):
            for j in range(3):
                assert float(s[i, j]) == pytest.approx(float(banks[b][idx[i, j]] @ feats[f][i]), abs=1e-6)


def test_memory_update_is_momentum_then_normalise() -> None:
    torch.manual_seed(0)
    bank = MemoryBank(6, 3, momentum=0.5)
    before = bank.memory_ab.clone()
    f = [torch.nn.functional.normalize(torch.randn(2, 3), dim=1) for _ in range(3)]
    index = torch.tensor([4, 1])
    bank.update(f, index)
    for row, i in enumerate(index.tolist()):
        v = 0.5 * before[i] + 0.5 * f[1][row]
        assert torch.allclose(bank.memory_ab[i], v / v.norm(), atol=1e-6)
    untouched = [i for i in range(6) if i not in (1, 4)]
    assert torch.equal(bank.memory_ab[untouched], before[untouched])


def test_objective_combines_the_terms_with_beta_and_eta() -> None:
    g = torch.Generator().manual_seed(2)
    norm = torch.nn.functional.normalize
    feats = [norm(torch.randn(4, 8, generator=g, dtype=torch.float64), dim=1) for _ in range(3)]
    aug = [norm(torch.randn(4, 8, generator=g, dtype=torch.float64), dim=1) for _ in range(3)]
    banks = {v: norm(torch.randn(20, 8, generator=g, dtype=torch.float64), dim=1) for v in ("l", "ab", "ori")}
    draws = [torch.randint(0, 20, (4, 7), generator=g) for _ in range(5)]
    index = torch.arange(4)

    def draw_fn(i: torch.Tensor, it=iter(range(5))) -> torch.Tensor:  # noqa: ANN001
        d = draws[next(it)].clone()
        d[:, 0] = i
        return d

    w = LossWeights(beta=0.5, eta=2.0)
    out = metaug_objective(feats, aug, banks, index, draw_fn, w, margin=True)
    assert float(out["loss"]) == pytest.approx(float(out["oucl"] + 0.5 * out["oucl_aug"] + 2.0 * out["margin"]))
    # the first term is the original features' OUCL with the first draw
    first = draws[0].clone()
    first[:, 0] = index
    ref = oucl_loss(contrast_scores(banks, dict(zip(("l", "ab", "ori"), feats, strict=True)), first))
    assert float(out["oucl"]) == pytest.approx(float(ref))


def test_topk_correct_hand_worked() -> None:
    from zsk.tasks.contrast.train import topk_correct

    logits = torch.tensor([[0.1, 0.9, 0.0, 0.2, 0.3, 0.4],   # target 1: top-1 hit
                           [0.5, 0.4, 0.3, 0.2, 0.1, 0.0],   # target 4: rank 5 -> top-5 hit only
                           [0.5, 0.4, 0.3, 0.2, 0.1, 0.0]])  # target 5: rank 6 -> miss
    assert topk_correct(logits, torch.tensor([1, 4, 5])) == {1: 1, 5: 2}
    assert topk_correct(logits[:, :2], torch.tensor([0, 1, 0])) == {1: 1, 5: 3}  # k capped at the class count
