"""zsk.metrics.ranking against hand-worked cases and an independent per-query loop of SAKE's protocol
(VOC AP with the precision made monotone from the right and a recall step at every hit)."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from zsk.metrics.ranking import average_precision_from_hits, ranking_metrics, top_k


def _voc_ap_loop(hits: list[bool], relevant: int) -> float:
    """Independent implementation: recall/precision per rank, VOC interpolation, sum of rectangle areas."""
    tp, rec, prec = 0, [], []
    for i, h in enumerate(hits, start=1):
        tp += h
        rec.append(tp / relevant)
        prec.append(tp / i)
    mrec, mpre = [0.0, *rec, 1.0], [0.0, *prec, 0.0]
    for i in range(len(mpre) - 2, -1, -1):
        mpre[i] = max(mpre[i], mpre[i + 1])
    return sum((mrec[i] - mrec[i - 1]) * mpre[i] for i in range(1, len(mrec)) if mrec[i] != mrec[i - 1])


def test_average_precision_hand_worked() -> None:
    # ranks 1 and 3 relevant out of 2: precisions 1 and 2/3 -> AP = (1 + 2/3) / 2
    ap = average_precision_from_hits(torch.tensor([[True, False, True, False]]), torch.tensor([2]))
    assert float(ap) == pytest.approx((1 + 2 / 3) / 2)
    # monotone precision: ranks 2 and 3 relevant; p(2) = 1/2, p(3) = 2/3 -> max from the right gives 2/3 twice
    ap = average_precision_from_hits(torch.tensor([[False, True, True]]), torch.tensor([2]))
    assert float(ap) == pytest.approx(2 / 3)
    # a relevant item never retrieved caps recall: 1 of 2 found at rank 1 -> AP = 1/2
    ap = average_precision_from_hits(torch.tensor([[True, False]]), torch.tensor([2]))
    assert float(ap) == pytest.approx(0.5)
    assert math.isnan(float(average_precision_from_hits(torch.tensor([[False]]), torch.tensor([0]))))


def test_ranking_metrics_hand_worked() -> None:
    # gallery on a circle; the query points at item 0; classes [0, 1, 0, 1] ranked 0, 1, 3, 2 by cosine
    angles = torch.tensor([0.0, 0.3, 2.5, 1.0])
    gallery = torch.stack([angles.cos(), angles.sin()], 1)
    res = ranking_metrics(torch.tensor([[1.0, 0.0]]), torch.tensor([0]), gallery, torch.tensor([0, 1, 0, 1]),
                          map_k=(2,), precision_k=(1, 2, 100))
    # ranked classes 0, 1, 1, 0: AP@all = (1 + 2/4) / 2; top 2: one hit at rank 1, positives capped at 2 -> 1/2
    assert res["mAP@all"] == pytest.approx(0.75)
    assert res["mAP@2"] == pytest.approx(0.5)
    assert res["P@1"] == 1.0 and res["P@2"] == 0.5 and res["P@100"] == 0.5  # P@100 over min(100, 4) items


def test_ranking_metrics_match_an_independent_loop() -> None:
    g = torch.Generator().manual_seed(0)
    q, gal = torch.randn(37, 8, generator=g), torch.randn(150, 8, generator=g)
    ql, gl = torch.randint(0, 5, (37,), generator=g), torch.randint(0, 5, (150,), generator=g)
    res = ranking_metrics(q, ql, gal, gl, map_k=(20,), precision_k=(10, 200), chunk=8)
    qn = q / q.norm(dim=1, keepdim=True)
    gn = gal / gal.norm(dim=1, keepdim=True)
    want = {"mAP@all": [], "mAP@20": [], "P@10": [], "P@200": []}
    for i in range(37):
        order = np.argsort(-(gn @ qn[i]).numpy(), kind="stable")
        hits = (gl.numpy()[order] == int(ql[i])).tolist()
        rel = int((gl == ql[i]).sum())
        want["mAP@all"].append(_voc_ap_loop(hits, rel))
        want["mAP@20"].append(_voc_ap_loop(hits[:20], min(20, rel)))
        want["P@10"].append(sum(hits[:10]) / 10)
        want["P@200"].append(sum(hits[:150]) / 150)
    for k, v in want.items():
        assert res[k] == pytest.approx(float(np.mean(v)), abs=1e-12), k


def test_top_k_faiss_equals_torch() -> None:
    g = torch.Generator().manual_seed(1)
    q, gal = torch.randn(4, 16, generator=g), torch.randn(50, 16, generator=g)
    s1, i1 = top_k(q, gal, 5)
    s2, i2 = top_k(q, gal, 5, use_faiss=True)
    assert torch.equal(i1, i2)
    assert torch.allclose(s1, s2, atol=1e-5)


def test_per_query_means_are_the_metrics() -> None:
    from zsk.metrics.ranking import per_query_metrics

    g = torch.Generator().manual_seed(2)
    q, gal = torch.randn(9, 4, generator=g), torch.randn(20, 4, generator=g)
    ql, gl = torch.arange(9) % 3, torch.arange(20) % 3
    per = per_query_metrics(q, ql, gal, gl)
    res = ranking_metrics(q, ql, gal, gl)
    assert set(per) == set(res) and all(per[k].shape == (9,) for k in per)
    assert all(float(per[k].mean()) == pytest.approx(res[k]) for k in res)
