"""ACP / ACM / class confidence (AEL) and STAL's active-learning selection on hand-worked cases."""

from __future__ import annotations

import math
from collections import Counter

import numpy as np
import pytest
import torch

from zsk.tasks.adapt.data import Sample
from zsk.tasks.adapt.mixing import (
    category_confidence,
    copy_paste,
    cutmix_box,
    query_classes,
    sample_from_bank,
    update_bank,
)
from zsk.tasks.adapt.selection import (
    CITYSCAPES_TRAIN_CITIES,
    city_quotas,
    initial_selection,
    pixel_entropy,
    ripu_score,
    select_by_city,
)


def test_copy_paste_pastes_only_the_query_classes() -> None:
    img = torch.zeros(2, 3, 2, 2)
    lab = torch.zeros(2, 2, 2, dtype=torch.long)
    pimg = torch.ones(2, 3, 2, 2)
    plab = torch.tensor([[[5, 6], [7, 5]], [[0, 0], [0, 0]]])  # the second image has no partner (all 0)
    out_img, out_lab = copy_paste(img, lab, pimg, plab, [5, 7])
    assert out_lab[0].tolist() == [[5, 0], [7, 5]]
    assert out_img[0, 0].tolist() == [[1, 0], [1, 1]]
    assert out_lab[1].eq(0).all() and out_img[1].eq(0).all()


def test_category_confidence_is_the_mean_true_class_probability() -> None:
    logits = torch.log(torch.tensor([[[[0.7, 0.2]], [[0.3, 0.8]]]]))  # (1, 2 classes, 1, 2)
    labels = torch.tensor([[[0, 0]]])
    conf = category_confidence(logits, labels, 3)
    assert conf.tolist() == pytest.approx([(0.7 + 0.2) / 2, 0.0, 0.0])


def test_query_classes_skip_the_ignored_ones_and_prefer_unsure_classes() -> None:
    conf = torch.tensor([0.0, 0.99, 0.0, 0.99])
    rng = np.random.default_rng(0)
    draws = Counter(c for _ in range(400) for c in query_classes(conf, 1, [0], rng))
    assert set(draws) <= {1, 2, 3} and draws[2] > draws[1]
    # softmax(sqrt(1 - conf)) over classes 1..3: p2 = e / (e + 2 e^0.1)
    p2 = math.e / (math.e + 2 * math.exp(0.1))
    assert draws[2] / 400 == pytest.approx(p2, abs=0.07)


def test_cutmix_box_is_a_region_bounding_box_or_half_the_image() -> None:
    pred = np.zeros((20, 20), dtype=np.int64)
    pred[2:5, 3:9] = 4  # 18 px > 0.005 * 400
    assert cutmix_box(pred, 4, 0.005, np.random.default_rng(0)) == (2, 3, 5, 9)
    y0, x0, y1, x1 = cutmix_box(pred, 7, 0.005, np.random.default_rng(0))  # class absent: a random half-area box
    assert (y1 - y0) * (x1 - x0) == pytest.approx(200, rel=0.15)


def test_cutmix_bank_membership_and_sampling() -> None:
    bank = torch.zeros(3, 4, dtype=torch.uint8)
    logits = torch.zeros(2, 3, 10, 10)
    logits[0, 1] = 5.0
    logits[1, 2, :1, :] = 5.0  # 10 px of class 2 = 10% of 10 x 10
    update_bank(bank, logits, [0, 3], area_thresh=0.05)
    assert bank[:, 0].tolist() == [0, 1, 0] and bank[:, 3].tolist() == [1, 0, 1]
    idx, cat = sample_from_bank(bank, torch.tensor([1.0, 1.0, 0.0]), np.random.default_rng(0))
    assert cat in (0, 1, 2) and (bank[cat, idx] == 1 or not bank[cat].any())


def test_city_quotas_follow_the_official_rule() -> None:
    """img_select_based_entropy.py: round(K (n - n_labelled) / 2975) per city, zurich absorbs the rest."""
    labeled = Counter({"aachen": 2, "bremen": 3, "strasbourg": 4, "zurich": 1})
    q = city_quotas(35, dict(CITYSCAPES_TRAIN_CITIES), labeled)
    total = sum(CITYSCAPES_TRAIN_CITIES.values())
    assert total == 2975 and sum(q.values()) == 35
    for city, n in CITYSCAPES_TRAIN_CITIES.items():
        if city != "zurich":
            assert q[city] == round(35 * (n - labeled[city]) / 2975)
    assert q["strasbourg"] == 4 and q["darmstadt"] == 1


def _samples(cities: dict[str, int]) -> list[Sample]:
    return [Sample(None, None, "cityscapes", f"leftImg8bit/train/{c}/{c}_{i:06d}_000019_leftImg8bit.png", c)  # type: ignore[arg-type]
            for c, n in cities.items() for i in range(n)]


def test_select_takes_the_most_uncertain_per_city_and_skips_labelled() -> None:
    samples = _samples({"aachen": 10, "zurich": 10})
    scores = {s.rel: float(i % 10) for i, s in enumerate(samples)}
    labeled = [samples[9].rel]  # aachen's most uncertain is already labelled
    new = select_by_city(scores, samples, labeled, 4, list(CITYSCAPES_TRAIN_CITIES))
    # quotas: aachen round(4 * 9 / 20) = 2, zurich the remaining 2
    assert new == [samples[8].rel, samples[7].rel, samples[19].rel, samples[18].rel]
    first = initial_selection(samples, 6, seed=3)
    assert len(set(first)) == 6 and first == initial_selection(samples, 6, seed=3)


def test_pixel_entropy_and_ripu_score() -> None:
    uniform = torch.zeros(1, 19, 3, 3)
    assert pixel_entropy(uniform).flatten().tolist() == pytest.approx([1.0] * 9, abs=1e-5)
    confident = torch.full((1, 4, 5, 5), -20.0)
    confident[:, 0] = 20.0
    assert pixel_entropy(confident).max() < 1e-5
    # a region with one predicted class has impurity 0; a 2-class checkerboard has ln2/ln4 = 0.5
    logits = torch.zeros(1, 4, 5, 5)
    logits[0, 0] = 1.0
    assert ripu_score(logits).abs().max() < 1e-6
    board = torch.zeros(1, 4, 4, 4)
    board[0, 0, ::2, ::2] = board[0, 0, 1::2, 1::2] = 1.0
    board[0, 1] = 1.0 - board[0, 0]
    score = ripu_score(board, radius=1)
    ent = float(pixel_entropy(board)[0, 1, 1])
    impurity = -(4 / 9 * math.log(4 / 9) + 5 / 9 * math.log(5 / 9)) / math.log(4)
    assert float(score[0, 1, 1]) == pytest.approx(impurity * ent, rel=1e-3)


def test_ripu_region_annotation_is_greedy_with_suppression() -> None:
    from zsk.tasks.adapt.selection import ripu_region_mask

    score = torch.zeros(10, 10)
    score[2, 2], score[3, 4], score[7, 7] = 5.0, 4.0, 3.0  # (3, 4) lies in the (4k+1)^2 window of (2, 2)
    mask = ripu_region_mask(score, 18, radius=1)
    expected = torch.zeros(10, 10, dtype=torch.bool)
    expected[1:4, 1:4] = True  # first region around the maximum
    expected[6:9, 6:9] = True  # (3, 4) is suppressed, so the next region is around (7, 7)
    assert torch.equal(mask, expected)
    again = ripu_region_mask(score, 9, radius=1, annotated=mask)  # earlier regions are kept and never re-picked
    assert again[mask].all() and int(again.sum()) - int(mask.sum()) >= 6
