"""LMH, LSH and LSEH against loop implementations written from the spec's formulas."""

from __future__ import annotations

import pytest
import torch

from zsk.tasks.retrieve.losses import (
    LossConfig,
    LsehConfig,
    lmh_loss,
    lseh_loss,
    lsh_loss,
    semantic_margin,
    semantic_scores,
)
from zsk.tasks.retrieve.model import RankingLoss


def loop_loss(s: list[list[float]], margin, hardest: bool, skip=lambda i, j: False) -> float:
    """sum_k [agg_{j != k} (m(k, j) + s[k][j] - s[k][k])_+ + agg_{i != k} (m(i, k) + s[i][k] - s[k][k])_+]."""
    n = len(s)
    m = margin if callable(margin) else (lambda i, j: margin)
    agg = max if hardest else sum
    total = 0.0
    for k in range(n):
        caps = [max(0.0, m(k, j) + s[k][j] - s[k][k]) for j in range(n) if j != k and not skip(k, j)]
        imgs = [max(0.0, m(i, k) + s[i][k] - s[k][k]) for i in range(n) if i != k and not skip(i, k)]
        total += agg(caps, default=0.0) if hardest else sum(caps)
        total += agg(imgs, default=0.0) if hardest else sum(imgs)
    return total


def loop_margin(v: list[list[float]], img: list[int], alpha: float, lam: float, mode: str):
    """M[i, j] = alpha' + lambda * <v_i, v_j> / max_k <v_i, v_k>, 0 for the same picture (row i divided by its own
    maximum, as the official ``torch_cosine_sim`` computes it; an earlier version of this test divided by row j's)."""
    n = len(v)
    dot = lambda a, b: sum(x * y for x, y in zip(a, b, strict=True))  # noqa: E731

    def m(i: int, j: int) -> float:
        if img[i] == img[j]:
            return 0.0
        if mode == "row_max":
            row_max = max(dot(v[i], v[k]) for k in range(n))
            s_hat = dot(v[i], v[j]) / (row_max if row_max != 0 else 1.0)
        else:
            s_hat = dot(v[i], v[j]) / (dot(v[i], v[i]) ** 0.5 * dot(v[j], v[j]) ** 0.5)
        return alpha + lam * s_hat

    return m


def _batch(seed: int, n: int = 7, r: int = 5):
    g = torch.Generator().manual_seed(seed)
    scores = torch.rand(n, n, generator=g) * 2 - 1
    lsa = torch.randn(n, r, generator=g)
    img_ids = torch.tensor([0, 0, 1, 2, 2, 2, 3][:n])  # several captions of one picture in the batch
    return scores, lsa, img_ids


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_lmh_and_lsh_match_loops(seed: int) -> None:
    scores, _, _ = _batch(seed)
    s = scores.tolist()
    assert lmh_loss(scores, 0.2).item() == pytest.approx(loop_loss(s, 0.2, hardest=True), abs=1e-5)
    assert lsh_loss(scores, 0.2).item() == pytest.approx(loop_loss(s, 0.2, hardest=False), abs=1e-5)


@pytest.mark.parametrize("seed", [0, 1, 2])
@pytest.mark.parametrize("normalize", ["row_max", "cosine"])
def test_lseh_matches_loop(seed: int, normalize: str) -> None:
    scores, lsa, img_ids = _batch(seed)
    m = loop_margin(lsa.tolist(), img_ids.tolist(), 0.185, 0.025, normalize)
    want = loop_loss(scores.tolist(), m, hardest=True)
    got = lseh_loss(scores, lsa, img_ids, 0.185, 0.025, normalize, "zero_margin").item()
    assert got == pytest.approx(want, abs=1e-5)
    # "exclude": other captions of the positive picture are not negatives at all
    same = lambda i, j: img_ids[i] == img_ids[j]  # noqa: E731
    want_ex = loop_loss(scores.tolist(), m, hardest=True, skip=same)
    got_ex = lseh_loss(scores, lsa, img_ids, 0.185, 0.025, normalize, "exclude").item()
    assert got_ex == pytest.approx(want_ex, abs=1e-5)
    assert got_ex <= got + 1e-6


def test_semantic_scores_by_hand() -> None:
    v = torch.tensor([[1.0, 0.0], [1.0, 1.0], [0.0, 0.0]])
    # C = V V^T = [[1,1,0],[1,2,0],[0,0,0]]; row maxima 1, 2, 0->1; S_hat[i, j] = C[i, j] / rowmax[i].
    # The official torch_cosine_sim (VSEpp_LSEH/model.py, commit 0cc7468) prints exactly this matrix for v;
    # an earlier version of this test expected its transpose.
    want = torch.tensor([[1.0, 1.0, 0.0], [0.5, 1.0, 0.0], [0.0, 0.0, 0.0]])
    assert torch.allclose(semantic_scores(v, "row_max"), want)
    margin = semantic_margin(v, torch.tensor([0, 1, 1]), 0.185, 0.025)
    want_m = torch.tensor([[0.0, 0.185 + 0.025, 0.185], [0.185 + 0.025 * 0.5, 0.0, 0.0], [0.185, 0.0, 0.0]])
    assert torch.allclose(margin, want_m)


def test_lmh_by_hand() -> None:
    scores = torch.tensor([[0.5, 0.6], [0.1, 0.4]])
    # image 0: (0.2 + 0.6 - 0.5) = 0.3; caption 0: (0.2 + 0.1 - 0.5) -> 0
    # image 1: (0.2 + 0.1 - 0.4) -> 0;   caption 1: (0.2 + 0.6 - 0.4) = 0.4
    assert lmh_loss(scores).item() == pytest.approx(0.7)


def test_margin_range_with_nonnegative_lsa() -> None:
    lsa = torch.rand(16, 8)
    m = semantic_margin(lsa, torch.arange(16), 0.185, 0.025)
    off = m[~torch.eye(16, dtype=torch.bool)]
    assert off.min() >= 0.185 and off.max() <= 0.21 + 1e-6


def test_ranking_loss_dispatch_and_warmup() -> None:
    g = torch.Generator().manual_seed(3)
    img = torch.nn.functional.normalize(torch.randn(6, 4, generator=g), dim=1)
    cap = torch.nn.functional.normalize(torch.randn(6, 4, generator=g), dim=1)
    ids, lsa = torch.arange(6), torch.rand(6, 3, generator=g)
    scores = img @ cap.T
    assert RankingLoss(LossConfig(kind="lmh"))(img, cap, ids).item() == pytest.approx(lmh_loss(scores).item(), abs=1e-6)
    assert RankingLoss(LossConfig(kind="lsh"))(img, cap, ids).item() == pytest.approx(lsh_loss(scores).item(), abs=1e-6)
    lseh = RankingLoss(LossConfig(kind="lseh", lseh=LsehConfig(alpha=0.1, lam=0.3)))
    hard = lseh(img, cap, ids, lsa, epoch=0).item()
    assert hard == pytest.approx(lseh_loss(scores, lsa, ids, 0.1, 0.3).item(), abs=1e-6)
    # warm-up epochs sum over all negatives (VSE infinity), then the hardest
    warm = RankingLoss(LossConfig(kind="lseh", warmup_sum_epochs=1, lseh=LsehConfig(alpha=0.1, lam=0.3)))
    assert warm(img, cap, ids, lsa, epoch=0).item() == pytest.approx(
        lseh_loss(scores, lsa, ids, 0.1, 0.3, hardest=False).item(), abs=1e-6)
    assert warm(img, cap, ids, lsa, epoch=1).item() == pytest.approx(hard, abs=1e-6)
    with pytest.raises(ValueError, match="LSA"):
        lseh(img, cap, ids, None)


def test_losses_backpropagate() -> None:
    scores, lsa, ids = _batch(4)
    scores.requires_grad_(True)
    lseh_loss(scores, lsa, ids).backward()
    assert scores.grad is not None and scores.grad.abs().sum() > 0
