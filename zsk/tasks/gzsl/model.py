"""Graph networks that predict visual classifiers from word embeddings.

* :class:`DGP`: Dense Graph Propagation (Kampffmeyer et al., CVPR 2019; spec "Model"): a descendant
  phase then an ancestor phase over the dense graph, each mixing hop-distance groups with
  softmax attention weights.
* :class:`GCN`: the plain GCN of GCNZ (Wang et al., CVPR 2018; 6 layers, D^-1/2 (A+I) D^-1/2) and DGP's SGCN
  baseline (2 layers, D^-1 (A+I)) on the symmetric, self-looped induced graph.
* GCN_Dense (DGP's train_gcn_dense.py): :class:`DGP` with one distance group holding every (node, ancestor)
  pair, i.e. one descendant and one ancestor operator over the whole dense graph, no attention.

The graph operators are sparse tensors passed to ``forward``; they are rebuilt from the graph files,
never stored in the state dict.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor, nn


def row_normalized_operator(rows: np.ndarray, cols: np.ndarray, num_nodes: int) -> Tensor:
    """Sparse D^-1 A with A[rows, cols] = 1 (duplicates collapse to 1); empty rows stay zero."""
    rows = np.asarray(rows, dtype=np.int64)
    cols = np.asarray(cols, dtype=np.int64)
    if rows.size:
        flat = np.unique(rows * num_nodes + cols)
        rows, cols = flat // num_nodes, flat % num_nodes
    deg = np.bincount(rows, minlength=num_nodes).astype(np.float32)
    values = 1.0 / deg[rows] if rows.size else np.zeros(0, dtype=np.float32)
    idx = torch.from_numpy(np.stack([rows, cols])) if rows.size else torch.zeros(2, 0, dtype=torch.long)
    return torch.sparse_coo_tensor(idx, torch.as_tensor(values, dtype=torch.float32), (num_nodes, num_nodes),
                                   check_invariants=False).coalesce()


@dataclass
class DenseGraph:
    """DGP's operators: ``descendants[k]`` = D^-1 A_k^T (average of the k-hop descendants),
    ``ancestors[k]`` = D^-1 A_k (average of the k-hop ancestors), k = 0..K-1."""

    descendants: list[Tensor]
    ancestors: list[Tensor]

    @classmethod
    def from_groups(cls, groups: Sequence[np.ndarray], num_nodes: int) -> DenseGraph:
        """Build both operator families from ``(u, ancestor)`` pairs grouped by hop distance."""
        desc, anc = [], []
        for g in groups:
            g = np.asarray(g, dtype=np.int64).reshape(-1, 2)
            anc.append(row_normalized_operator(g[:, 0], g[:, 1], num_nodes))
            desc.append(row_normalized_operator(g[:, 1], g[:, 0], num_nodes))
        return cls(descendants=desc, ancestors=anc)

    def to(self, device: torch.device | str) -> DenseGraph:
        return DenseGraph([a.to(device) for a in self.descendants], [a.to(device) for a in self.ancestors])


def symmetric_adjacency(edges: np.ndarray, num_nodes: int, norm: str = "row") -> Tensor:
    """GCN adjacency of the undirected graph with self-loops (duplicates collapse to 1): ``row`` = D^-1 (A + I)
    (DGP's SGCN, train_gcn_basic.py), ``sym`` = D^-1/2 (A + I) D^-1/2 (GCNZ, Wang et al. CVPR 2018,
    Eq. 2; the GCNZ code's preprocess_adj)."""
    e = np.asarray(edges, dtype=np.int64).reshape(-1, 2)
    loops = np.arange(num_nodes, dtype=np.int64)
    rows = np.concatenate([e[:, 0], e[:, 1], loops])
    cols = np.concatenate([e[:, 1], e[:, 0], loops])
    if norm == "row":
        return row_normalized_operator(rows, cols, num_nodes)
    flat = np.unique(rows * num_nodes + cols)
    rows, cols = flat // num_nodes, flat % num_nodes
    deg = np.bincount(rows, minlength=num_nodes).astype(np.float64)
    values = (1.0 / np.sqrt(deg[rows] * deg[cols])).astype(np.float32)
    return torch.sparse_coo_tensor(torch.from_numpy(np.stack([rows, cols])), torch.from_numpy(values),
                                   (num_nodes, num_nodes), check_invariants=False).coalesce()


def _spmm(op: Tensor, x: Tensor) -> Tensor:
    """Sparse x dense in float32 (sparse kernels have no reduced-precision autocast path)."""
    with torch.autocast(device_type=x.device.type, enabled=False):
        return torch.sparse.mm(op, x.float())


class GroupedPropagation(torch.autograd.Function):
    """sum_k alpha_k A_k S for sparse A_k, accumulated in place into one output buffer (and, backward, one
    gradient buffer and one scratch buffer), instead of one (nodes x dim) tensor per group for A_k S, one for
    its scaling and one per partial sum. On a 32K-node graph each such tensor is 250 MB; allocating and
    freeing them every epoch returned the pages to the OS and faulted them in again (issue 19: half of a
    DGP epoch was system time). Same values as the sum written out, up to float rounding order.

    Gradients: dS = sum_k alpha_k A_k^T G; d alpha_k = <A_k^T G, S> (= <G, A_k S>)."""

    @staticmethod
    def forward(ctx: Any, alpha: Tensor, support: Tensor, *operators: Tensor) -> Tensor:
        out = support.new_zeros(operators[0].shape[0], support.shape[1])
        for k, op in enumerate(operators):
            out.addmm_(op, support, alpha=float(alpha[k]))
        ctx.save_for_backward(alpha, support)
        ctx.operators = operators
        return out

    @staticmethod
    def backward(ctx: Any, grad: Tensor) -> tuple[Tensor | None, ...]:
        alpha, support = ctx.saved_tensors
        grad = grad.contiguous()
        need_alpha, need_support = ctx.needs_input_grad[0], ctx.needs_input_grad[1]
        grad_alpha = torch.zeros_like(alpha) if need_alpha else None
        grad_support = torch.zeros_like(support) if need_support else None
        scratch = torch.empty_like(support) if need_alpha else None
        for k, op in enumerate(ctx.operators):
            op_t = op.t()
            if scratch is not None:
                scratch.zero_().addmm_(op_t, grad)  # A_k^T G
                grad_alpha[k] = torch.dot(scratch.view(-1), support.reshape(-1))  # type: ignore[index]
                if grad_support is not None:
                    grad_support.add_(scratch, alpha=float(alpha[k]))
            elif grad_support is not None:
                grad_support.addmm_(op_t, grad, alpha=float(alpha[k]))
        return (grad_alpha, grad_support, *([None] * len(ctx.operators)))


def grouped_propagation(alpha: Tensor, support: Tensor, operators: Sequence[Tensor]) -> Tensor:
    """sum_k alpha_k A_k S in float32 (`GroupedPropagation`; sparse kernels have no reduced-precision autocast
    path); dense operators fall back to the written-out sum."""
    with torch.autocast(device_type=support.device.type, enabled=False):
        support = support.float()
        if all(op.layout == torch.sparse_coo for op in operators):
            return GroupedPropagation.apply(alpha.float(), support, *operators)
        return sum(alpha[k] * _spmm(op, support) for k, op in enumerate(operators))


class DGPLayer(nn.Module):
    """One DGP phase (spec "Model"): sum_k alpha_k * D_k^-1 A_k (dropout(H) W + b), alpha = softmax(w)."""

    def __init__(self, in_dim: int, out_dim: int, num_groups: int, dropout: float = 0.5,
                 negative_slope: float | None = 0.2, attention: bool = True) -> None:
        super().__init__()
        self.linear = nn.Linear(in_dim, out_dim)
        self.dropout = nn.Dropout(dropout)
        # distance weights w, initialised to ones (uniform alpha); frozen when attention is off
        self.distance_weights = nn.Parameter(torch.ones(num_groups), requires_grad=attention)
        self.negative_slope = negative_slope
        nn.init.xavier_uniform_(self.linear.weight)
        nn.init.zeros_(self.linear.bias)

    def alpha(self) -> Tensor:
        """The attention over hop-distance groups."""
        return torch.softmax(self.distance_weights, dim=0)

    def forward(self, h: Tensor, operators: Sequence[Tensor]) -> Tensor:
        support = self.linear(self.dropout(h)).float()
        # a graph shallower than max_distance has fewer groups: the softmax runs over those present, as in
        # train_gcn_dense_att.py (its edges_set stops at the deepest non-empty distance)
        alpha = torch.softmax(self.distance_weights[: len(operators)], dim=0)
        out = grouped_propagation(alpha, support, operators)
        if self.negative_slope is not None:
            out = F.leaky_relu(out, self.negative_slope)
        return out


class DGP(nn.Module):
    """Dense Graph Propagation: hidden = LeakyReLU(descendant phase(X)), W_hat = ancestor phase(hidden)."""

    def __init__(self, in_dim: int, out_dim: int, hidden: int = 2048, num_groups: int = 5, dropout: float = 0.5,
                 negative_slope: float = 0.2, attention: bool = True, normalize_output: bool = True) -> None:
        super().__init__()
        self.descendant_phase = DGPLayer(in_dim, hidden, num_groups, dropout, negative_slope, attention)
        self.ancestor_phase = DGPLayer(hidden, out_dim, num_groups, dropout, None, attention)
        self.normalize_output = normalize_output

    def forward(self, x: Tensor, graph: DenseGraph) -> Tensor:
        h = self.descendant_phase(x, graph.descendants)
        w = self.ancestor_phase(h, graph.ancestors)
        return F.normalize(w, dim=1) if self.normalize_output else w


class GraphConvolution(nn.Module):
    """GCN layer: A (dropout(H) W) + b, optionally followed by LeakyReLU (DGP's GraphConv adds the bias
    after propagation; GCNZ's layers have no bias)."""

    def __init__(self, in_dim: int, out_dim: int, dropout: float = 0.5, negative_slope: float | None = 0.2,
                 bias: bool = True) -> None:
        super().__init__()
        self.linear = nn.Linear(in_dim, out_dim, bias=False)
        self.bias = nn.Parameter(torch.zeros(out_dim)) if bias else None
        self.dropout = nn.Dropout(dropout) if dropout > 0 else nn.Identity()
        self.negative_slope = negative_slope
        nn.init.xavier_uniform_(self.linear.weight)

    def forward(self, h: Tensor, adjacency: Tensor) -> Tensor:
        out = _spmm(adjacency, self.linear(self.dropout(h)))
        if self.bias is not None:
            out = out + self.bias
        return F.leaky_relu(out, self.negative_slope) if self.negative_slope is not None else out


class GCN(nn.Module):
    """Stacked graph convolutions: SGCN (hidden [2048], dropout before both layers, biases; DGP's
    train_gcn_basic.py) and GCNZ (hidden [2048, 2048, 1024, 1024, 512], dropout before layers 5 and 6 only,
    no biases; the GCNZ code's GCN_dense_mse). ``dropout_layers``: the 1-based layers whose input is
    dropped out (None: every layer)."""

    def __init__(self, in_dim: int, out_dim: int, hidden: Sequence[int] = (2048,), dropout: float = 0.5,
                 negative_slope: float = 0.2, normalize_output: bool = True, bias: bool = True,
                 dropout_layers: Sequence[int] | None = None) -> None:
        super().__init__()
        dims = [in_dim, *hidden, out_dim]
        n = len(dims) - 1
        drop = set(range(1, n + 1)) if dropout_layers is None else set(dropout_layers)
        self.layers = nn.ModuleList(
            GraphConvolution(a, b, dropout if i + 1 in drop else 0.0, negative_slope if i < n - 1 else None, bias)
            for i, (a, b) in enumerate(zip(dims[:-1], dims[1:], strict=True)))
        self.normalize_output = normalize_output

    def forward(self, x: Tensor, adjacency: Tensor) -> Tensor:
        for layer in self.layers:
            x = layer(x, adjacency)
        return F.normalize(x, dim=1) if self.normalize_output else x


class FixedClassifierCNN(nn.Module):
    """Stage two: a CNN backbone (pooled features) under a fixed linear classifier [W | b] (spec "Stage 2")."""

    def __init__(self, backbone: nn.Module, classifiers: Tensor) -> None:
        super().__init__()
        self.backbone = backbone
        self.register_buffer("classifier_weight", classifiers[:, :-1].clone().float(), persistent=False)
        self.register_buffer("classifier_bias", classifiers[:, -1].clone().float(), persistent=False)

    def forward(self, images: Tensor) -> Tensor:
        return F.linear(self.backbone(images), self.classifier_weight, self.classifier_bias)


class ZeroShotModel(nn.Module):
    """The graph network that predicts classifiers, and optionally the CNN that extracts image features.

    ``forward(x=..., ops=...)`` -> predicted classifiers for every node (stage one, "propagate");
    ``forward(images=...)`` -> logits of the fixed seen-class classifiers (stage two, "finetune": DGP
    fine-tunes the backbone under the predicted classifiers, Kampffmeyer et al. CVPR 2019, Sec. 3.4).
    """

    def __init__(self, gnn: nn.Module, cnn: nn.Module | None = None) -> None:
        super().__init__()
        self.gnn = gnn
        self.cnn = cnn
        self.register_buffer("fixed_classifiers", torch.zeros(0), persistent=False)

    def forward(self, x: Tensor | None = None, ops: object = None, images: Tensor | None = None) -> Tensor:
        if images is not None:
            if self.cnn is None or self.fixed_classifiers.numel() == 0:
                raise RuntimeError("stage two needs the CNN and the fixed seen classifiers")
            w = self.fixed_classifiers
            feats = self.cnn(images).float()
            return feats @ w[:, : feats.shape[1]].T + (w[:, -1] if w.shape[1] == feats.shape[1] + 1 else 0.0)
        return self.gnn(x, ops)

    @torch.no_grad()
    def classifiers(self, x: Tensor, ops: object) -> Tensor:
        """Predicted classifiers in eval mode (no dropout)."""
        was = self.gnn.training
        self.gnn.eval()
        out = self.gnn(x, ops)
        self.gnn.train(was)
        return out
