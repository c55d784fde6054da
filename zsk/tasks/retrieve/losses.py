"""Triplet ranking losses of the VSE family and LSEH's semantically enhanced hard negatives.

``scores[i, j]`` is the similarity of image ``i`` and caption ``j`` of a batch of matched pairs
(the diagonal holds the positives). All losses are summed over the batch, as in VSE++ / LSEH.

- **L_SH** (VSE0): sum of hinges over all negatives, fixed margin alpha.
- **L_MH** (VSE++): hinge of the hardest negative per query, fixed margin alpha = 0.2.
- **L_LSEH**: hardest negative with a per-pair margin ``M[i, j] = alpha' + lambda * S_hat[i, j]``,
  alpha' = 0.185, lambda = 0.025, where ``S_hat`` compares the LSA vectors of the batch captions.

One implementation serves every base network. The official VSE infinity variant's loss file is broken
(it references an undefined margin class and returns variables that exist only with max_violation on);
it is not reproduced. The official same-image mask is an O(B^2) Python loop; here it is one broadcast
comparison of the batch's image ids.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Literal

import torch
import torch.nn.functional as F
from torch import Tensor

from zsk.core.errors import ZskError


def semantic_scores(lsa: Tensor, normalize: Literal["row_max", "cosine"] = "row_max") -> Tensor:
    """``S_hat`` from the batch captions' LSA vectors ``(B, r)``.

    ``row_max`` (official code, ``torch_cosine_sim`` of VSEpp_LSEH/model.py and VSEinfty_LSEH/lib/loss.py):
    ``C = V V^T`` and ``S_hat[i, j] = <v_i, v_j> / max_k <v_i, v_k>``, each row divided by its own maximum
    (a zero maximum counts as 1). The official ``(c / d).t()`` broadcasts ``d`` over the columns and then
    transposes, which is exactly this row normalisation. ``cosine``: the cosine of the vectors.
    """
    lsa = lsa.float()
    if normalize == "cosine":
        v = F.normalize(lsa, dim=1)
        return v @ v.T
    if normalize != "row_max":
        raise ValueError(f"unknown normalize {normalize!r}; choose row_max or cosine")
    c = lsa @ lsa.T
    row_max = c.amax(dim=1, keepdim=True)
    row_max = torch.where(row_max == 0, torch.ones_like(row_max), row_max)
    return c / row_max


def same_image_mask(img_ids: Tensor) -> Tensor:
    """``mask[i, j]`` true when batch items i and j show the same picture (diagonal included)."""
    return img_ids[:, None] == img_ids[None, :]


def caption_div5_mask(img_ids: Tensor, cap_index: Tensor) -> Tensor:
    """The official code's mask, ``mask[i, j] = img_ids[i] == cap_index[j] // 5`` (every fork, also the
    IAPRTC12 copy). With five captions per image it equals :func:`same_image_mask`; with one caption per
    image (IAPR TC-12, ``img_ids`` = caption index) it zeroes the margin of unrelated pairs whose indices
    satisfy i == j // 5 and is not symmetric (``train.loss.lseh.mask_ids: caption_index_div5``)."""
    return img_ids[:, None] == torch.div(cap_index, 5, rounding_mode="floor")[None, :]


def semantic_margin(
    lsa: Tensor,
    img_ids: Tensor,
    alpha: float = 0.185,
    lam: float = 0.025,
    normalize: Literal["row_max", "cosine"] = "row_max",
    same: Tensor | None = None,
) -> Tensor:
    """LSEH margin matrix ``M = alpha' + lambda * S_hat``, zero on the diagonal and on pairs of the same
    picture (other captions of the positive image), built by broadcasting (no loop over the batch).
    ``same``: the pairs to zero instead of ``same_image_mask(img_ids)`` (e.g. :func:`caption_div5_mask`)."""
    margin = alpha + lam * semantic_scores(lsa, normalize)
    return margin.masked_fill(same_image_mask(img_ids) if same is None else same, 0.0)


def hinge_costs(scores: Tensor, margin: Tensor | float) -> tuple[Tensor, Tensor]:
    """Hinge costs of every negative: ``cost_c[i, j] = (m_ij + s(i, d_j) - s(i, d_i))_+`` (caption
    negatives of image i) and ``cost_i[i, j] = (m_ij + s(i, d_j) - s(j, d_j))_+`` (image negatives of
    caption j), with the positive pairs (diagonal) set to zero."""
    pos = scores.diagonal()
    cost_c = (margin + scores - pos[:, None]).clamp(min=0)
    cost_i = (margin + scores - pos[None, :]).clamp(min=0)
    eye = torch.eye(scores.shape[0], dtype=torch.bool, device=scores.device)
    return cost_c.masked_fill(eye, 0.0), cost_i.masked_fill(eye, 0.0)


def reduce_costs(cost_c: Tensor, cost_i: Tensor, hardest: bool) -> Tensor:
    """Sum over the batch of the hardest negative's cost per query (L_MH) or of all costs (L_SH)."""
    if hardest:
        return cost_c.amax(dim=1).sum() + cost_i.amax(dim=0).sum()
    return cost_c.sum() + cost_i.sum()


def lmh_loss(scores: Tensor, margin: float = 0.2) -> Tensor:
    """L_MH, VSE++ max of hinges (hardest negative per query), margin alpha = 0.2 (Faghri et al. 2018)."""
    return reduce_costs(*hinge_costs(scores, margin), hardest=True)


def lsh_loss(scores: Tensor, margin: float = 0.2) -> Tensor:
    """L_SH, sum of hinges over all negatives (VSE0)."""
    return reduce_costs(*hinge_costs(scores, margin), hardest=False)


def lseh_loss(
    scores: Tensor,
    lsa: Tensor,
    img_ids: Tensor,
    alpha: float = 0.185,
    lam: float = 0.025,
    normalize: Literal["row_max", "cosine"] = "row_max",
    same_image: Literal["zero_margin", "exclude"] = "zero_margin",
    hardest: bool = True,
    same: Tensor | None = None,
) -> Tensor:
    """L_LSEH: hinge with the semantic margin ``M`` (LSEH step 2, Gong & Cosma 2023).

    ``same_image="zero_margin"`` (official code) keeps the other captions of the positive picture as
    negatives with margin 0; ``"exclude"`` removes them from the max. ``same``: the same-picture pairs
    (default ``same_image_mask(img_ids)``).
    """
    if same is None:
        same = same_image_mask(img_ids)
    margin = semantic_margin(lsa, img_ids, alpha, lam, normalize, same)
    cost_c, cost_i = hinge_costs(scores, margin)
    if same_image == "exclude":
        cost_c, cost_i = cost_c.masked_fill(same, 0.0), cost_i.masked_fill(same, 0.0)
    elif same_image != "zero_margin":
        raise ValueError(f"unknown same_image {same_image!r}; choose zero_margin or exclude")
    return reduce_costs(cost_c, cost_i, hardest=hardest)


@dataclass
class LsehConfig:
    """Semantic margin of LSEH: ``M = alpha + lam * S_hat`` (official code: 0.185, 0.025; LSEH step 2)."""

    alpha: float = 0.185
    lam: float = 0.025
    normalize: Literal["row_max", "cosine"] = "row_max"
    same_image: Literal["zero_margin", "exclude"] = "zero_margin"
    # which pairs count as the same picture: ``image`` compares the batch's image ids (right for any number of
    # captions per image); ``caption_index_div5`` is the official code's ``img_ids[i] == ids[j] // 5``, which
    # on IAPR TC-12 (one caption per image) zeroes the margin of unrelated pairs (reproduces the official run)
    mask_ids: Literal["image", "caption_index_div5"] = "image"

    def __post_init__(self) -> None:
        if self.mask_ids not in ("image", "caption_index_div5"):
            raise ZskError(f"train.loss.lseh.mask_ids must be image or caption_index_div5, got {self.mask_ids!r}")
        # LSEH's margin alpha' + lambda * S_hat is a hinge margin: both parts are non-negative (official: 0.185, 0.025)
        for key in ("alpha", "lam"):
            if getattr(self, key) < 0:
                raise ZskError(f"train.loss.lseh.{key} must be >= 0, got {getattr(self, key)}")


@dataclass
class LossConfig:
    """Which ranking loss trains the network.

    ``kind``: ``lmh`` (VSE++ max of hinges), ``lsh`` (sum of hinges), ``lseh`` (semantic hard negatives).
    ``margin`` is the fixed margin of lmh/lsh (0.2). ``warmup_sum_epochs``: during the first N epochs
    lmh and lseh sum over all negatives instead of taking the hardest (vse_infty's
    ``--vse_mean_warmup_epochs``; the LSEH official code takes the hardest from epoch 0, so 0).
    """

    kind: Literal["lmh", "lsh", "lseh"] = "lseh"
    margin: float = 0.2
    warmup_sum_epochs: int = 0
    lseh: LsehConfig = field(default_factory=LsehConfig)

    def __post_init__(self) -> None:
        if self.margin < 0:
            raise ZskError(f"train.loss.margin must be >= 0 (VSE++ uses 0.2), got {self.margin}")
        if self.warmup_sum_epochs < 0:
            raise ZskError(f"train.loss.warmup_sum_epochs must be >= 0, got {self.warmup_sum_epochs}")
