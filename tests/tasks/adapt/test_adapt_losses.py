"""STAL's loss terms against independent implementations written here (NumPy loops over pixels)."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from zsk.tasks.adapt.config import ConsConfig, ContraConfig
from zsk.tasks.adapt.losses import (
    MemoryBank,
    class_sampling_mask,
    consistency_loss,
    contrastive_loss,
    entropy_mask,
    label_onehot,
    ohem_cross_entropy,
    percentile,
)


def _ohem_reference(logits: np.ndarray, target: np.ndarray, thresh: float, min_kept: int) -> float:
    """OHEM by hand: true-class probabilities of the valid pixels, threshold max(thresh, k-th smallest)."""
    b, c, h, w = logits.shape
    p = np.exp(logits - logits.max(1, keepdims=True))
    p /= p.sum(1, keepdims=True)
    t = target.reshape(-1)
    probs = p.transpose(1, 0, 2, 3).reshape(c, -1)
    valid = t != 255
    keep = valid.copy()
    if 0 < valid.sum() and min_kept <= valid.sum():
        true_p = np.array([probs[t[i], i] if valid[i] else 1.0 for i in range(t.size)])
        kth = np.sort(true_p)[min(true_p.size, min_kept) - 1]
        keep = valid & (true_p <= max(thresh, kth))
    logp = np.log(probs)
    losses = [-logp[t[i], i] for i in range(t.size) if keep[i]]
    return float(np.mean(losses))


@pytest.mark.parametrize("min_kept", [5, 40, 1000])
def test_ohem_matches_a_pixel_loop(min_kept: int) -> None:
    g = torch.Generator().manual_seed(0)
    logits = torch.randn(2, 4, 5, 6, generator=g) * 2
    target = torch.randint(0, 4, (2, 5, 6), generator=g)
    target[0, 0, :3] = 255
    ours = float(ohem_cross_entropy(logits, target, 0.7, min_kept))
    assert ours == pytest.approx(_ohem_reference(logits.numpy(), target.numpy(), 0.7, min_kept), rel=1e-5)


def test_consistency_is_the_normalised_confidence_weighted_ce() -> None:
    g = torch.Generator().manual_seed(1)
    student = torch.randn(1, 3, 4, 4, generator=g)
    conf = torch.rand(1, 4, 4, generator=g)
    pseudo = torch.randint(0, 3, (1, 4, 4), generator=g)
    pseudo[0, 0, 0] = 255
    cfg = ConsConfig(gamma=2.0, sample=False)
    logp = F.log_softmax(student, 1).numpy()
    w, ce = [], []
    for y in range(4):
        for x in range(4):
            w.append(conf[0, y, x].item() ** 2)
            ce.append(0.0 if pseudo[0, y, x] == 255 else -logp[0, pseudo[0, y, x], y, x])
    expected = sum(wi * ci for wi, ci in zip(w, ce, strict=True)) / sum(w)
    assert float(consistency_loss(student, conf, pseudo, cfg)) == pytest.approx(expected, rel=1e-5)


def test_class_sampling_keeps_each_class_at_its_rate() -> None:
    conf = torch.tensor([0.9, 0.5, 0.0])  # rates (1 - conf) / max: 0.1, 0.5, 1.0
    pred = torch.tensor([0, 1, 2]).repeat_interleave(20000).view(1, 300, 200)
    keep = torch.zeros(3)
    g = torch.Generator().manual_seed(0)
    mask = class_sampling_mask(pred, conf, g)
    for c in range(3):
        keep[c] = mask[pred == c].mean()
    assert keep.tolist() == pytest.approx([0.1, 0.5, 1.0], abs=0.01)


def test_entropy_mask_signs() -> None:
    ent = torch.arange(100, dtype=torch.float32).view(1, 10, 10)
    cfg = ConsConfig(low_entropy_threshold=20.0)
    # epoch 0: q = 20; U2PL drops the 20% most uncertain, the official code the 20% most confident
    drop_uncertain = entropy_mask(ent, 0, 200, cfg)
    official = entropy_mask(ent, 0, 200, ConsConfig(low_entropy_threshold=20.0, entropy_mask="official_code"))
    assert drop_uncertain.sum() == 20 and bool(drop_uncertain.view(-1)[-1]) and not bool(drop_uncertain.view(-1)[0])
    assert official.sum() == 20 and bool(official.view(-1)[0]) and not bool(official.view(-1)[-1])
    # q shrinks linearly to 0 at the last epoch
    assert entropy_mask(ent, 100, 200, cfg).sum() == 10
    assert percentile(ent, 37.5) == pytest.approx(float(np.percentile(ent.numpy(), 37.5)))


def test_contrastive_loss_is_infonce_against_prototype_and_bank() -> None:
    """Two classes, one anchor each (num_queries 1 draws it), a bank of one negative each: the loss is the
    mean over classes of -log softmax(cos/t)[0] with the teacher prototype as the positive."""
    torch.manual_seed(0)
    rep = torch.randn(2, 4, 1, 2)  # B=2 (1 labelled, 1 unlabelled), D=4, 1 x 2 pixels
    rep_t = torch.randn(2, 4, 1, 2)
    label_l = torch.tensor([[[0, 1]]])
    pseudo_u = torch.tensor([[[0, 1]]])
    oh_l, oh_u = label_onehot(label_l, 2).long(), label_onehot(pseudo_u, 2).long()
    prob_l = torch.tensor([[[[0.9, 0.2]], [[0.1, 0.8]]]])
    prob_u = torch.tensor([[[[0.1, 0.2]], [[0.9, 0.8]]]])  # unlabelled pixels too unsure for class 0 anchors
    low = torch.stack([torch.ones(1, 1, 2), torch.zeros(1, 1, 2)])
    high = torch.zeros(2, 1, 1, 2)
    bank = MemoryBank(2, 10, 10)
    neg = {0: torch.randn(1, 4), 1: torch.randn(1, 4)}
    for c in (0, 1):
        bank.push(c, neg[c])
    cfg = ContraConfig(num_queries=1, num_negatives=1, temperature=0.5)
    loss = contrastive_loss(rep, oh_l, oh_u, prob_l, prob_u, low, high, cfg, bank, rep_t)
    # by hand: class c's anchor is labelled pixel c (prob > 0.3), prototype the teacher embedding there
    expected = 0.0
    for c in (0, 1):
        a, pos = rep[0, :, 0, c], rep_t[0, :, 0, c]
        sims = torch.stack([F.cosine_similarity(a, pos, 0), F.cosine_similarity(a, neg[c][0], 0)]) / 0.5
        expected += -float(torch.log_softmax(sims, 0)[0])
    assert float(loss) == pytest.approx(expected / 2, rel=1e-5)


def test_memory_bank_keeps_the_newest_keys() -> None:
    bank = MemoryBank(2, size=3, size_first=5)
    bank.push(1, torch.arange(4.0).view(4, 1))
    bank.push(1, torch.tensor([[9.0]]))
    assert bank.queues[1].view(-1).tolist() == [2.0, 3.0, 9.0]
    bank.push(0, torch.arange(4.0).view(4, 1))
    assert len(bank.queues[0]) == 4 and math.isclose(bank.sizes[0], 5)


def test_negatives_official_mask_keeps_the_banks_empty_and_paper_fills_them() -> None:
    """U2PL Eq. 13-16 by hand on 1 labelled + 1 unlabelled image of 1 x 2 pixels, 4 classes, ranks [1, 3):
    labelled pixel 0 (label 0, prediction order 1 > 0 > ...) is a negative of class 1 (not its class, in its
    top 1); unlabelled pixel 1 (high entropy, order 0 > 2 > 3 > 1) is a negative of classes 2 and 3. With the
    official mask (one-hot label x pixel mask) no pixel qualifies (U2PL issue #171)."""
    rep_t = torch.arange(16.0).view(2, 4, 1, 2)  # (B, D, 1, 2): embedding of pixel (b, x) = rep_t[b, :, 0, x]
    label_l = torch.tensor([[[0, 255]]])
    pseudo_u = torch.tensor([[[0, 0]]])
    oh_l, oh_u = label_onehot(label_l, 4).long(), label_onehot(pseudo_u, 4).long()
    prob_l = torch.tensor([0.3, 0.4, 0.2, 0.1]).view(1, 4, 1, 1).expand(1, 4, 1, 2)
    prob_u = torch.tensor([0.4, 0.1, 0.3, 0.2]).view(1, 4, 1, 1).expand(1, 4, 1, 2)
    low = torch.zeros(2, 1, 1, 2)
    high = torch.tensor([[[[1.0, 0.0]]], [[[0.0, 1.0]]]])  # labelled: valid pixels; unlabelled: high entropy
    sizes = {}
    for negatives in ("official_code", "paper"):
        bank = MemoryBank(4, 10, 10)
        cfg = ContraConfig(low_rank=1, high_rank=3, negatives=negatives)
        contrastive_loss(rep_t.clone(), oh_l, oh_u, prob_l, prob_u, low, high, cfg, bank, rep_t)
        sizes[negatives] = [int(q.shape[0]) for q in bank.queues]
        if negatives == "paper":
            assert torch.equal(bank.queues[1], rep_t[0, :, 0, 0][None])
            assert torch.equal(bank.queues[2], rep_t[1, :, 0, 1][None])
            assert torch.equal(bank.queues[3], rep_t[1, :, 0, 1][None])
    assert sizes == {"official_code": [0, 0, 0, 0], "paper": [0, 1, 1, 1]}
