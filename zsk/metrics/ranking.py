"""Category-level ranking metrics for cross-domain retrieval (sketch -> photo): mAP@all, mAP@K and
Precision@K over a labelled gallery, as the zero-shot SBIR literature reports them.

The protocol is the one of SAKE (Liu et al., ICCV 2019, qliu24/SAKE ``utils.py``: ``eval_AP_inner``,
``eval_precision``, ``VOCap``), which ACNet (leftthomas/ACNet ``metric.py``) reuses: per query, the gallery
is ranked by cosine similarity; AP is the area under the precision-recall curve with precision made
monotone (PASCAL VOC style); mAP@K ranks only the top K and caps the number of positives at
``min(K, #relevant)``; P@K is the fraction of same-class items among the top ``min(K, gallery)``.
The other protocol in the literature (doodle2search's, with a different mAP@K normalisation) gives
numbers that are not comparable with these.

Everything is vectorised over queries and runs in query chunks, so a 10^4 x 10^5 similarity matrix is
never held at once.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import Tensor

PROTOCOL = "SAKE (VOC-style AP, mAP@K with positives capped at min(K, #relevant), P@K over the top min(K, gallery))"


def average_precision_from_hits(hits: Tensor, num_relevant: Tensor) -> Tensor:
    """VOC-style AP of ranked hit lists: ``hits`` (Q, N) bool in rank order, ``num_relevant`` (Q,) the
    positives the recall is normalised by. AP = (1/R) sum over hit ranks i of max_{j >= i} precision(j),
    which equals the area under the monotone precision-recall curve (SAKE's ``VOCap``). Rows with
    ``num_relevant == 0`` give NaN, as the reference does."""
    hits = hits.to(torch.float64)
    ranks = torch.arange(1, hits.shape[1] + 1, dtype=torch.float64, device=hits.device)
    precision = hits.cumsum(1) / ranks
    # precision made monotone: running maximum from the right
    monotone = precision.flip(1).cummax(1).values.flip(1)
    total = (monotone * hits).sum(1)
    return total / num_relevant.to(torch.float64)


def per_query_metrics(query: Tensor, query_labels: Tensor, gallery: Tensor, gallery_labels: Tensor, *,
                      map_k: Sequence[int] = (200,), precision_k: Sequence[int] = (100, 200),
                      chunk: int = 1024) -> dict[str, Tensor]:
    """AP over the full ranking, AP@K and P@K of every query (float64 tensors of shape (Q,)): ``query`` (Q, D)
    against a ``gallery`` (N, D), ranked by cosine similarity (ties in gallery order). A query whose class has
    no gallery item gets NaN AP, as in the reference code."""
    if query.shape[0] == 0 or gallery.shape[0] == 0:
        raise ValueError("ranking metrics need at least one query and one gallery item")
    q = torch.nn.functional.normalize(query.double(), dim=1)
    g = torch.nn.functional.normalize(gallery.double(), dim=1)
    n = g.shape[0]
    keys = ["mAP@all", *(f"mAP@{k}" for k in map_k), *(f"P@{k}" for k in precision_k)]
    parts: dict[str, list[Tensor]] = {key: [] for key in keys}
    gl = gallery_labels.to(q.device)
    for start in range(0, q.shape[0], chunk):
        qc = q[start:start + chunk]
        ql = query_labels[start:start + chunk].to(q.device)
        order = (qc @ g.T).argsort(dim=1, descending=True, stable=True)
        hits = gl[order] == ql[:, None]
        relevant = (gl[None, :] == ql[:, None]).sum(1)
        parts["mAP@all"].append(average_precision_from_hits(hits, relevant))
        for k in map_k:
            top = min(k, n)
            parts[f"mAP@{k}"].append(average_precision_from_hits(hits[:, :top], relevant.clamp(max=top)))
        for k in precision_k:
            top = min(k, n)
            parts[f"P@{k}"].append(hits[:, :top].double().sum(1) / top)
    return {key: torch.cat(v) for key, v in parts.items()}


def ranking_metrics(query: Tensor, query_labels: Tensor, gallery: Tensor, gallery_labels: Tensor, *,
                    map_k: Sequence[int] = (200,), precision_k: Sequence[int] = (100, 200),
                    chunk: int = 1024) -> dict[str, float]:
    """mAP@all, mAP@K and P@K (fractions in [0, 1]) of ``query`` embeddings against a ``gallery``, the means of
    :func:`per_query_metrics` over the queries. A query class missing from the gallery makes the mAPs NaN (as
    in the reference code), so callers check that every query class is in the gallery."""
    per = per_query_metrics(query, query_labels, gallery, gallery_labels, map_k=map_k, precision_k=precision_k,
                            chunk=chunk)
    return {key: float(v.mean()) for key, v in per.items()}


def top_k(query: Tensor, gallery: Tensor, k: int, use_faiss: bool = False) -> tuple[Tensor, Tensor]:
    """The ``k`` most cosine-similar gallery items per query: (scores (Q, k), indices (Q, k)). Exact in both
    paths; ``use_faiss`` searches a flat inner-product faiss index (large galleries on CPU)."""
    k = min(k, gallery.shape[0])
    q = torch.nn.functional.normalize(query.float(), dim=1)
    g = torch.nn.functional.normalize(gallery.float(), dim=1)
    if use_faiss:
        import faiss

        index = faiss.IndexFlatIP(g.shape[1])
        index.add(g.cpu().contiguous().numpy())
        scores, idx = index.search(q.cpu().contiguous().numpy(), k)
        return torch.from_numpy(scores), torch.from_numpy(idx).long()
    scores, idx = (q @ g.T).topk(k, dim=1)
    return scores, idx
