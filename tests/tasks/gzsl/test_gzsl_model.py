"""DGP / GCN layers against independent dense-matrix formulas; the regression losses by hand."""

from __future__ import annotations

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from zsk.data.graphs import ancestor_groups, merge_groups
from zsk.tasks.gzsl.losses import classifier_l2_loss, classifier_mse_loss
from zsk.tasks.gzsl.model import DGP, GCN, DenseGraph, DGPLayer, row_normalized_operator, symmetric_adjacency

EDGES = np.array([[1, 0], [2, 0], [3, 1], [4, 1], [4, 2], [5, 3]])  # see tests/data/test_graphs.py
N = 6


def dense_groups(max_distance: int) -> list[torch.Tensor]:
    """A_k[u, x] = 1 when x is an ancestor of u at hop distance k (k = max_distance: all farther ones)."""
    # hop distances by Floyd-Warshall on the child->parent DAG, written independently of the BFS
    inf = 10**6
    d = np.full((N, N), inf)
    np.fill_diagonal(d, 0)
    for c, p in EDGES:
        d[c, p] = 1
    for k in range(N):
        d = np.minimum(d, d[:, [k]] + d[[k], :])
    mats = []
    for k in range(max_distance + 1):
        m = (d == k) if k < max_distance else ((d >= k) & (d < inf))
        mats.append(torch.tensor(m, dtype=torch.float32))
    return mats


def row_norm(a: torch.Tensor) -> torch.Tensor:
    deg = a.sum(1, keepdim=True)
    return torch.where(deg > 0, a / deg.clamp(min=1), torch.zeros_like(a))


def test_row_normalized_operator() -> None:
    op = row_normalized_operator(np.array([0, 0, 1, 0]), np.array([1, 2, 2, 1]), 3).to_dense()
    assert torch.allclose(op, torch.tensor([[0, 0.5, 0.5], [0, 0, 1.0], [0, 0, 0]]))  # duplicate (0,1) counted once


def test_dense_graph_operators_average_descendants_and_ancestors() -> None:
    g = DenseGraph.from_groups(merge_groups(ancestor_groups(N, EDGES), 4), N)
    # 1-hop descendants of a (0) are b and c; 1-hop ancestors of e (4) are b and c
    assert torch.allclose(g.descendants[1].to_dense()[0], torch.tensor([0, 0.5, 0.5, 0, 0, 0]))
    assert torch.allclose(g.ancestors[1].to_dense()[4], torch.tensor([0, 0.5, 0.5, 0, 0, 0]))
    # 2-hop descendants of a: d and e
    assert torch.allclose(g.descendants[2].to_dense()[0], torch.tensor([0, 0, 0, 0.5, 0.5, 0]))
    for k, a in enumerate(dense_groups(4)):
        assert torch.allclose(g.ancestors[k].to_dense(), row_norm(a))
        assert torch.allclose(g.descendants[k].to_dense(), row_norm(a.T))


def test_dgp_layer_matches_dense_formula() -> None:
    torch.manual_seed(0)
    groups = merge_groups(ancestor_groups(N, EDGES), 2)
    g = DenseGraph.from_groups(groups, N)
    layer = DGPLayer(4, 3, num_groups=3, dropout=0.5, negative_slope=0.2).eval()
    with torch.no_grad():
        layer.distance_weights.copy_(torch.tensor([0.3, -1.0, 2.0]))
        layer.linear.bias.copy_(torch.tensor([0.1, -0.2, 0.3]))
    x = torch.randn(N, 4)
    alpha = torch.exp(torch.tensor([0.3, -1.0, 2.0]))
    alpha = alpha / alpha.sum()
    support = x @ layer.linear.weight.T + layer.linear.bias
    expected = sum(alpha[k] * row_norm(a.T) @ support for k, a in enumerate(dense_groups(2)))
    expected = torch.where(expected > 0, expected, 0.2 * expected)
    assert torch.allclose(layer(x, g.descendants), expected, atol=1e-6)


def test_dgp_forward_two_phases_and_unit_rows() -> None:
    torch.manual_seed(1)
    g = DenseGraph.from_groups(merge_groups(ancestor_groups(N, EDGES), 4), N)
    model = DGP(5, 7, hidden=8, num_groups=5).eval()
    x = torch.randn(N, 5)
    a = dense_groups(4)
    alpha = torch.full((5,), 0.2)  # weights initialised to ones: uniform attention
    l1, l2 = model.descendant_phase.linear, model.ancestor_phase.linear
    h = sum(alpha[k] * row_norm(a[k].T) @ (x @ l1.weight.T + l1.bias) for k in range(5))
    h = F.leaky_relu(h, 0.2)
    w = sum(alpha[k] * row_norm(a[k]) @ (h @ l2.weight.T + l2.bias) for k in range(5))
    out = model(x, g)
    assert torch.allclose(out, F.normalize(w, dim=1), atol=1e-5)
    assert torch.allclose(out.norm(dim=1), torch.ones(N), atol=1e-5)
    # Xavier-uniform weights, zero biases
    assert torch.all(l1.bias == 0) and l1.weight.abs().max() <= np.sqrt(6 / (5 + 8)) + 1e-6


def test_dgp_dropout_active_only_in_training() -> None:
    g = DenseGraph.from_groups(merge_groups(ancestor_groups(N, EDGES), 4), N)
    model = DGP(5, 7, hidden=64, num_groups=5)
    x = torch.randn(N, 5)
    model.eval()
    assert torch.equal(model(x, g), model(x, g))
    model.train()
    assert not torch.equal(model(x, g), model(x, g))


def test_attention_off_freezes_uniform_weights() -> None:
    model = DGP(5, 7, hidden=8, num_groups=5, attention=False)
    assert not model.descendant_phase.distance_weights.requires_grad
    assert torch.allclose(model.ancestor_phase.alpha(), torch.full((5,), 0.2))
    trainable = [n for n, p in model.named_parameters() if p.requires_grad]
    assert "descendant_phase.distance_weights" not in trainable


def test_gcn_matches_dense_formula() -> None:
    torch.manual_seed(2)
    sparse_adj = symmetric_adjacency(EDGES, N)
    adj = sparse_adj.to_dense()
    a = torch.eye(N)
    for c, p in EDGES:
        a[c, p] = a[p, c] = 1
    assert torch.allclose(adj, row_norm(a))
    model = GCN(4, 3, hidden=[6, 5]).eval()
    x = torch.randn(N, 4)
    h = x
    for i, layer in enumerate(model.layers):
        h = row_norm(a) @ (h @ layer.linear.weight.T) + layer.bias  # DGP's GraphConv: bias after A
        if i < 2:
            h = F.leaky_relu(h, 0.2)
    assert torch.allclose(model(x, sparse_adj), F.normalize(h, dim=1), atol=1e-5)
    assert len(GCN(300, 2048, hidden=[2048, 2048, 1024, 1024, 512]).layers) == 6  # GCNZ


def test_losses_by_hand() -> None:
    pred = torch.tensor([[1.0, 2.0, 0.0], [0.0, 0.0, 3.0]])
    target = torch.zeros(2, 3)
    # sum of squares 1 + 4 + 9 = 14; l2 = 14 / (2 * 2); mse = 14 / 6
    assert classifier_l2_loss(pred, target).item() == pytest.approx(3.5)
    assert classifier_mse_loss(pred, target).item() == pytest.approx(14 / 6)
    with pytest.raises(ValueError):
        classifier_l2_loss(pred, torch.zeros(3, 3))


def test_forward_flops_by_hand() -> None:
    from zsk.tasks.gzsl.hooks import forward_flops

    adj = symmetric_adjacency(EDGES, N)
    nnz = N + 2 * len(EDGES)  # self-loops + both directions
    gcn = GCN(4, 3, hidden=[6])
    assert forward_flops(gcn, adj, N) == 2 * N * (4 * 6 + 6 * 3) + 2 * nnz * (6 + 3)
    groups = merge_groups(ancestor_groups(N, EDGES), 2)
    g = DenseGraph.from_groups(groups, N)
    pairs = sum(len(x) for x in groups)  # each phase touches every (node, ancestor) pair once
    dgp = DGP(4, 3, hidden=6, num_groups=3)
    assert forward_flops(dgp, g, N) == 2 * N * (4 * 6 + 6 * 3) + 2 * pairs * (6 + 3)


def test_propagation_flops_and_gradient() -> None:
    from zsk.core.bench import count_flops
    from zsk.tasks.gzsl.model import _spmm

    op = symmetric_adjacency(EDGES[:3], N)  # nnz 12: a dense count (2 N^2 per column) would differ
    assert 2 * op._nnz() != N * N
    x = torch.randn(N, 5, requires_grad=True)
    out: dict[str, torch.Tensor] = {}

    def fwd_bwd() -> None:
        out["y"] = _spmm(op, x)
        (out["y"] * torch.arange(5.0)).sum().backward()

    # forward and backward each touch the nnz entries once per column (not the dense N x N product),
    # as zsk's flop counter (used by `info` and `bench`) books sparse products
    assert count_flops(fwd_bwd) == 2 * (2 * op._nnz() * 5)
    y = out["y"]
    dense = op.to_dense()
    assert torch.allclose(y, dense @ x.detach(), atol=1e-6)
    assert torch.allclose(x.grad, dense.T @ torch.arange(5.0).expand(N, 5), atol=1e-6)
