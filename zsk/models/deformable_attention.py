"""Multi-scale deformable attention (Zhu et al., "Deformable DETR", ICLR 2021, Eq. 3) in pure PyTorch.

The sampling is done with :func:`torch.nn.functional.grid_sample` (bilinear, zero padding,
``align_corners=False``), which is what the compiled ``MSDeformAttn`` CUDA op of the reference code
(fundamentalvision/Deformable-DETR ``models/ops``, reused by Mask2Former and LGFormer) computes; no
extension has to be built. :func:`ms_deform_attn_loop` is a direct per-point implementation kept for
tests.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import Tensor, nn


def ms_deform_attn(value: Tensor, spatial_shapes: Tensor | list[tuple[int, int]], sampling_locations: Tensor,
                   attention_weights: Tensor) -> Tensor:
    """Sum over levels and points of attention-weighted bilinear samples (Deformable DETR Eq. 3).

    ``value`` (N, S, M, D) holds the flattened levels (S = sum of H_l·W_l) for M heads;
    ``sampling_locations`` (N, Lq, M, L, P, 2) are (x, y) in [0, 1] of each level;
    ``attention_weights`` (N, Lq, M, L, P). Returns (N, Lq, M·D)."""
    n, _, m, d = value.shape
    _, lq, _, num_levels, num_points, _ = sampling_locations.shape
    shapes = [(int(h), int(w)) for h, w in (spatial_shapes.tolist() if isinstance(spatial_shapes, Tensor)
                                            else spatial_shapes)]
    values = value.split([h * w for h, w in shapes], dim=1)
    grids = 2 * sampling_locations - 1  # grid_sample's [-1, 1] coordinates
    samples = []
    for lvl, (h, w) in enumerate(shapes):
        v = values[lvl].flatten(2).transpose(1, 2).reshape(n * m, d, h, w)
        g = grids[:, :, :, lvl].transpose(1, 2).flatten(0, 1)  # (N·M, Lq, P, 2)
        samples.append(F.grid_sample(v, g, mode="bilinear", padding_mode="zeros", align_corners=False))
    sampled = torch.stack(samples, dim=-2).flatten(-2)  # (N·M, D, Lq, L·P)
    weights = attention_weights.transpose(1, 2).reshape(n * m, lq, num_levels * num_points)
    # the weighted sum as a product (a batched matrix-vector product per query), so FLOP counters see it
    out = torch.einsum("bdqk,bqk->bdq", sampled, weights)  # (N·M, D, Lq)
    return out.reshape(n, m * d, lq).transpose(1, 2).contiguous()


def ms_deform_attn_loop(value: Tensor, spatial_shapes: list[tuple[int, int]], sampling_locations: Tensor,
                        attention_weights: Tensor) -> Tensor:
    """The same sum computed point by point with explicit bilinear interpolation (pixel centres at
    (i + 0.5) / size, zero outside the map): slow, for checking :func:`ms_deform_attn`."""
    n, _, m, d = value.shape
    _, lq, _, num_levels, num_points, _ = sampling_locations.shape
    starts = [0]
    for h, w in spatial_shapes:
        starts.append(starts[-1] + h * w)
    out = value.new_zeros(n, lq, m, d)
    for b in range(n):
        for q in range(lq):
            for head in range(m):
                for lvl, (h, w) in enumerate(spatial_shapes):
                    fmap = value[b, starts[lvl]:starts[lvl + 1], head].view(h, w, d)
                    for p in range(num_points):
                        x = float(sampling_locations[b, q, head, lvl, p, 0]) * w - 0.5
                        y = float(sampling_locations[b, q, head, lvl, p, 1]) * h - 0.5
                        x0, y0 = math.floor(x), math.floor(y)
                        acc = value.new_zeros(d)
                        for yy, xx in ((y0, x0), (y0, x0 + 1), (y0 + 1, x0), (y0 + 1, x0 + 1)):
                            if 0 <= yy < h and 0 <= xx < w:
                                acc = acc + (1 - abs(x - xx)) * (1 - abs(y - yy)) * fmap[yy, xx]
                        out[b, q, head] += attention_weights[b, q, head, lvl, p] * acc
    return out.reshape(n, lq, m * d)


class MSDeformAttn(nn.Module):
    """Multi-scale deformable attention module (Deformable DETR Sec. 4.1): each query predicts
    ``n_points`` sampling offsets per head and level around its reference point and softmax weights
    over the ``n_levels · n_points`` samples. Parameter names and initialisation follow the reference
    ``MSDeformAttn`` so its weights load unchanged."""

    def __init__(self, d_model: int = 256, n_levels: int = 4, n_heads: int = 8, n_points: int = 4) -> None:
        super().__init__()
        if d_model % n_heads:
            raise ValueError(f"d_model ({d_model}) must be divisible by n_heads ({n_heads})")
        self.d_model, self.n_levels, self.n_heads, self.n_points = d_model, n_levels, n_heads, n_points
        self.sampling_offsets = nn.Linear(d_model, n_heads * n_levels * n_points * 2)
        self.attention_weights = nn.Linear(d_model, n_heads * n_levels * n_points)
        self.value_proj = nn.Linear(d_model, d_model)
        self.output_proj = nn.Linear(d_model, d_model)
        self.reset_parameters()

    def reset_parameters(self) -> None:
        """Offsets start on a ring of directions (one per head), point i at distance i + 1; uniform
        attention weights; Xavier projections (Deformable DETR's initialisation)."""
        nn.init.constant_(self.sampling_offsets.weight, 0.0)
        thetas = torch.arange(self.n_heads, dtype=torch.float32) * (2.0 * math.pi / self.n_heads)
        grid = torch.stack([thetas.cos(), thetas.sin()], -1)
        grid = (grid / grid.abs().max(-1, keepdim=True)[0]).view(self.n_heads, 1, 1, 2)
        grid = grid.repeat(1, self.n_levels, self.n_points, 1)
        grid = grid * torch.arange(1, self.n_points + 1, dtype=torch.float32).view(1, 1, -1, 1)
        with torch.no_grad():
            self.sampling_offsets.bias.copy_(grid.reshape(-1))
        nn.init.constant_(self.attention_weights.weight, 0.0)
        nn.init.constant_(self.attention_weights.bias, 0.0)
        nn.init.xavier_uniform_(self.value_proj.weight)
        nn.init.constant_(self.value_proj.bias, 0.0)
        nn.init.xavier_uniform_(self.output_proj.weight)
        nn.init.constant_(self.output_proj.bias, 0.0)

    def forward(self, query: Tensor, reference_points: Tensor, input_flatten: Tensor, spatial_shapes: Tensor,
                level_start_index: Tensor | None = None, input_padding_mask: Tensor | None = None) -> Tensor:
        """``query`` (N, Lq, C); ``reference_points`` (N, Lq, L, 2) normalised (x, y); ``input_flatten``
        (N, S, C) the levels flattened; ``spatial_shapes`` (L, 2) as (H, W). ``level_start_index`` is
        accepted for signature compatibility (the split uses the shapes). Returns (N, Lq, C)."""
        n, lq, _ = query.shape
        value = self.value_proj(input_flatten)
        if input_padding_mask is not None:
            value = value.masked_fill(input_padding_mask[..., None], 0.0)
        value = value.view(n, -1, self.n_heads, self.d_model // self.n_heads)
        offsets = self.sampling_offsets(query).view(n, lq, self.n_heads, self.n_levels, self.n_points, 2)
        weights = self.attention_weights(query).view(n, lq, self.n_heads, self.n_levels * self.n_points)
        weights = weights.softmax(-1).view(n, lq, self.n_heads, self.n_levels, self.n_points)
        if reference_points.shape[-1] != 2:
            raise ValueError(f"reference_points must end in 2 (x, y), got {tuple(reference_points.shape)}")
        normalizer = torch.stack([spatial_shapes[..., 1], spatial_shapes[..., 0]], -1).to(offsets.dtype)
        locations = reference_points[:, :, None, :, None, :] + offsets / normalizer[None, None, None, :, None, :]
        return self.output_proj(ms_deform_attn(value, spatial_shapes, locations, weights))
