"""Retrieval metrics against hand-worked similarity matrices."""

from __future__ import annotations

import pytest
import torch

from zsk.metrics.retrieval import (
    FaissSearch,
    chunked_ranks,
    coco_1k,
    depth_rank_metrics,
    evaluate_embeddings,
    faiss_ranks,
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


def _pairs(n_img: int = 120, dim: int = 24, noise: float = 0.9, seed: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    img = torch.nn.functional.normalize(torch.randn(n_img, dim, generator=g), dim=1)
    cap = img.repeat_interleave(5, 0) + noise * torch.randn(n_img * 5, dim, generator=g)
    return img, torch.nn.functional.normalize(cap, dim=1)


def test_faiss_flat_ranks_equal_the_scan_below_depth() -> None:
    """Every rank below the search depth is the exact scan's; every other rank reads as the depth."""
    img, cap = _pairs()
    r_i, r_t = chunked_ranks(img, cap, 5, chunk=32)
    f_i, f_t, depth = faiss_ranks(img, cap, 5, FaissSearch(depth=30))
    assert depth == 30
    for exact, found in ((r_i, f_i), (r_t, f_t)):
        assert (exact >= 30).any() and (exact < 30).any()  # both cases occur
        assert torch.equal(found, exact.clamp(max=30))


def test_depth_rank_metrics_by_hand() -> None:
    out = depth_rank_metrics(torch.tensor([0, 3, 12, 12]), depth=12)
    assert out == {"r1": 25.0, "r5": 50.0, "r10": 50.0, "medr": None, "meanr": None, "beyond_depth": 2}
    # middle ranks 1 and 2: numpy median 1.5, floored, + 1
    assert depth_rank_metrics(torch.tensor([0, 1, 2, 12]), depth=12)["medr"] == 2.0
    assert depth_rank_metrics(torch.tensor([0, 4, 12]), depth=12)["medr"] == 5.0


def test_faiss_evaluation_and_folds_match_the_exact_metrics() -> None:
    img, cap = _pairs()
    exact, fast = evaluate_embeddings(img, cap, 5), evaluate_embeddings(img, cap, 5, search=FaissSearch(depth=60))
    for d in ("i2t", "t2i"):
        assert {k: fast[d][k] for k in ("r1", "r5", "r10", "medr")} == {k: exact[d][k] for k in ("r1", "r5", "r10", "medr")}
    assert fast["rsum"] == exact["rsum"] and fast["search"]["exact"]
    folds = coco_1k(img, cap, 5, folds=4, search=FaissSearch(depth=10))
    assert folds["i2t"]["meanr"] is None and folds["search"]["depth"] == 10
    assert folds["i2t"]["beyond_depth"] == sum(f["i2t"]["beyond_depth"] for f in folds["folds"])
    assert folds["t2i"]["r5"] == pytest.approx(coco_1k(img, cap, 5, folds=4)["t2i"]["r5"])


def test_faiss_ivf_visiting_every_list_is_exhaustive_and_one_list_misses() -> None:
    img, cap = _pairs(200)
    flat = evaluate_embeddings(img, cap, 5, search=FaissSearch(depth=20))
    every = evaluate_embeddings(img, cap, 5, search=FaissSearch(depth=20, nlist=8, nprobe=8))
    one = evaluate_embeddings(img, cap, 5, search=FaissSearch(depth=20, nlist=8, nprobe=1))
    assert every["i2t"] == flat["i2t"] and every["t2i"] == flat["t2i"] and not every["search"]["exact"]
    assert one["rsum"] < flat["rsum"]  # an approximate search: ground truths in unvisited lists are missed


def test_faiss_search_needs_depth_for_r10() -> None:
    with pytest.raises(ValueError, match="depth"):
        FaissSearch(depth=5)
