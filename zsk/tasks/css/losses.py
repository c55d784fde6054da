"""The losses of an incremental SATS step: self-attention transfer (L_SATS), MiB's unbiased knowledge
distillation, and PLOP's entropy pseudo-labels with per-class median thresholds.

- Qiu et al., "SATS: Self-Attention Transfer for Continual Semantic Segmentation", Pattern Recognition 2023,
  Sec. 3.3 (QIU023/SATS_Continual_Semantic_Seg ``train.py``, ``distill_object='sats-selfattn'``).
- Cermelli et al., "Modeling the Background for Incremental Learning in Semantic Segmentation", CVPR 2020,
  eq. 5 (fcdl94/MiB ``utils/loss.py`` ``UnbiasedKnowledgeDistillationLoss``).
- Douillard et al., "PLOP: Learning without Forgetting for Continual Semantic Segmentation", CVPR 2021,
  Sec. 3.2 (arthurdouillard/CVPR2021_PLOP ``train.py`` ``get_pseudo_labels``, ``find_median``, ``entropy``).
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import Tensor

IGNORE = 255


# ----------------------------------------------------------------------------- L_SATS
def stage_grids(h: int, w: int, num_stages: int = 4) -> list[tuple[int, int]]:
    """Token grid of every MiT stage for an (h, w) input: a 7x7/4 patch embedding then 3x3/2 ones.
    At 512 x 512 this is 128, 64, 32, 16, the sizes the official code hard-codes."""
    grids = []
    h, w = (h + 2 * 3 - 7) // 4 + 1, (w + 2 * 3 - 7) // 4 + 1
    grids.append((h, w))
    for _ in range(num_stages - 1):
        h, w = (h + 2 - 3) // 2 + 1, (w + 2 - 3) // 2 + 1
        grids.append((h, w))
    return grids


def resize_labels(labels: Tensor, size: tuple[int, int]) -> Tensor:
    """Nearest-neighbour resize of a label batch [B, H, W], pixel centres as PIL's NEAREST (the official
    code resizes through ``torchvision.transforms.functional.resize`` on PIL images)."""
    return F.interpolate(labels[:, None].float(), size=size, mode="nearest-exact")[:, 0].long()


def _rows(attn: Tensor, layout: str) -> Tensor:
    """[B, h, N, M] -> [B, N, h, M]: a permute (``per_head``) or the official plain reshape (``official_code``)."""
    b, h, n, m = attn.shape
    return attn.permute(0, 2, 1, 3) if layout == "per_head" else attn.reshape(b, n, h, m)


def sats_stage_loss(attn: Tensor, attn_old: Tensor, labels: Tensor, pooling: str = "class",
                    layout: str = "per_head") -> Tensor:
    """L_SATS of one stage, averaged over the batch.

    ``class``: for each class c in the resized label map (0 and 255 skipped), average the attention rows of
    its query positions into P_c^h (new model) and P^_c^h (old); image loss = 1/|C_b| sum_c 1/h sum_h
    ||P_c^h - P^_c^h||_2, 0 for an image without a class (it still counts in the batch mean).
    ``global``: one average over all positions (GP ablation). ``none``: per position (NP ablation).
    ``labels`` are [B, H_s, W_s] at the stage's grid.
    """
    b, heads, n, _ = attn.shape
    new, old = _rows(attn, layout), _rows(attn_old, layout)  # [B, N, h, M]
    if pooling == "global":
        return (new.mean(1) - old.mean(1)).norm(dim=-1).mean(-1).mean()
    if pooling == "none":
        return (new - old).norm(dim=-1).mean(1).mean(-1).mean()
    lab = labels.reshape(b, n)
    valid = (lab != 0) & (lab != IGNORE)
    k = int(lab[valid].max().item()) + 1 if valid.any() else 1
    onehot = F.one_hot(torch.where(valid, lab, 0), k).to(new.dtype) * valid[..., None].to(new.dtype)  # [B, N, K]
    counts = onehot.sum(1)  # [B, K]
    pooled_new = torch.einsum("bnk,bnhm->bkhm", onehot, new) / counts.clamp(min=1)[..., None, None]
    pooled_old = torch.einsum("bnk,bnhm->bkhm", onehot, old) / counts.clamp(min=1)[..., None, None]
    per_class = (pooled_new - pooled_old).norm(dim=-1).mean(-1)  # [B, K]: 1/h sum_h ||.||
    present = (counts > 0).to(new.dtype)
    per_image = (per_class * present).sum(1) / present.sum(1).clamp(min=1)
    return per_image.mean()


def sats_loss(attns: Sequence[Tensor], attns_old: Sequence[Tensor], labels: Tensor, pooling: str = "class",
              layout: str = "per_head") -> Tensor:
    """L_SATS (paper eq. 6-8): :func:`sats_stage_loss` summed over the stages and divided by their number,
    the label map resized to each stage's grid (derived from the input size)."""
    grids = stage_grids(labels.shape[-2], labels.shape[-1], len(attns))
    total = attns[0].new_zeros(())
    for attn, attn_old, grid in zip(attns, attns_old, grids, strict=True):
        if attn.shape[2] != grid[0] * grid[1]:
            raise ValueError(f"attention map with {attn.shape[2]} queries does not match the {grid} token grid")
        total = total + sats_stage_loss(attn, attn_old, resize_labels(labels, grid), pooling, layout)
    return total / len(attns)


def sats_feature_loss(feats: Sequence[Tensor], feats_old: Sequence[Tensor], labels: Tensor) -> Tensor:
    """The "class pooling on feature maps" ablation (official ``sats-feature-CNN``): per stage, the mean
    feature vector of each class of the resized label map, L2 distance to the old model's, averaged over
    classes (images without a class give 0) and the batch; the stages averaged."""
    total = feats[0].new_zeros(())
    for f, f_old in zip(feats, feats_old, strict=True):
        b, c, h, w = f.shape
        lab = resize_labels(labels, (h, w)).reshape(b, -1)
        valid = (lab != 0) & (lab != IGNORE)
        k = int(lab[valid].max().item()) + 1 if valid.any() else 1
        onehot = F.one_hot(torch.where(valid, lab, 0), k).to(f.dtype) * valid[..., None].to(f.dtype)  # [B, N, K]
        counts = onehot.sum(1).clamp(min=1)[..., None]
        diff = (torch.einsum("bnk,bcn->bkc", onehot, f.flatten(2)) - torch.einsum("bnk,bcn->bkc", onehot, f_old.flatten(2)))
        per_class = (diff / counts).norm(dim=-1)  # [B, K]
        present = (onehot.sum(1) > 0).to(f.dtype)
        total = total + ((per_class * present).sum(1) / present.sum(1).clamp(min=1)).mean()
    return total / len(feats)


# ----------------------------------------------------------------------------- MiB UNKD
def unbiased_kd(logits: Tensor, old_logits: Tensor, alpha: float = 1.0) -> Tensor:
    """MiB unbiased distillation (eq. 5): the new model's background is logsumexp over background and new
    classes; old classes keep their log-softmax; targets softmax(alpha * old logits); -sum(target x log p)
    divided by the number of old outputs, averaged over pixels."""
    n_old = old_logits.shape[1]
    den = torch.logsumexp(logits, dim=1)
    log_old = logits[:, 1:n_old] - den[:, None]
    bg_idx = torch.tensor([0, *range(n_old, logits.shape[1])], device=logits.device)
    log_bg = torch.logsumexp(logits.index_select(1, bg_idx), dim=1) - den
    target = torch.softmax(old_logits * alpha, dim=1)
    loss = (target[:, 0] * log_bg + (target[:, 1:] * log_old).sum(1)) / n_old
    return -loss.mean()


# ----------------------------------------------------------------------------- PLOP pseudo-labels
def plop_entropy(probs: Tensor) -> Tensor:
    """PLOP's per-pixel entropy: -(1 / log C) * mean_c p_c log(p_c + 1e-8) over the C channels of ``probs``
    (the official ``entropy``: a mean over classes, not a sum)."""
    factor = 1.0 / math.log(probs.shape[1] + 1e-8)
    return -factor * torch.mean(probs * torch.log(probs + 1e-8), dim=1)


def entropy_norm_value(num_old: int, num_all: int, mode: str = "all_classes") -> float:
    """The max_value PLOP divides the entropy by: log of all classes of the step (official) or of the old ones."""
    return math.log(num_all if mode == "all_classes" else num_old)


def median_thresholds(hist: Tensor, min_threshold: float = 0.001, rule: str = "histogram") -> Tensor:
    """tau_c = max(median of class c's normalised entropies, ``min_threshold``) from a [C, bins] histogram.

    ``histogram``: the median by linear interpolation inside the bin where the cumulative count crosses
    half the total. ``official_code``: PLOP's loop, which adds the bin index instead of the bin's count to
    the running sum. Classes with no pixel keep 0 before the floor; +inf becomes 0.005 and NaN stays (as the
    official ``max(threshold, floor)`` and ``isinf`` steps leave them).
    """
    n_cls, nb = hist.shape
    thr = torch.zeros(n_cls, dtype=torch.float32)
    h = hist.double().cpu()
    for c in range(n_cls):
        total = float(h[c].sum())
        if total <= 0:
            continue
        half = total / 2
        running = 0.0
        b = 0
        for b in range(nb):
            if running <= half <= running + float(h[c, b]):
                break
            running += float(h[c, b]) if rule == "histogram" else float(b)
        count = float(h[c, b])
        if count > 0:
            frac = (half - running) / count
        else:  # the official loop can run past the last bin: x / 0 as torch computes it
            frac = math.inf if half > running else (-math.inf if half < running else math.nan)
        thr[c] = b / nb + frac / nb
    thr = torch.where(torch.isnan(thr), thr, torch.clamp(thr, min=min_threshold))
    thr[torch.isinf(thr)] = 0.005
    return thr


def entropy_histogram(old_logits: Tensor, background: Tensor, max_value: float, num_classes: int,
                      nb_bins: int = 100) -> Tensor:
    """[num_classes, nb_bins] counts of (old prediction, normalised entropy bin) over background pixels."""
    probs = torch.softmax(old_logits.float(), dim=1)
    pred = probs.argmax(1)[background]
    values = plop_entropy(probs)[background] / max_value
    bins = torch.clamp((values * nb_bins).long(), max=nb_bins - 1)
    hist = torch.zeros(num_classes * nb_bins, device=old_logits.device)
    hist.index_add_(0, pred * nb_bins + bins, torch.ones_like(values))
    return hist.reshape(num_classes, nb_bins)


def entropy_pseudo_labels(labels: Tensor, old_logits: Tensor, thresholds: Tensor, max_value: float,
                          num_old: int) -> tuple[Tensor, Tensor, Tensor]:
    """PLOP pseudo-labels: pixels labelled background in the current ground truth (label < num_old) take
    the old model's argmax c* when its normalised entropy is below tau_{c*}, else 255. Returns the new
    labels, the background mask and the mask of accepted pseudo-labels."""
    probs = torch.softmax(old_logits.float(), dim=1)
    pred = probs.argmax(1)
    background = labels < num_old
    valid = (plop_entropy(probs) / max_value) < thresholds.to(probs.device)[pred]
    out = labels.clone()
    out[background & ~valid] = IGNORE
    out[background & valid] = pred[background & valid]
    return out, background, valid


def adaptive_factor(background: Tensor, valid: Tensor, labels: Tensor) -> Tensor:
    """PLOP's classif_adaptive_factor per image: accepted pseudo-labels / (accepted + rejected background
    pixels) (the official code computes it for SATS but never multiplies it in; ``train.adaptive_factor``)."""
    num = (valid & background).float().sum(dim=(1, 2))
    den = background.float().sum(dim=(1, 2))
    return (num / den.clamp(min=1))[:, None, None]
