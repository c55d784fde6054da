"""Retrieval metrics against hand-worked similarity matrices."""

from __future__ import annotations

import pytest
import torch

from zsk.metrics.retrieval import (
    chunked_ranks,
    coco_1k,
    evaluate_embeddings,
    i2t_ranks,
    rank_metrics,
    retrieval_metrics,
    t2i_ranks,
    two_pass_ranks,
)

# 2 images x 10 captions; captions 0-4 belong to image 0, 5-9 to image 1 (the 5-captions-per-image rule)
S = torch.tensor([
    [0.1, 0.9, 0.2, 0.3, 0.4, 0.95, 0.5, 0.6, 0.05, 0.15],
    [0.8, 0.7, 0.6, 0.5, 0.4, 0.3, 0.2, 0.1, 0.0, 0.35],
])


def test_ranks_by_hand() -> None:
    # image 0: its best caption (c1, 0.9) is beaten only by c5 (0.95) -> rank 1
    # image 1: its best caption (c9, 0.35) is beaten by 0.8, 0.7, 0.6, 0.5, 0.4 -> rank 5
    assert i2t_ranks(S, 5).tolist() == [1, 5]
    # each caption against the other image's score (ties do not count as beaten: c4 0.4 vs 0.4)
    assert t2i_ranks(S, 5).tolist() == [1, 0, 1, 1, 0, 1, 1, 1, 1, 0]


def test_metrics_by_hand() -> None:
    m = retrieval_metrics(S, 5)
    assert m["i2t"] == pytest.approx({"r1": 0.0, "r5": 50.0, "r10": 100.0, "medr": 4.0, "meanr": 4.0})
    assert m["t2i"] == pytest.approx({"r1": 30.0, "r5": 100.0, "r10": 100.0, "medr": 2.0, "meanr": 1.7})
    assert m["rsum"] == pytest.approx(380.0)


def test_medr_floors_the_median() -> None:
    # median of 0-based ranks [0, 1, 2, 3] is 1.5 -> floor 1 -> medr 2; meanr = 1.5 + 1
    out = rank_metrics(torch.tensor([3, 0, 2, 1]))
    assert out["medr"] == 2.0 and out["meanr"] == 2.5 and out["r1"] == 25.0


def test_one_caption_per_image_iapr() -> None:
    sims = torch.tensor([[0.9, 0.1, 0.2], [0.95, 0.3, 0.1], [0.0, 0.1, 0.5]])
    assert i2t_ranks(sims, 1).tolist() == [0, 1, 0]
    assert t2i_ranks(sims, 1).tolist() == [1, 0, 0]


def test_caption_count_rule() -> None:
    with pytest.raises(ValueError, match="5 captions per image"):
        i2t_ranks(torch.zeros(3, 14), 5)


def test_chunked_equals_full_matrix() -> None:
    g = torch.Generator().manual_seed(0)
    # small integers: every dot product is exact, so both computations see the same scores and ties
    img = torch.randint(-3, 4, (23, 8), generator=g).float()
    cap = torch.randint(-3, 4, (115, 8), generator=g).float()
    full = img @ cap.T
    r_i, r_t = chunked_ranks(img, cap, 5, chunk=7)
    assert torch.equal(r_i, i2t_ranks(full, 5))
    assert torch.equal(r_t, t2i_ranks(full, 5))
    assert evaluate_embeddings(img, cap, 5, chunk=4) == retrieval_metrics(full, 5)


def test_coco_1k_averages_five_folds() -> None:
    # 10 images in 5 folds of 2; folds 0-3 perfect, in fold 4 the two images' captions are swapped
    img = torch.eye(10)
    owner = list(range(10))
    owner[8], owner[9] = 9, 8
    cap = torch.stack([torch.eye(10)[owner[i]] for i in range(10) for _ in range(5)])
    out = coco_1k(img, cap, 5, folds=5)
    assert len(out["folds"]) == 5
    assert out["folds"][4]["i2t"]["r1"] == 0.0 and out["folds"][0]["i2t"]["r1"] == 100.0
    # fold 4: each image's own captions are beaten by the 5 swapped ones -> rank 5 (not < 5)
    assert out["i2t"]["r1"] == pytest.approx(80.0)
    assert out["i2t"]["r5"] == pytest.approx(80.0)
    assert out["i2t"]["r10"] == pytest.approx(100.0)
    # fold 4: each caption's image is beaten by the other one -> rank 1
    assert out["t2i"]["r1"] == pytest.approx(80.0)
    assert out["t2i"]["r5"] == pytest.approx(100.0)
    assert out["rsum"] == pytest.approx(sum(f["rsum"] for f in out["folds"]) / 5)


def test_coco_1k_needs_equal_folds() -> None:
    with pytest.raises(ValueError, match="folds"):
        coco_1k(torch.eye(7), torch.eye(7).repeat_interleave(5, 0), 5, folds=5)


@pytest.mark.parametrize("cpi,n_img,chunk", [(5, 23, 7), (5, 23, 23), (1, 17, 4), (5, 9, 100)])
def test_one_pass_ranks_equal_two_pass_ranks(cpi, n_img, chunk) -> None:
    """Issue 19: one pass over the similarity tiles gives the ranks of building the matrix once per direction."""
    g = torch.Generator().manual_seed(cpi * 100 + n_img)
    # integers: every score exact in both computations, with many ties (ties never count as beating)
    img = torch.randint(-2, 3, (n_img, 6), generator=g).float()
    cap = torch.randint(-2, 3, (n_img * cpi, 6), generator=g).float()
    one, two = chunked_ranks(img, cap, cpi, chunk), two_pass_ranks(img, cap, cpi, chunk)
    assert torch.equal(one[0], two[0]) and torch.equal(one[1], two[1])
    assert torch.equal(one[0], i2t_ranks(img @ cap.T, cpi)) and torch.equal(one[1], t2i_ranks(img @ cap.T, cpi))
    assert one[0].max() > 0 and one[1].max() > 0  # not all perfect: the counts are exercised
    # float embeddings (cosine): each score is computed once, in the same tiles, for both directions
    img = torch.nn.functional.normalize(torch.randn(n_img, 16, generator=g), dim=1)
    cap = torch.nn.functional.normalize(torch.randn(n_img * cpi, 16, generator=g), dim=1)
    r_i, r_t = chunked_ranks(img, cap, cpi, chunk)
    ref_i, ref_t = two_pass_ranks(img, cap, cpi, chunk)
    assert torch.equal(r_i, ref_i) and torch.equal(r_t, ref_t)


def test_one_pass_ranks_by_hand() -> None:
    # the hand-worked matrix of test_ranks_by_hand, produced as img @ cap.T with 2-d one-hot-ish embeddings
    img = torch.eye(2)
    cap = S.T.contiguous()  # caption j's embedding is its column of S: img @ cap.T == S
    r_i, r_t = chunked_ranks(img, cap, 5, chunk=1)
    assert r_i.tolist() == [1, 5]
    assert r_t.tolist() == [1, 0, 1, 1, 0, 1, 1, 1, 1, 0]
