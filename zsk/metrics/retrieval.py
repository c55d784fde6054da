"""Cross-modal retrieval metrics: R@K, median and mean rank, rsum, COCO 1K folds.

Protocol of the VSE family (VSE++, SCAN, VSE infinity, LSEH):

- images and captions are scored by a similarity matrix ``S[i, j]`` (image i, caption j);
- caption ``j`` belongs to image ``j // captions_per_image`` (5 for Flickr30K / COCO, 1 for IAPR TC-12);
- **i2t** (caption retrieval): an image's rank is the best (lowest) 0-based rank among its ground-truth
  captions; **t2i** (image retrieval): a caption's rank is the 0-based rank of its one image;
- ``R@K`` = percentage of queries with rank < K, ``medr`` = floor(median rank) + 1,
  ``meanr`` = mean rank + 1, ``rsum`` = the six R@{1,5,10} summed.

Ranks are computed as the number of gallery items scored strictly higher than the best ground truth,
which equals the position in a descending sort when there are no ties, and never needs the sort. The
similarity matrix is built chunk by chunk, once for both directions, so a 5K x 25K evaluation stays within
bounded memory and costs one matrix product.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
from torch import Tensor

KS: tuple[int, ...] = (1, 5, 10)


def _check(num_images: int, num_captions: int, captions_per_image: int) -> None:
    if captions_per_image < 1:
        raise ValueError(f"captions_per_image must be >= 1, got {captions_per_image}")
    if num_captions != num_images * captions_per_image:
        raise ValueError(
            f"{num_captions} captions for {num_images} images: expected {captions_per_image} captions per image "
            f"({num_images * captions_per_image} captions)"
        )


def i2t_ranks(sims: Tensor, captions_per_image: int = 5) -> Tensor:
    """0-based rank of the best ground-truth caption for each image (rows of ``sims``: images)."""
    n_img, n_cap = sims.shape
    _check(n_img, n_cap, captions_per_image)
    gt = sims.view(n_img, n_img, captions_per_image).diagonal(dim1=0, dim2=1)  # (cpi, n_img)
    best_gt = gt.amax(dim=0)
    return (sims > best_gt[:, None]).sum(dim=1)


def t2i_ranks(sims: Tensor, captions_per_image: int = 5) -> Tensor:
    """0-based rank of the one ground-truth image for each caption (columns of ``sims``: captions)."""
    n_img, n_cap = sims.shape
    _check(n_img, n_cap, captions_per_image)
    img_of_cap = torch.arange(n_cap, device=sims.device) // captions_per_image
    gt = sims[img_of_cap, torch.arange(n_cap, device=sims.device)]
    return (sims > gt[None, :]).sum(dim=0)


def rank_metrics(ranks: Tensor, ks: tuple[int, ...] = KS) -> dict[str, float]:
    """``r1, r5, r10`` (percent), ``medr`` = floor(median)+1 and ``meanr`` = mean+1 from 0-based ranks."""
    r = ranks.double().cpu()
    out = {f"r{k}": 100.0 * float((r < k).double().mean()) for k in ks}
    # numpy-style median (average of the two middle values for an even count), then floored
    out["medr"] = float(math.floor(float(r.quantile(0.5))) + 1)
    out["meanr"] = float(r.mean()) + 1.0
    return out


def rsum(metrics: dict, ks: tuple[int, ...] = KS) -> float:
    """Sum of R@K over both directions: the model-selection criterion of the VSE family."""
    return float(sum(metrics["i2t"][f"r{k}"] + metrics["t2i"][f"r{k}"] for k in ks))


def retrieval_metrics(sims: Tensor, captions_per_image: int = 5) -> dict:
    """``{"i2t": {...}, "t2i": {...}, "rsum": x}`` for a full image x caption similarity matrix."""
    out = {
        "i2t": rank_metrics(i2t_ranks(sims, captions_per_image)),
        "t2i": rank_metrics(t2i_ranks(sims, captions_per_image)),
    }
    out["rsum"] = rsum(out)
    return out


def chunked_ranks(
    img_emb: Tensor, cap_emb: Tensor, captions_per_image: int = 5, chunk: int = 1024
) -> tuple[Tensor, Tensor]:
    """(i2t ranks, t2i ranks) for dot-product similarity from ONE pass over the similarity matrix.

    ``S = img_emb @ cap_emb.T`` is cut into tiles of ``chunk`` images x the ``chunk * captions_per_image``
    captions of a chunk of images, and every tile is computed once and serves both directions: its rows
    count, for each image, the captions that beat its best own caption (i2t), its columns count, for each
    caption, the images that beat its own image (t2i). The diagonal tiles (which hold every ground-truth
    score) go first, so each comparison is against the ground truth read from the same tiles: the ranks are
    exactly :func:`i2t_ranks` / :func:`t2i_ranks` of the tiled matrix, with half the products of building
    it once per direction. Peak memory: one tile of scores, in buffers reused from tile to tile.
    """
    n_img, n_cap = img_emb.shape[0], cap_emb.shape[0]
    _check(n_img, n_cap, captions_per_image)
    dev = img_emb.device
    cpi = captions_per_image
    chunk = max(1, min(chunk, n_img))
    starts = list(range(0, n_img, chunk))
    cap_t = cap_emb.T.contiguous()
    dtype = torch.result_type(img_emb, cap_emb)
    scores = torch.empty(chunk, chunk * cpi, dtype=dtype, device=dev)
    beats = torch.empty(chunk, chunk * cpi, dtype=torch.float32, device=dev)  # 1.0 where an item beats the truth
    ones_cols = torch.ones(chunk * cpi, device=dev)
    ones_rows = torch.ones(chunk, device=dev)
    best_gt = torch.empty(n_img, dtype=dtype, device=dev)  # the best own-caption score of each image
    gt = torch.empty(n_cap, dtype=dtype, device=dev)  # each caption's own-image score
    r_i2t = torch.zeros(n_img, dtype=torch.long, device=dev)
    r_t2i = torch.zeros(n_cap, dtype=torch.long, device=dev)

    def count(above: Tensor, dim: int) -> Tensor:
        # comparisons stored as 0.0/1.0 in a reused float32 buffer and counted by a matrix-vector product:
        # exact (counts < 2^24) and allocation-free, where a bool sum converts the whole tile to int64 first
        # (a fresh allocation per call: page faults were a quarter of the CPU time)
        if dim == 1:
            return torch.mv(above, ones_cols[: above.shape[1]]).long()
        return torch.mv(above.T, ones_rows[: above.shape[0]]).long()

    def tile(a: int, b: int) -> tuple[Tensor, Tensor]:
        rows, cols = min(chunk, n_img - a), min(chunk, n_img - b) * cpi
        block = scores[:rows, :cols]
        torch.mm(img_emb[a : a + rows], cap_t[:, b * cpi : b * cpi + cols], out=block)
        return block, beats[:rows, :cols]

    for a in starts:  # diagonal tiles: the ground truth, and the comparisons inside them
        block, above = tile(a, a)
        c = block.shape[0]
        local = torch.arange(c, device=dev)
        own = block.view(c, c, cpi)[local, local]  # (c, cpi): each image's own captions
        best_gt[a : a + c] = own.amax(dim=1)
        gt[a * cpi : (a + c) * cpi] = own.reshape(-1)
        torch.gt(block, best_gt[a : a + c, None], out=above)
        r_i2t[a : a + c] += count(above, 1)
        torch.gt(block, gt[None, a * cpi : (a + c) * cpi], out=above)
        r_t2i[a * cpi : (a + c) * cpi] += count(above, 0)  # the own entry equals gt: never counted
    for a in starts:  # every other tile, once, for both directions
        for b in starts:
            if a == b:
                continue
            block, above = tile(a, b)
            c, cols = block.shape
            torch.gt(block, best_gt[a : a + c, None], out=above)
            r_i2t[a : a + c] += count(above, 1)
            torch.gt(block, gt[None, b * cpi : b * cpi + cols], out=above)
            r_t2i[b * cpi : b * cpi + cols] += count(above, 0)
    return r_i2t, r_t2i


def two_pass_ranks(
    img_emb: Tensor, cap_emb: Tensor, captions_per_image: int = 5, chunk: int = 1024
) -> tuple[Tensor, Tensor]:
    """(i2t ranks, t2i ranks) with the similarity matrix built twice, once per direction (zsk before issue 19,
    and the shape of VSE++'s ``evaluation.i2t`` / ``t2i``): the reference `chunked_ranks` is checked against."""
    n_img, n_cap = img_emb.shape[0], cap_emb.shape[0]
    _check(n_img, n_cap, captions_per_image)
    dev = img_emb.device
    offsets = torch.arange(captions_per_image, device=dev)
    r_i2t = torch.empty(n_img, dtype=torch.long, device=dev)
    for s in range(0, n_img, chunk):
        block = img_emb[s : s + chunk] @ cap_emb.T  # (c, n_cap)
        rows = torch.arange(s, s + block.shape[0], device=dev)
        best_gt = block.gather(1, rows[:, None] * captions_per_image + offsets[None, :]).amax(dim=1)
        r_i2t[s : s + chunk] = (block > best_gt[:, None]).sum(dim=1)
    r_t2i = torch.empty(n_cap, dtype=torch.long, device=dev)
    for s in range(0, n_cap, chunk):
        block = cap_emb[s : s + chunk] @ img_emb.T  # (c, n_img)
        own = torch.arange(s, s + block.shape[0], device=dev) // captions_per_image
        r_t2i[s : s + chunk] = (block > block.gather(1, own[:, None])).sum(dim=1)
    return r_i2t, r_t2i


@dataclass(frozen=True)
class FaissSearch:
    """Evaluation by nearest-neighbour search instead of the exact scan: for galleries too large to scan.

    ``depth``: results returned per query (every R@K needs ``K <= depth``); ``nlist``: 0 searches a flat
    inner-product index (the same top ``depth`` as the exact scan), > 0 an IVF index of that many lists
    of which ``nprobe`` are visited per query (approximate: a ground truth in an unvisited list is missed).
    """

    depth: int = 100
    nlist: int = 0
    nprobe: int = 16

    def __post_init__(self) -> None:
        if self.depth < max(KS):
            raise ValueError(f"depth must be >= {max(KS)} (R@{max(KS)}), got {self.depth}")
        if self.nlist < 0 or self.nprobe < 1:
            raise ValueError(f"nlist must be >= 0 and nprobe >= 1, got {self.nlist} and {self.nprobe}")

    @property
    def exact(self) -> bool:
        return self.nlist == 0

    def index(self, gallery: Tensor):
        """A faiss inner-product index holding ``gallery`` (N, D): flat, or IVF trained on it."""
        import faiss

        g = gallery.detach().float().cpu().contiguous().numpy()
        dim = g.shape[1]
        if self.exact:
            index = faiss.IndexFlatIP(dim)
        else:
            lists = min(self.nlist, g.shape[0])
            index = faiss.IndexIVFFlat(faiss.IndexFlatIP(dim), dim, lists, faiss.METRIC_INNER_PRODUCT)
            index.train(g)
            index.nprobe = min(self.nprobe, lists)
        index.add(g)
        return index

    def search(self, query: Tensor, gallery: Tensor) -> tuple[Tensor, Tensor]:
        """(scores, indices), each (Q, min(depth, N)), best first; index -1 where IVF found fewer items."""
        k = min(self.depth, gallery.shape[0])
        scores, idx = self.index(gallery).search(query.detach().float().cpu().contiguous().numpy(), k)
        return torch.from_numpy(scores), torch.from_numpy(idx).long()


def _ranks_from_lists(scores: Tensor, idx: Tensor, is_truth: Tensor, depth: int) -> Tensor:
    """0-based rank of the best ground truth of each query from its returned list: the number of listed items
    scored strictly higher than the first listed ground truth (the exact scan's count, since every item that
    beats it is listed); ``depth`` (a lower bound) where no ground truth is listed."""
    q, k = idx.shape
    found = is_truth & (idx >= 0)
    first = torch.where(found.any(dim=1), found.float().argmax(dim=1), torch.full((q,), k))
    truth_score = scores.gather(1, first.clamp(max=k - 1)[:, None])
    ranks = (scores > truth_score).sum(dim=1)
    return torch.where(first < k, ranks, torch.full_like(ranks, depth))


def faiss_ranks(img_emb: Tensor, cap_emb: Tensor, captions_per_image: int = 5,
                search: FaissSearch = FaissSearch()) -> tuple[Tensor, Tensor, int]:
    """(i2t ranks, t2i ranks, depth) by faiss search of the captions for each image and of the images for
    each caption. Ranks below ``depth`` equal :func:`chunked_ranks` (flat index; ties aside); a rank of
    ``depth`` means "not in the top ``depth``" (:func:`depth_rank_metrics` reports what that still allows)."""
    n_img, n_cap = img_emb.shape[0], cap_emb.shape[0]
    _check(n_img, n_cap, captions_per_image)
    s, i = search.search(img_emb, cap_emb)  # (n_img, k) captions per image
    r_i2t = _ranks_from_lists(s, i, (i // captions_per_image) == torch.arange(n_img)[:, None], search.depth)
    s, i = search.search(cap_emb, img_emb)  # (n_cap, k) images per caption
    r_t2i = _ranks_from_lists(s, i, i == (torch.arange(n_cap) // captions_per_image)[:, None], search.depth)
    return r_i2t, r_t2i, search.depth


def depth_rank_metrics(ranks: Tensor, depth: int, ks: tuple[int, ...] = KS) -> dict[str, float | int | None]:
    """:func:`rank_metrics` from ranks known only below ``depth`` (``depth`` = "not found in the top depth"):
    R@K exact for K <= depth; ``medr`` exact when the middle rank(s) are below ``depth``, else None; ``meanr``
    None (it needs every rank: use the exact scan)."""
    r = ranks.double().cpu()
    out: dict[str, float | int | None] = {f"r{k}": 100.0 * float((r < k).double().mean()) for k in ks if k <= depth}
    n = len(r)
    middle = torch.sort(r).values[[(n - 1) // 2, n // 2]]
    out["medr"] = float(math.floor(float(middle.mean())) + 1) if bool((middle < depth).all()) else None
    out["meanr"] = None
    out["beyond_depth"] = int((r >= depth).sum())
    return out


def evaluate_embeddings(
    img_emb: Tensor, cap_emb: Tensor, captions_per_image: int = 5, chunk: int = 1024,
    search: FaissSearch | None = None,
) -> dict:
    """Retrieval metrics from L2-normalised embeddings (cosine similarity): the exact one-pass scan, or
    ``search`` (faiss; R@K and medr only, see :func:`depth_rank_metrics`)."""
    if search is None:
        r_i2t, r_t2i = chunked_ranks(img_emb, cap_emb, captions_per_image, chunk)
        out = {"i2t": rank_metrics(r_i2t), "t2i": rank_metrics(r_t2i)}
    else:
        r_i2t, r_t2i, depth = faiss_ranks(img_emb, cap_emb, captions_per_image, search)
        out = {"i2t": depth_rank_metrics(r_i2t, depth), "t2i": depth_rank_metrics(r_t2i, depth),
               "search": {"backend": "faiss", "index": "flat" if search.exact else "ivf", "depth": depth,
                          "exact": search.exact, **({} if search.exact else {"nlist": search.nlist,
                                                                             "nprobe": search.nprobe})}}
    out["rsum"] = rsum(out)
    return out


def average_metrics(results: list[dict]) -> dict:
    """Average each metric over folds (the COCO 1K protocol averages R@K, medr and meanr); a metric some
    fold could not give (None, faiss search) is None; ``beyond_depth`` counts are summed."""
    out: dict = {}
    for direction in ("i2t", "t2i"):
        keys = results[0][direction].keys()
        out[direction] = {}
        for k in keys:
            vals = [r[direction][k] for r in results]
            if k == "beyond_depth":
                out[direction][k] = int(sum(vals))
            else:
                out[direction][k] = None if any(v is None for v in vals) else sum(vals) / len(vals)
    out["rsum"] = sum(r["rsum"] for r in results) / len(results)
    if "search" in results[0]:
        out["search"] = results[0]["search"]
    return out


def coco_1k(
    img_emb: Tensor, cap_emb: Tensor, captions_per_image: int = 5, folds: int = 5, chunk: int = 1024,
    search: FaissSearch | None = None,
) -> dict:
    """COCO 1K: split the 5K test set into ``folds`` consecutive folds of images (and their captions),
    evaluate each and average every metric (VSE++ ``fold5``); ``folds`` holds the per-fold results."""
    n_img = img_emb.shape[0]
    _check(n_img, cap_emb.shape[0], captions_per_image)
    if n_img % folds:
        raise ValueError(f"{n_img} images do not split into {folds} equal folds")
    size = n_img // folds
    per_fold = []
    for f in range(folds):
        im = img_emb[f * size : (f + 1) * size]
        cap = cap_emb[f * size * captions_per_image : (f + 1) * size * captions_per_image]
        per_fold.append(evaluate_embeddings(im, cap, captions_per_image, chunk, search))
    out = average_metrics(per_fold)
    out["folds"] = per_fold
    return out
