"""MetAug's objectives (Li et al., ICML 2022, Sec. 3): the memory-bank scores of the six directed view pairs, the
optimization-driven unified contrastive loss (OUCL) and the margin-injected regularisation, combined as in
jiangmengli/metaug `train_MetAug.py` (`NCE/NCECriterion_MetAug.py::CircleLoss`, `util.py::margin_injection_loss_calc`).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import Tensor

# the six directed pairs in the official order; "ab2l" scores the ab feature against the L memory bank
DIRECTIONS = ("ab2l", "l2ab", "ori2l", "l2ori", "ab2ori", "ori2ab")
PAIRS = {"ab2l": ("ab", "l"), "l2ab": ("l", "ab"), "ori2l": ("ori", "l"), "l2ori": ("l", "ori"),
         "ab2ori": ("ab", "ori"), "ori2ab": ("ori", "ab")}  # direction -> (feature's view, bank's view)


def contrast_scores(banks: dict[str, Tensor], feats: dict[str, Tensor], idx: Tensor) -> list[Tensor]:
    """Dot products of each feature with the rows `idx` (B, K + 1) of the other view's bank, per direction:
    six (B, K + 1) score matrices, the positive in column 0 (official `NCEAverage.forward`)."""
    b, k1 = idx.shape
    rows = {v: bank.index_select(0, idx.reshape(-1)).detach().view(b, k1, -1) for v, bank in banks.items()}
    return [torch.bmm(rows[bank_view], feats[feat_view].unsqueeze(2)).squeeze(2)
            for feat_view, bank_view in (PAIRS[d] for d in DIRECTIONS)]


def split_pos_neg(scores: Sequence[Tensor]) -> tuple[Tensor, Tensor]:
    """Score matrices -> (positives (B, P), negatives (B, N)) mapped to [0, 1] by s <- (s + 1) / 2."""
    pos = torch.cat([s[:, :1] for s in scores], 1).add(1).div(2)
    neg = torch.cat([s[:, 1:] for s in scores], 1).add(1).div(2)
    return pos, neg


def oucl_loss(scores: Sequence[Tensor], gamma: float = 16.0, margins: bool = False, margin_m: float = 0.25,
              adaptive_weights: bool = False, alpha_m: float = 0.25) -> Tensor:
    """OUCL (the paper's unified contrastive loss, in circle-loss form):
    mean_b softplus(logsumexp_j a_n γ(s_n,j − Δ_n) + logsumexp_i −a_p γ(s_p,i − Δ_p)) · 16 / γ over all
    positives and negatives of the directions in `scores`, scores mapped to [0, 1]; Δ_p = 1 − m, Δ_n = m with
    `margins`, else 0; a_p = [1 + m − s_p]+, a_n = [s_n + m]+ (detached) with `adaptive_weights`, else 1."""
    pos, neg = split_pos_neg(scores)
    delta_p, delta_n = (1 - margin_m, margin_m) if margins else (0.0, 0.0)
    if adaptive_weights:
        ap = (1 - pos.detach() + alpha_m).clamp(0, 1000)
        an = (neg.detach() + alpha_m).clamp(0, 1000)
    else:
        ap = an = 1.0
    logit_p = -ap * (pos - delta_p) * gamma
    logit_n = an * (neg - delta_n) * gamma
    loss = F.softplus(torch.logsumexp(logit_n, 1) + torch.logsumexp(logit_p, 1)).mean()
    return loss / gamma * 16


def margin_bounds(ref_pos: Tensor, ref_neg: Tensor, mode: str) -> tuple[Tensor, Tensor]:
    """(M+, M-) per anchor from the un-augmented scores: with s_p^min and s_n^max, "large" takes
    M+ = min, M- = max of the two; "small" swaps them; "mean" sets both to their mean."""
    pmin = ref_pos.min(1).values
    nmax = ref_neg.max(1).values
    both = torch.stack([pmin, nmax], 1)
    if mode == "large":
        return both.min(1).values[:, None], both.max(1).values[:, None]
    if mode == "small":
        return both.max(1).values[:, None], both.min(1).values[:, None]
    mean = both.mean(1, keepdim=True)
    return mean, mean


def margin_injection_loss(aug_scores: Sequence[Tensor], ref_scores: Sequence[Tensor], mode: str = "large",
                          pos_weight: float = 1e-4) -> Tensor:
    """Margin-injected regularisation L_MI = w · mean([s_p^aug − M+]+) + mean([M- − s_n^aug]+): augmented
    positives may not be easier than M+, augmented negatives not easier than M- (prevents collapse)."""
    ref_pos, ref_neg = split_pos_neg(ref_scores)
    m_pos, m_neg = margin_bounds(ref_pos, ref_neg, mode)
    aug_pos, aug_neg = split_pos_neg(aug_scores)
    return (aug_pos - m_pos).clamp_min(0).mean() * pos_weight + (m_neg - aug_neg).clamp_min(0).mean()


# which directions of the three single-view augmented calls involve the augmented view (the 12 augmented score
# sets of L_MI), and which are un-augmented (official: the margin's reference scores come from these)
AUGMENTED_DIRECTIONS = ((0, 1, 2, 3), (0, 1, 4, 5), (2, 3, 4, 5))
OFFICIAL_REFERENCE = ((2, (0, 1)), (1, (2, 3)), (0, (4, 5)))  # (call among the three, directions)


@dataclass
class LossWeights:
    """The recipe's `train.loss` numbers used by :func:`metaug_objective`."""

    beta: float = 1e-5
    eta: float = 1e-11
    gamma: float = 16.0
    margins: bool = False
    margin_m: float = 0.25
    adaptive_weights: bool = False
    alpha_m: float = 0.25
    margin_mode: str = "large"
    margin_pos_weight: float = 1e-4
    margin_reference: str = "official"


def metaug_objective(feats: Sequence[Tensor], aug: Sequence[Tensor], banks: dict[str, Tensor], index: Tensor,
                     draw: Callable[[Tensor], Tensor], w: LossWeights, margin: bool,
                     after_original: Callable[[], None] | None = None) -> dict[str, Tensor]:
    """The MetAug loss of one batch (train_MetAug.py):
    L = OUCL(original) + β Σ_{v ∈ L, ab, ori, all} OUCL(view v augmented) + η L_MI.

    `feats`/`aug`: (l, ab, ori) embeddings and their generated versions; five score calls (original, L, ab,
    ori, all augmented), each drawing its own negatives with `draw(index)`; `after_original` runs after the
    original call (the official memory update happens there).
    """
    f = dict(zip(("l", "ab", "ori"), feats, strict=True))
    a = dict(zip(("l", "ab", "ori"), aug, strict=True))
    variants = [f, {**f, "l": a["l"]}, {**f, "ab": a["ab"]}, {**f, "ori": a["ori"]}, a]
    calls = []
    for i, variant in enumerate(variants):
        calls.append(contrast_scores(banks, variant, draw(index)))
        if i == 0 and after_original is not None:
            after_original()
    kw = dict(gamma=w.gamma, margins=w.margins, margin_m=w.margin_m, adaptive_weights=w.adaptive_weights,
              alpha_m=w.alpha_m)
    out = {"oucl": oucl_loss(calls[0], **kw)}
    out["oucl_aug"] = sum(oucl_loss(c, **kw) for c in calls[1:])  # type: ignore[assignment]
    loss = out["oucl"] + w.beta * out["oucl_aug"]
    if margin:
        aug_sets = [calls[1 + c][d] for c, dirs in enumerate(AUGMENTED_DIRECTIONS) for d in dirs]
        if w.margin_reference == "official":
            ref = [None] * 6
            for c, dirs in OFFICIAL_REFERENCE:
                for d in dirs:
                    ref[d] = calls[1 + c][d]
        else:
            ref = list(calls[0])
        out["margin"] = margin_injection_loss(aug_sets, ref, w.margin_mode, w.margin_pos_weight)  # type: ignore[arg-type]
        loss = loss + w.eta * out["margin"]
    out["loss"] = loss
    return out
