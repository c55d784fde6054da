"""hit@k with pessimistic ties, candidate sets, per-class subsampling, AwA2 per-class top-1."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from zsk.tasks.gzsl.metrics import (
    HitAtK,
    append_bias_input,
    candidate_indices,
    keep_per_class,
    per_class_top1,
    true_class_rank,
)


def test_hit_at_k_with_ties_by_hand() -> None:
    scores = torch.tensor([
        [0.9, 0.5, 0.9, 0.1],  # true 0: ties with 2 -> rank 2 (pessimistic)
        [0.2, 0.8, 0.3, 0.4],  # true 1: rank 1
        [0.5, 0.5, 0.5, 0.5],  # true 3: all tied -> rank 4
        [0.1, 0.2, 0.3, 0.4],  # true 0: rank 4
        [0.4, 0.3, 0.2, 0.1],  # true 2: rank 3
    ])
    labels = torch.tensor([0, 1, 3, 0, 2])
    assert true_class_rank(scores, labels).tolist() == [2, 1, 4, 4, 3]
    m = HitAtK([1, 2, 3, 4])
    m.update(scores[:2], labels[:2])
    m.update(scores[2:], labels[2:])  # batches accumulate: micro average over the 5 images
    assert m.compute() == {"hit@1": pytest.approx(1 / 5), "hit@2": pytest.approx(2 / 5),
                           "hit@3": pytest.approx(3 / 5), "hit@4": pytest.approx(1.0)}


def test_zsl_and_generalized_candidates() -> None:
    seen = [0, 1, 2]
    test = [5, 3, 5, 4]
    assert candidate_indices(test, seen, generalized=False).tolist() == [5, 3, 4]
    assert candidate_indices(test, seen, generalized=True).tolist() == [0, 1, 2, 5, 3, 4]
    # a seen class listed in a test set is masked out in ZSL and listed once in GZSL
    assert candidate_indices([1, 4], seen, generalized=False).tolist() == [4]
    assert candidate_indices([1, 4], seen, generalized=True).tolist() == [0, 1, 2, 4]


def test_generalized_candidates_lower_hits() -> None:
    # one image of unseen class 3; the seen class 0 scores higher: hit@1 in ZSL, miss in GZSL
    pred = torch.eye(4)
    feat = torch.tensor([[0.9, 0.0, 0.0, 0.5]])
    for generalized, hit in ((False, 1.0), (True, 0.0)):
        cand = candidate_indices([3, 2], [0, 1], generalized)
        scores = feat @ pred[torch.from_numpy(cand)].T
        label = torch.tensor([int(np.flatnonzero(cand == 3)[0])])
        m = HitAtK([1])
        m.update(scores, label)
        assert m.compute()["hit@1"] == hit


def test_keep_per_class() -> None:
    labels = np.array([0] * 10 + [1] * 4 + [2])
    keep = keep_per_class(labels, 0.5, seed=3)
    assert np.bincount(labels[keep]).tolist() == [5, 2, 1]  # at least one image per class
    assert np.array_equal(keep, keep_per_class(labels, 0.5, seed=3))
    assert np.array_equal(keep_per_class(labels, 1.0, seed=0), np.arange(15))


def test_per_class_top1_and_bias_input() -> None:
    pred = torch.tensor([0, 0, 1, 1, 1, 2])
    labels = torch.tensor([0, 1, 1, 1, 1, 2])
    # class 0: 1/1, class 1: 3/4, class 2: 1/1 -> mean 11/12 (micro accuracy would be 5/6)
    assert per_class_top1(pred, labels, 3) == pytest.approx(11 / 12)
    f = torch.ones(2, 3)
    assert append_bias_input(f, 4).shape == (2, 4) and append_bias_input(f, 4)[:, -1].tolist() == [1, 1]
    assert append_bias_input(f, 3) is f
