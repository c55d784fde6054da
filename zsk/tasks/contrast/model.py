"""MetAug's networks (Li et al., "MetAug: Contrastive Learning via Meta Feature Augmentation", ICML 2022).

Official code: jiangmengli/metaug, `models/alexnet_MetAug.py` (AlexNet-half views and `metagen_net`),
`NCE/NCEAverage_MetAug.py` (memory bank), `models/LinearModel.py` (linear classifier). The module and
parameter names follow the official ones (`l_to_ab`, `ab_to_l`, `ori`, `conv_block_<i>`, `fc6`..`fc8`,
`fc1`..`fc3`) so that weights map one to one.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import Tensor, nn

VIEWS = ("l", "ab", "ori")  # the Lab views: L (1 channel), ab (2 channels), the whole image (3 channels)
VIEW_CHANNELS = {"l": 1, "ab": 2, "ori": 3}
ENCODER_NAMES = {"l": "l_to_ab", "ab": "ab_to_l", "ori": "ori"}  # official attribute names
LAYERS = {"conv5": 5, "fc6": 6, "fc7": 7, "fc8": 8}


def l2_normalize(x: Tensor) -> Tensor:
    """x / ||x||_2 per row (the official `Normalize(2)`, with a floor against division by zero)."""
    return x / x.norm(dim=1, keepdim=True).clamp_min(1e-12)


def _conv_out(size: int, kernel: int, stride: int, pad: int) -> int:
    return (size + 2 * pad - kernel) // stride + 1


def alexnet_spatial(image_size: int) -> int:
    """Spatial size after conv5's max-pool for a square input (6 at 224 x 224)."""
    s = _conv_out(image_size, 11, 4, 2)
    s = _conv_out(s, 3, 2, 0)  # pool1
    s = _conv_out(s, 3, 2, 0)  # conv2 keeps the size; pool2
    s = _conv_out(s, 3, 2, 0)  # conv3-5 keep the size; pool5
    return s


class AlexNetHalf(nn.Module):
    """CMC's AlexNet-half view encoder: conv1..conv5 (BN, ReLU, max-pools after 1, 2, 5), fc6, fc7 (BN, ReLU) and
    fc8 -> L2-normalised embedding (official `alexnet_half`)."""

    def __init__(self, in_channels: int, channels: Sequence[int] = (48, 128, 192, 192, 128), fc_dim: int = 2048,
                 feat_dim: int = 128, image_size: int = 224) -> None:
        super().__init__()
        c1, c2, c3, c4, c5 = channels
        self.spatial = alexnet_spatial(image_size)
        if self.spatial < 1:
            raise ValueError(f"image_size {image_size} is too small for AlexNet-half (at least 64 pixels)")

        def block(cin: int, cout: int, k: int, s: int, p: int, pool: bool) -> nn.Sequential:
            layers: list[nn.Module] = [nn.Conv2d(cin, cout, k, s, p, bias=False), nn.BatchNorm2d(cout),
                                       nn.ReLU(inplace=True)]
            if pool:
                layers.append(nn.MaxPool2d(3, 2))
            return nn.Sequential(*layers)

        self.conv_block_1 = block(in_channels, c1, 11, 4, 2, True)
        self.conv_block_2 = block(c1, c2, 5, 1, 2, True)
        self.conv_block_3 = block(c2, c3, 3, 1, 1, False)
        self.conv_block_4 = block(c3, c4, 3, 1, 1, False)
        self.conv_block_5 = block(c4, c5, 3, 1, 1, True)
        self.fc6 = nn.Sequential(nn.Linear(c5 * self.spatial**2, fc_dim), nn.BatchNorm1d(fc_dim), nn.ReLU(inplace=True))
        self.fc7 = nn.Sequential(nn.Linear(fc_dim, fc_dim), nn.BatchNorm1d(fc_dim), nn.ReLU(inplace=True))
        self.fc8 = nn.Sequential(nn.Linear(fc_dim, feat_dim))
        self.conv5_channels = c5
        self.fc_dim = fc_dim

    def forward(self, x: Tensor, layer: int = 8, keep: int | None = None) -> Tensor | tuple[Tensor, Tensor]:
        """The activation after `layer` (5: conv5 map, 6/7: fc6/fc7, 8: the L2-normalised embedding); with
        `keep`, also the activation after layer `keep` (one pass for the embedding and an online probe)."""
        kept = None
        for i, blk in enumerate((self.conv_block_1, self.conv_block_2, self.conv_block_3, self.conv_block_4,
                                 self.conv_block_5, None, None), start=1):
            x = blk(x) if blk is not None else (self.fc6(x.flatten(1)) if i == 6 else self.fc7(x))
            if i == keep:
                kept = x
            if layer == i:
                return x if keep is None else (x, kept)
        x = l2_normalize(self.fc8(x))
        return x if keep is None else (x, kept)


class ResNetView(nn.Module):
    """A CMC-style ResNet view encoder (torchvision ResNet-18/50 with `in_channels` inputs, fc -> `feat_dim`,
    L2-normalised); `layer` "pool" gives the average-pooled trunk features."""

    def __init__(self, in_channels: int, depth: str, feat_dim: int) -> None:
        super().__init__()
        import torchvision

        net = getattr(torchvision.models, depth)(weights=None)
        net.conv1 = nn.Conv2d(in_channels, 64, 7, 2, 3, bias=False)
        self.pool_dim = net.fc.in_features
        net.fc = nn.Identity()
        self.trunk = net
        self.fc = nn.Linear(self.pool_dim, feat_dim)

    def forward(self, x: Tensor, layer: int = 8, keep: int | None = None) -> Tensor | tuple[Tensor, Tensor]:
        h = self.trunk(x)
        if layer < 8:
            return h
        out = l2_normalize(self.fc(h))
        return out if keep is None else (out, h)


class MultiViewEncoder(nn.Module):
    """The three view encoders of MetAug (official `alexnet`): L, ab and the whole Lab image."""

    def __init__(self, backbone: str, channels: Sequence[int], fc_dim: int, feat_dim: int, image_size: int) -> None:
        super().__init__()
        for view in VIEWS:
            cin = VIEW_CHANNELS[view]
            enc: nn.Module = (AlexNetHalf(cin, channels, fc_dim, feat_dim, image_size) if backbone == "alexnet"
                              else ResNetView(cin, backbone, feat_dim))
            self.add_module(ENCODER_NAMES[view], enc)
        self.backbone = backbone

    def view(self, name: str) -> nn.Module:
        return getattr(self, ENCODER_NAMES[name])

    def forward(self, x: Tensor, layer: int = 8) -> tuple[Tensor, Tensor, Tensor]:
        """(B, 3, H, W) normalised Lab -> (feat_l, feat_ab, feat_ori) at `layer`."""
        lum, ab = torch.split(x, [1, 2], dim=1)
        return self.l_to_ab(lum, layer), self.ab_to_l(ab, layer), self.ori(x, layer)

    def with_features(self, x: Tensor, keep: int) -> tuple[tuple[Tensor, Tensor, Tensor], Tensor]:
        """The three embeddings and, from the same pass, the views' activations after layer `keep`
        (concatenated; conv maps flattened), for the online probe."""
        lum, ab = torch.split(x, [1, 2], dim=1)
        outs = [enc(t, 8, keep) for enc, t in ((self.l_to_ab, lum), (self.ab_to_l, ab), (self.ori, x))]
        return (outs[0][0], outs[1][0], outs[2][0]), torch.cat([_flat(o[1]) for o in outs], 1)


class MetaGenerator(nn.Module):
    """A meta feature-augmentation generator (official `metagen_net`): 128 -> 2048 (BN, ReLU) -> 2048 (BN, ReLU)
    -> 128, L2-normalised; maps a view's embedding to its augmented ("hard") embedding."""

    def __init__(self, feat_dim: int = 128, hidden: int = 2048) -> None:
        super().__init__()
        self.fc1 = nn.Sequential(nn.Linear(feat_dim, hidden), nn.BatchNorm1d(hidden), nn.ReLU(inplace=True))
        self.fc2 = nn.Sequential(nn.Linear(hidden, hidden), nn.BatchNorm1d(hidden), nn.ReLU(inplace=True))
        self.fc3 = nn.Sequential(nn.Linear(hidden, feat_dim))

    def forward(self, x: Tensor, layer: int = 3) -> Tensor:
        x = self.fc1(x)
        if layer == 1:
            return x
        x = self.fc2(x)
        if layer == 2:
            return x
        return l2_normalize(self.fc3(x))


class MemoryBank(nn.Module):
    """One N x D memory bank per view (official `NCEAverage`): initialised uniform in +-1/sqrt(D/3), updated with
    momentum and re-normalised; its rows are the positives (index 0) and sampled negatives of each anchor."""

    def __init__(self, size: int, feat_dim: int, momentum: float = 0.5) -> None:
        super().__init__()
        stdv = 1.0 / math.sqrt(feat_dim / 3)
        for view in VIEWS:
            self.register_buffer(f"memory_{view}", torch.rand(size, feat_dim).mul_(2 * stdv).add_(-stdv))
        self.momentum = momentum

    @property
    def size(self) -> int:
        return int(self.memory_l.shape[0])

    def bank(self, view: str) -> Tensor:
        return getattr(self, f"memory_{view}")

    def draw(self, index: Tensor, k: int, generator: torch.Generator | None = None) -> Tensor:
        """(B,) sample indices -> (B, K + 1) bank rows: the sample itself first, then K uniform draws."""
        idx = torch.randint(0, self.size, (index.shape[0], k + 1), device=index.device, generator=generator)
        idx[:, 0] = index
        return idx

    @torch.no_grad()
    def update(self, feats: Sequence[Tensor], index: Tensor) -> None:
        """m_i <- normalise(momentum * m_i + (1 - momentum) * f_i) for each view's bank."""
        for view, f in zip(VIEWS, feats, strict=True):
            bank = self.bank(view)
            pos = bank.index_select(0, index) * self.momentum + f.detach().to(bank.dtype) * (1 - self.momentum)
            bank.index_copy_(0, index, pos / pos.pow(2).sum(1, keepdim=True).pow(0.5))


class LinearProbe(nn.Module):
    """The linear classifier of the linear evaluation (official `LinearClassifierAlexNet*`): weights N(0, 0.01),
    bias 0, on flattened (conv5: adaptive max-pooled to 6 x 6 per view) frozen features."""

    def __init__(self, in_dim: int, num_classes: int) -> None:
        super().__init__()
        self.classifier = nn.Linear(in_dim, num_classes)
        nn.init.normal_(self.classifier.weight, 0.0, 0.01)
        nn.init.zeros_(self.classifier.bias)

    def forward(self, feats: Tensor) -> Tensor:
        return self.classifier(feats)


class MetAugNet(nn.Module):
    """Everything a MetAug run trains and evaluates: the view encoders, one generator per view, the memory bank,
    the linear probe (and optionally the online probe)."""

    def __init__(self, backbone: str, channels: Sequence[int], fc_dim: int, feat_dim: int, generator_hidden: int,
                 image_size: int, n_data: int, num_classes: int, memory_momentum: float = 0.5,
                 layer: str = "fc6", features: str = "encoder", online_probe: bool = False) -> None:
        super().__init__()
        self.encoder = MultiViewEncoder(backbone, channels, fc_dim, feat_dim, image_size)
        self.generators = nn.ModuleDict({v: MetaGenerator(feat_dim, generator_hidden) for v in VIEWS})
        self.memory = MemoryBank(n_data, feat_dim, memory_momentum)
        self.layer = layer
        self.features = features
        self.probe = LinearProbe(self.probe_dim(layer, features), num_classes)
        self.online_probe = LinearProbe(self.probe_dim(layer, "encoder"), num_classes) if online_probe else None

    def probe_dim(self, layer: str, features: str) -> int:
        """Width of the probe's input for `layer` (and the generators' activations when asked)."""
        enc = self.encoder.view("l")
        if layer == "pool":
            return 3 * enc.pool_dim
        if layer == "conv5":
            return 3 * enc.conv5_channels * 36
        gen = 3 * self.generators["l"].fc2[0].out_features if features == "encoder+generator" else 0
        return 3 * enc.fc_dim + gen

    def encoder_parameters(self) -> list[nn.Parameter]:
        return list(self.encoder.parameters())

    def generator_parameters(self) -> list[nn.Parameter]:
        return list(self.generators.parameters())

    def probe_features(self, x: Tensor) -> Tensor:
        """(B, 3, H, W) -> the linear probe's (B, D) input at `self.layer`, the views concatenated (conv5: each
        adaptive max-pooled to 6 x 6, CMC's conv protocol; with `encoder+generator`, each generator's layer-2
        activations on the view's embedding follow)."""
        if self.layer == "pool":
            return torch.cat([self.encoder.view(v).trunk(t) for v, t in zip(VIEWS, _split_views(x), strict=True)], 1)
        feats = list(self.encoder(x, LAYERS[self.layer]))
        if self.layer == "conv5":
            return torch.cat([F.adaptive_max_pool2d(f, 6).flatten(1) for f in feats], 1)
        if self.features == "encoder+generator":
            emb = self.encoder(x, 8)
            feats += [self.generators[v](e, 2) for v, e in zip(VIEWS, emb, strict=True)]
        return torch.cat(feats, 1)

    def embed(self, x: Tensor) -> Tensor:
        """(B, 3, H, W) -> (B, 3 * feat_dim): the three L2-normalised view embeddings, concatenated."""
        return torch.cat(self.encoder(x, 8), 1)

    def forward(self, x: Tensor) -> Tensor:
        """Linear-probe logits of a batch of normalised Lab images."""
        return self.probe(self.probe_features(x))


def _flat(f: Tensor) -> Tensor:
    """A probe input from one view's activation: conv maps adaptive max-pooled to 6 x 6, then flattened."""
    return f if f.dim() == 2 else F.adaptive_max_pool2d(f, 6).flatten(1)


def _split_views(x: Tensor) -> tuple[Tensor, Tensor, Tensor]:
    lum, ab = torch.split(x, [1, 2], dim=1)
    return lum, ab, x
