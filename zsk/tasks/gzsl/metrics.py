"""ImageNet zero-shot evaluation: hit@k with pessimistic ties, ZSL / GZSL candidate sets, AwA2 top-1."""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import torch
from torch import Tensor

from zsk.core import dist


def true_class_rank(scores: Tensor, labels: Tensor) -> Tensor:
    """Rank of each image's true class: the number of candidates scoring >= the true score (ties count
    against the prediction, as in the reference code)."""
    true = scores.gather(1, labels.view(-1, 1))
    return (scores >= true).sum(dim=1)


class HitAtK:
    """Accumulates hit@k counts over batches of (scores over candidates, true candidate index);
    micro-averaged over images and summed across ranks."""

    def __init__(self, ks: Sequence[int] = (1, 2, 5, 10, 20)) -> None:
        self.ks = list(ks)
        self.hits = torch.zeros(len(self.ks), dtype=torch.float64)
        self.count = torch.zeros((), dtype=torch.float64)

    def update(self, scores: Tensor, labels: Tensor) -> None:
        rank = true_class_rank(scores, labels).cpu()
        k = torch.tensor(self.ks).view(-1, 1)
        self.hits += (rank.view(1, -1) <= k).sum(dim=1).double()
        self.count += rank.numel()

    def compute(self) -> dict[str, float]:
        hits = dist.all_reduce_sum(self.hits.clone())
        count = dist.all_reduce_sum(self.count.clone())
        n = max(float(count), 1.0)
        return {f"hit@{k}": float(h) / n for k, h in zip(self.ks, hits.tolist(), strict=True)}


def candidate_indices(test_indices: Sequence[int], seen_indices: Sequence[int], generalized: bool) -> np.ndarray:
    """ZSL: the test set's classes only (seen classes masked out); GZSL ("+1K"): seen classes first, then
    the test classes (a test class that is also seen is listed once)."""
    test = list(dict.fromkeys(int(i) for i in test_indices))
    if not generalized:
        seen = set(int(i) for i in seen_indices)
        return np.asarray([i for i in test if i not in seen], dtype=np.int64)
    seen_list = list(dict.fromkeys(int(i) for i in seen_indices))
    seen_set = set(seen_list)
    return np.asarray(seen_list + [i for i in test if i not in seen_set], dtype=np.int64)


def append_bias_input(features: Tensor, classifier_dim: int) -> Tensor:
    """Append the constant 1 that meets the bias column when classifiers are [W | b]."""
    if features.shape[1] + 1 == classifier_dim:
        return torch.cat([features, features.new_ones(features.shape[0], 1)], dim=1)
    return features


def per_class_top1(pred: Tensor, labels: Tensor, num_classes: int) -> float:
    """Mean over classes of top-1 accuracy (the AwA2 protocol); classes without images are skipped."""
    correct = torch.bincount(labels[pred == labels], minlength=num_classes).double()
    total = torch.bincount(labels, minlength=num_classes).double()
    correct, total = dist.all_reduce_sum(correct), dist.all_reduce_sum(total)
    present = total > 0
    return float((correct[present] / total[present]).mean()) if bool(present.any()) else 0.0


def keep_per_class(labels: np.ndarray, ratio: float, seed: int) -> np.ndarray:
    """Indices of a random ``ratio`` of each class's images (at least one), the reference code's
    ``--keep-ratio``; all indices when ratio >= 1."""
    if ratio >= 1.0:
        return np.arange(len(labels))
    rng = np.random.default_rng(seed)
    keep = []
    for c in np.unique(labels):
        idx = np.flatnonzero(labels == c)
        n = max(1, int(round(len(idx) * ratio)))
        keep.append(np.sort(rng.choice(idx, size=n, replace=False)))
    return np.sort(np.concatenate(keep)) if keep else np.zeros(0, dtype=np.int64)
