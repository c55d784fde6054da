"""Alam et al. (TGRS 2019): band-group 3-D CNN features, a deep CRF and a deconvolution refinement.

The paper publishes no sizes; every size below is the spec's reconstruction (shared/specs/hsi.md,
"Re-implementation"), exposed as a recipe option in `config.ModelConfig`.

Vocabulary: a *node* is a pixel p with its w x w x B patch cube; `f_p` its node feature; `U_p(k)` its
unary energy; `V_pq(k, l)` the pairwise energy of the ordered neighbour pair (p, q); `Q` the mean-field
marginals. Energies are "lower is better": probabilities are softmax(-energy).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor, nn

# ----------------------------------------------------------------------------------------------
# Node features: one 3-D CNN branch per spectral band group
# ----------------------------------------------------------------------------------------------


def band_groups(num_bands: int, groups: int) -> list[tuple[int, int]]:
    """Split `num_bands` into `groups` contiguous near-equal [start, end) ranges (103 -> 26, 26, 26, 25)."""
    if groups < 1 or groups > num_bands:
        raise ValueError(f"cannot split {num_bands} bands into {groups} groups")
    sizes = [len(a) for a in np.array_split(np.arange(num_bands), groups)]
    bounds, start = [], 0
    for size in sizes:
        bounds.append((start, start + size))
        start += size
    return bounds


class BandGroupBranch(nn.Module):
    """3-D CNN over one band group's 1 x b x w x w cube: Conv3d-BN-ReLU blocks, then global average pooling.

    `spatial_padding="same"` pads each 3x3 spatial kernel by 1 (the spec's layers); `"valid"` does not,
    which makes the branch fully convolutional over a whole scene (see `forward_dense`).
    """

    def __init__(
        self,
        channels: Sequence[int] = (16, 32, 64),
        spectral_kernels: Sequence[int] = (7, 5, 3),
        spatial_padding: str = "same",
    ) -> None:
        super().__init__()
        if len(channels) != len(spectral_kernels):
            raise ValueError("branch_channels and branch_spectral_kernels need the same length")
        pad = 1 if spatial_padding == "same" else 0
        layers: list[nn.Module] = []
        c_in = 1
        for c_out, k in zip(channels, spectral_kernels, strict=True):
            layers += [
                nn.Conv3d(c_in, c_out, (k, 3, 3), padding=(k // 2, pad, pad), bias=False),
                nn.BatchNorm3d(c_out),
                nn.ReLU(inplace=True),
            ]
            c_in = c_out
        self.layers = nn.Sequential(*layers)
        self.out_channels = c_in
        self.spatial_padding = spatial_padding
        self.shrink = 0 if spatial_padding == "same" else 2 * len(channels)

    def forward(self, x: Tensor) -> Tensor:
        """(N, 1, b, w, w) patch cubes -> (N, C) pooled features."""
        return self.layers(x).mean(dim=(2, 3, 4))

    def forward_dense(self, x: Tensor, patch: int) -> Tensor:
        """(1, 1, b, H + w - 1, W + w - 1) padded tile -> (C, H, W): the patch features of every pixel at once.

        Only for `"valid"` padding, where a patch's output is a window of the tile's output: valid
        convolutions followed by a (w - 2L) x (w - 2L) average give exactly `forward` on each patch.
        """
        if self.spatial_padding != "valid":
            raise ValueError("forward_dense needs spatial_padding='valid'")
        h = self.layers(x).mean(dim=2)[0]  # (C, H', W'): spectral average first
        window = patch - self.shrink
        return F.avg_pool2d(h.unsqueeze(0), window, stride=1)[0] if window > 1 else h


class SpectralGroupFeatures(nn.Module):
    """Node feature f_p: the G band-group branches, concatenated, then Linear-ReLU-Dropout (spec "Nodes and features")."""

    def __init__(
        self,
        num_bands: int,
        patch: int = 7,
        groups: int = 4,
        channels: Sequence[int] = (16, 32, 64),
        spectral_kernels: Sequence[int] = (7, 5, 3),
        feature_dim: int = 256,
        dropout: float = 0.5,
        spatial_padding: str = "same",
    ) -> None:
        super().__init__()
        if spatial_padding == "valid" and patch < 2 * len(channels) + 1:
            raise ValueError(
                f"model.patch={patch} is too small for {len(channels)} valid 3x3 convolutions; "
                f"use a patch of at least {2 * len(channels) + 1} or branch_padding: same"
            )
        self.num_bands = num_bands
        self.patch = patch
        self.groups = band_groups(num_bands, groups)
        self.branches = nn.ModuleList(
            BandGroupBranch(channels, spectral_kernels, spatial_padding) for _ in self.groups
        )
        width = sum(b.out_channels for b in self.branches)
        self.fuse = nn.Sequential(nn.Linear(width, feature_dim), nn.ReLU(inplace=True), nn.Dropout(dropout))
        self.feature_dim = feature_dim
        self.spatial_padding = spatial_padding

    def forward(self, patches: Tensor) -> Tensor:
        """(N, B, w, w) patch cubes -> (N, D) node features."""
        x = patches.unsqueeze(1)
        parts = [branch(x[:, :, a:b]) for branch, (a, b) in zip(self.branches, self.groups, strict=True)]
        return self.fuse(torch.cat(parts, dim=1))

    def forward_dense(self, tile: Tensor) -> Tensor:
        """(B, H + w - 1, W + w - 1) padded tile -> (H, W, D) node features, fully convolutional ("valid" only)."""
        x = tile.unsqueeze(0).unsqueeze(0)
        parts = [branch.forward_dense(x[:, :, a:b], self.patch) for branch, (a, b) in zip(self.branches, self.groups, strict=True)]
        h = torch.cat(parts, dim=0).permute(1, 2, 0)
        return self.fuse(h)


# ----------------------------------------------------------------------------------------------
# CRF potentials
# ----------------------------------------------------------------------------------------------


class UnaryHead(nn.Module):
    """U(y_p; f_p): K unary energies per node from Linear(D -> K)."""

    def __init__(self, feature_dim: int, num_classes: int) -> None:
        super().__init__()
        self.linear = nn.Linear(feature_dim, num_classes)

    def forward(self, f: Tensor) -> Tensor:
        return self.linear(f)


class PairwiseHead(nn.Module):
    """V(y_p, y_q; [f_p, f_q]): K x K energies per ordered pair from an MLP on the concatenated pair feature.

    The first layer on [f_p, f_q] is computed as W_p f_p + W_q f_q + b (the same affine map), so a whole
    scene can project every node once and combine neighbours by shifting (see `CRFGrid`).
    """

    def __init__(self, feature_dim: int, num_classes: int, hidden: int = 256) -> None:
        super().__init__()
        self.num_classes = num_classes
        self.feature_dim = feature_dim
        self.hidden = nn.Linear(2 * feature_dim, hidden)
        self.out = nn.Linear(hidden, num_classes * num_classes)

    def project(self, f: Tensor) -> tuple[Tensor, Tensor]:
        """Node feature -> (its first-layer term as the pair's first node, as the second node)."""
        d = self.feature_dim
        w = self.hidden.weight
        return F.linear(f, w[:, :d], self.hidden.bias), F.linear(f, w[:, d:])

    def combine(self, a_p: Tensor, b_q: Tensor) -> Tensor:
        """Projected terms of p (first) and q (second) -> (..., K, K) energies V_pq(k, l)."""
        v = self.out(torch.relu(a_p + b_q))
        return v.unflatten(-1, (self.num_classes, self.num_classes))

    def forward(self, f_p: Tensor, f_q: Tensor) -> Tensor:
        """(N, D), (N, D) -> (N, K, K) with [k, l] the energy of y_p = k, y_q = l."""
        d, w = self.feature_dim, self.hidden.weight
        return self.combine(F.linear(f_p, w[:, :d], self.hidden.bias), F.linear(f_q, w[:, d:]))


def neighbour_offsets(radius: int) -> list[tuple[int, int]]:
    """Offsets (dy, dx) of the ordered neighbours q = p + (dy, dx) within Chebyshev distance `radius` (8 for r = 1)."""
    return [
        (dy, dx)
        for dy in range(-radius, radius + 1)
        for dx in range(-radius, radius + 1)
        if (dy, dx) != (0, 0)
    ]


def mean_field(unary: Tensor, message: Callable[[Tensor], Tensor], iters: int) -> Tensor:
    """Mean-field marginals Q_p(k) ∝ exp(-U_p(k) - m_p(k)), started at Q = softmax(-U) (Alam et al. 2019, "Inference").

    `unary` is (..., K); `message(Q)` returns m with the same shape. For the energy
    E = Σ_p U_p(y_p) + Σ_(p,q) V_pq(y_p, y_q) over ordered pairs, the mean-field update is
    m_p(k) = Σ_q Σ_l V_pq(k, l) Q_q(l) + Σ_q Σ_l V_qp(l, k) Q_q(l) (`CRFGrid(update="full")`).
    """
    q = torch.softmax(-unary, dim=-1)
    for _ in range(iters):
        q = torch.softmax(-unary - message(q), dim=-1)
    return q


MEAN_FIELD_UPDATES = ("full", "outgoing")


class CRFGrid:
    """Pairwise messages of a whole scene on the pixel grid, with V_pq computed in row chunks.

    Holds the projected node terms (H, W, hidden) of every pixel. The energies V_pq of a chunk are
    computed on its first use and kept for the later mean-field iterations while they fit in
    `cache_bytes` (the energies do not change between iterations, so this gives bit for bit the same
    messages, with each V computed once per mean-field run instead of once per iteration); chunks beyond
    the budget are recomputed on the fly, so scenes of any size fit in memory.

    `update="full"` (default) is the mean-field update of the energy over ordered pairs: node p receives
    V_pq Q_q from each pair (p, q) it starts and V_qp^T Q_q from each pair (q, p) it ends, since y_p appears
    in both. `update="outgoing"` keeps only V_pq Q_q (zsk before issue 11; `model.mean_field_update`).
    """

    def __init__(self, head: PairwiseHead, features: Tensor, radius: int, chunk_pixels: int = 65536,
                 update: str = "full", cache_bytes: int = 0) -> None:
        if update not in MEAN_FIELD_UPDATES:
            raise ValueError(f"unknown mean-field update {update!r}; choose {' or '.join(MEAN_FIELD_UPDATES)}")
        self.head = head
        self.a, self.b = head.project(features)  # (H, W, hidden) each
        self.height, self.width = features.shape[:2]
        self.offsets = neighbour_offsets(radius)
        self.chunk_rows = max(1, chunk_pixels // max(1, self.width))
        self.incoming = update == "full"
        self.cache_bytes = cache_bytes
        self.cached: dict[tuple[int, int], Tensor] = {}
        self.cached_bytes = 0
        self.computed = 0  # energy chunks computed so far (cached or not)

    def energies(self, i: int, r0: int, r1: int, x0: int, x1: int) -> Tensor:
        """V_pq of offset `i` for p in rows r0:r1, cols x0:x1: from the cache, or computed (and cached if it fits)."""
        key = (i, r0)
        v = self.cached.get(key)
        if v is not None:
            return v
        dy, dx = self.offsets[i]
        v = self.head.combine(self.a[r0:r1, x0:x1], self.b[r0 + dy : r1 + dy, x0 + dx : x1 + dx])
        self.computed += 1
        size = v.numel() * v.element_size()
        if self.cached_bytes + size <= self.cache_bytes:
            self.cached[key] = v
            self.cached_bytes += size
        return v

    def message(self, q: Tensor) -> Tensor:
        """(H, W, K) marginals -> (H, W, K) messages (neighbours outside the scene omitted)."""
        h, w = self.height, self.width
        out = torch.zeros_like(q)
        for i, (dy, dx) in enumerate(self.offsets):
            # rows/cols of p whose neighbour p + (dy, dx) lies inside the scene
            y0, y1 = max(0, -dy), min(h, h - dy)
            x0, x1 = max(0, -dx), min(w, w - dx)
            if y0 >= y1 or x0 >= x1:
                continue
            for r0 in range(y0, y1, self.chunk_rows):
                r1 = min(y1, r0 + self.chunk_rows)
                v = self.energies(i, r0, r1, x0, x1)
                q_nb = q[r0 + dy : r1 + dy, x0 + dx : x1 + dx]
                out[r0:r1, x0:x1] += torch.einsum("...kl,...l->...k", v, q_nb)
                if self.incoming:  # the same pair seen from its second node q: V_pq(l, k) Q_p(l)
                    out[r0 + dy : r1 + dy, x0 + dx : x1 + dx] += torch.einsum("...kl,...k->...l", v, q[r0:r1, x0:x1])
        return out


# ----------------------------------------------------------------------------------------------
# Deconvolution refinement (Noh et al. 2015 style encoder-decoder on the CRF's score maps)
# ----------------------------------------------------------------------------------------------


def _conv_bn_relu(c_in: int, c_out: int, transposed: bool = False) -> list[nn.Module]:
    conv = nn.ConvTranspose2d if transposed else nn.Conv2d
    return [conv(c_in, c_out, 3, padding=1, bias=False), nn.BatchNorm2d(c_out), nn.ReLU(inplace=True)]


class DeconvRefinement(nn.Module):
    """Encoder-decoder with max-unpooling and transposed convolutions: [Q, reduce(f)] -> per-pixel class logits.

    Encoder: two conv blocks of width c1, pool; two of width c2, pool (indices kept). Decoder: unpool,
    deconv c2->c2, deconv c2->c1, unpool, two deconvs c1->c1, 1x1 conv to K (spec "Deconvolution refinement").
    """

    def __init__(
        self,
        num_classes: int,
        feature_dim: int,
        reduced_dim: int = 64,
        widths: Sequence[int] = (64, 128),
        residual: bool = True,
    ) -> None:
        super().__init__()
        c1, c2 = widths
        self.residual = residual
        self.reduce = nn.Conv2d(feature_dim, reduced_dim, 1) if reduced_dim > 0 else None
        c_in = num_classes + (reduced_dim if reduced_dim > 0 else 0)
        self.enc1 = nn.Sequential(*_conv_bn_relu(c_in, c1), *_conv_bn_relu(c1, c1))
        self.enc2 = nn.Sequential(*_conv_bn_relu(c1, c2), *_conv_bn_relu(c2, c2))
        self.pool = nn.MaxPool2d(2, return_indices=True)
        self.unpool = nn.MaxUnpool2d(2)
        self.dec2 = nn.Sequential(*_conv_bn_relu(c2, c2, True), *_conv_bn_relu(c2, c1, True))
        self.dec1 = nn.Sequential(*_conv_bn_relu(c1, c1, True), *_conv_bn_relu(c1, c1, True))
        self.classifier = nn.Conv2d(c1, num_classes, 1)
        self.num_classes = num_classes

    stride = 4  # two 2 x 2 poolings: the padded scene and every tile start on this grid

    @property
    def halo(self) -> int:
        """Context (pixels) a tile needs on each side for its output to equal the whole scene's.

        The receptive radius: four 3x3 convs at full resolution (4) and four at half (2 * 4), plus the
        pool/unpool block alignment at each level (1 + 2) = 15, rounded up to a multiple of `stride`.
        """
        radius = 4 * 1 + 4 * 2 + (2 - 1) * 1 + (2 - 1) * 2
        return -(-radius // self.stride) * self.stride

    def forward(self, q: Tensor, features: Tensor) -> Tensor:
        """(N, K, H, W) marginals and (N, D, H, W) node features -> (N, K, H, W) logits.

        The scene is padded (replicate) to a multiple of 4 and the output cropped back. With `residual`
        the logits are log Q plus the network's output, so refinement starts from the CRF's map and learns a
        correction (a reconstruction choice; `model.refine_residual: false` gives the plain encoder-decoder).
        """
        h, w = q.shape[-2:]
        x = q if self.reduce is None else torch.cat([q, self.reduce(features)], dim=1)
        ph, pw = (-h) % 4, (-w) % 4
        if ph or pw:
            x = F.pad(x, (0, pw, 0, ph), mode="replicate")
        e1 = self.enc1(x)
        p1, i1 = self.pool(e1)
        e2 = self.enc2(p1)
        p2, i2 = self.pool(e2)
        d2 = self.dec2(self.unpool(p2, i2, output_size=e2.shape[-2:]))
        d1 = self.dec1(self.unpool(d2, i1, output_size=e1.shape[-2:]))
        logits = self.classifier(d1)[..., :h, :w]
        return logits + torch.log(q.clamp(min=1e-6)) if self.residual else logits


# ----------------------------------------------------------------------------------------------
# The whole model
# ----------------------------------------------------------------------------------------------


class CRFPotentials(nn.Module):
    """Node features with the unary head and (for the CRF) the pairwise head: the part trained piecewise."""

    def __init__(self, features: SpectralGroupFeatures, num_classes: int, pairwise_hidden: int | None) -> None:
        super().__init__()
        self.features = features
        self.unary = UnaryHead(features.feature_dim, num_classes)
        self.pairwise = PairwiseHead(features.feature_dim, num_classes, pairwise_hidden) if pairwise_hidden else None
        if self.pairwise is not None:
            # False when piecewise training had no pair to train the pairwise head on (saved with the weights,
            # so inference never runs mean field with a random pairwise head)
            self.register_buffer("pairwise_trained", torch.tensor(True))

    @property
    def is_pairwise_trained(self) -> bool:
        if self.pairwise is None:
            return False
        flag = self.pairwise_trained
        return flag.device.type == "meta" or bool(flag)  # meta: shapes only (FLOP counting)

    def mark_pairwise_untrained(self) -> None:
        """Record that the pairwise head got no training signal (no neighbouring training pixels)."""
        if self.pairwise is not None:
            self.pairwise_trained.fill_(False)

    def _load_from_state_dict(self, state_dict, prefix, *args, **kwargs) -> None:  # type: ignore[override]
        # checkpoints written before the flag existed trained their pairwise head whenever it was used
        if self.pairwise is not None and prefix + "pairwise_trained" not in state_dict:
            state_dict[prefix + "pairwise_trained"] = torch.tensor(True)
        super()._load_from_state_dict(state_dict, prefix, *args, **kwargs)

    def forward(
        self, patches: Tensor, nodes: Tensor | None = None, pair_p: Tensor | None = None, pair_q: Tensor | None = None
    ) -> tuple[Tensor, Tensor | None]:
        """Patches of the unique pixels of a batch -> (U of `nodes` (N, K), V of the pairs (pair_p, pair_q) (M, K, K)).

        `nodes`, `pair_p`, `pair_q` index rows of `patches`; `nodes=None` means every patch is a node.
        """
        f = self.features(patches)
        unary = self.unary(f if nodes is None else f[nodes])
        if self.pairwise is None or pair_p is None or pair_q is None:
            return unary, None
        return unary, self.pairwise(f[pair_p], f[pair_q])


class HSINet(nn.Module):
    """Patch-CNN (`name="cnn"`) or deep CRF (`name="crf"`) over band-group features, with optional refinement."""

    def __init__(
        self,
        name: str,
        num_bands: int,
        num_classes: int,
        patch: int = 7,
        band_groups: int = 4,
        branch_channels: Sequence[int] = (16, 32, 64),
        branch_spectral_kernels: Sequence[int] = (7, 5, 3),
        branch_padding: str = "same",
        feature_dim: int = 256,
        dropout: float = 0.5,
        pairwise_hidden: int = 256,
        refine: bool = True,
        refine_reduced_dim: int = 64,
        refine_widths: Sequence[int] = (64, 128),
        refine_residual: bool = True,
    ) -> None:
        super().__init__()
        if name not in ("cnn", "crf"):
            raise ValueError(f"unknown model name {name!r}; choose cnn or crf")
        self.name = name
        self.num_classes = num_classes
        features = SpectralGroupFeatures(
            num_bands, patch, band_groups, branch_channels, branch_spectral_kernels, feature_dim, dropout, branch_padding
        )
        self.potentials = CRFPotentials(features, num_classes, pairwise_hidden if name == "crf" else None)
        self.refine = (
            DeconvRefinement(num_classes, feature_dim, refine_reduced_dim, refine_widths, refine_residual) if refine else None
        )

    @property
    def patch(self) -> int:
        return self.potentials.features.patch

    def forward(self, patches: Tensor) -> Tensor:
        """(N, B, w, w) patches -> (N, K) unary energies (what the plain CNN classifies with softmax(-U))."""
        return self.potentials(patches)[0]
