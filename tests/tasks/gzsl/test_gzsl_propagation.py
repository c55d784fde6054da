"""Issue 19: DGP's grouped propagation accumulated in reused buffers equals the written-out sum
sum_k alpha_k A_k S (forward and every gradient)."""

from __future__ import annotations

import torch

from zsk.tasks.gzsl.model import DGP, DenseGraph, grouped_propagation


def _operators(n: int, groups: int, seed: int) -> list[torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    ops = []
    for _ in range(groups):
        idx = torch.randint(0, n, (2, 3 * n), generator=g)
        ops.append(torch.sparse_coo_tensor(idx, torch.rand(3 * n, generator=g), (n, n)).coalesce())
    return ops


def test_grouped_propagation_equals_the_written_out_sum_and_its_gradients():
    n, d, groups = 30, 7, 4
    ops = _operators(n, groups, 0)
    w = torch.randn(groups, requires_grad=True)
    s = torch.randn(n, d, requires_grad=True)
    target = torch.randn(n, d)

    def loss(fn) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        w.grad = s.grad = None
        out = fn(torch.softmax(w, 0), s)
        (out * target).sum().backward()
        return out.detach(), w.grad.clone(), s.grad.clone()

    ours = loss(lambda a, x: grouped_propagation(a, x, ops))
    ref = loss(lambda a, x: sum(a[k] * torch.sparse.mm(op, x) for k, op in enumerate(ops)))
    for got, want in zip(ours, ref, strict=True):
        torch.testing.assert_close(got, want, atol=1e-5, rtol=1e-5)
    assert ours[1].abs().max() > 0  # the attention weights get a gradient


def test_dgp_forward_and_grads_unchanged_by_the_buffers():
    n, groups = 25, 3
    graph = DenseGraph(descendants=_operators(n, groups, 1), ancestors=_operators(n, groups, 2))
    x = torch.randn(n, 6)
    torch.manual_seed(0)
    model = DGP(6, 5, hidden=8, num_groups=groups, dropout=0.0)
    out = model(x, graph)
    out.square().sum().backward()
    grads = {k: p.grad.clone() for k, p in model.named_parameters()}
    # the same model with the propagation written out as the sum over groups
    import zsk.tasks.gzsl.model as gm

    def written_out(alpha, support, operators):
        return sum(alpha[k] * torch.sparse.mm(op, support.float()) for k, op in enumerate(operators))

    original = gm.grouped_propagation
    gm.grouped_propagation = written_out
    try:
        model.zero_grad()
        ref = model(x, graph)
        ref.square().sum().backward()
    finally:
        gm.grouped_propagation = original
    torch.testing.assert_close(out, ref, atol=1e-5, rtol=1e-5)
    for k, p in model.named_parameters():
        torch.testing.assert_close(grads[k], p.grad, atol=1e-5, rtol=1e-5, msg=k)


def test_bench_counts_the_grouped_propagation_as_the_hand_count():
    """`zsk bench` FLOPs of a DGP forward (in-place sparse products) equal gzsl's hand count."""
    from zsk.core.bench import count_flops
    from zsk.tasks.gzsl.hooks import forward_flops

    n, groups = 25, 3
    graph = DenseGraph(descendants=_operators(n, groups, 1), ancestors=_operators(n, groups, 2))
    model = DGP(6, 5, hidden=8, num_groups=groups).eval()
    x = torch.randn(n, 6)
    with torch.no_grad():
        assert count_flops(lambda: model(x, graph)) == forward_flops(model, graph, n)
