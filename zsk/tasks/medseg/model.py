"""The dual-task V-Net of DTC: one shared V-Net encoder-decoder with two 1×1×1 heads, a tanh level-set
head (a signed-distance regression) and a pixel-wise segmentation head (spec "Backbone")."""

from __future__ import annotations

import torch
from torch import nn

from zsk.models.vnet import Norm, VNetDecoder, VNetEncoder


class DualTaskVNet(nn.Module):
    """V-Net with a level-set head (tanh, one channel per foreground class) and a segmentation head.

    Binary tasks (``num_classes == 2``) have one segmentation logit read through a sigmoid; with more
    classes the segmentation head has ``num_classes`` logits read through a softmax, and the level-set
    head still has one channel per foreground class (the multi-class extension of DTC issues #5/#16).
    ``forward`` returns ``(level_set, seg_logits)``.
    """

    def __init__(self, num_classes: int = 2, in_channels: int = 1, n_filters: int = 16,
                 norm: Norm = "batchnorm", dropout: float = 0.5) -> None:
        super().__init__()
        if num_classes < 2:
            raise ValueError("num_classes counts the background and must be >= 2")
        self.num_classes = num_classes
        self.encoder = VNetEncoder(in_channels, n_filters, norm, dropout)
        self.decoder = VNetDecoder(n_filters, norm, dropout)
        self.level_set_head = nn.Conv3d(n_filters, num_classes - 1, 1)
        self.seg_head = nn.Conv3d(n_filters, 1 if num_classes == 2 else num_classes, 1)

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        features = self.decoder(self.encoder(x))
        return torch.tanh(self.level_set_head(features)), self.seg_head(features)


def seg_probabilities(seg_logits: torch.Tensor, num_classes: int) -> torch.Tensor:
    """Class scores of the segmentation head: sigmoid (binary, 1 channel) or softmax over all classes."""
    return torch.sigmoid(seg_logits) if num_classes == 2 else torch.softmax(seg_logits, dim=1)


def foreground_probabilities(seg_logits: torch.Tensor, num_classes: int) -> torch.Tensor:
    """Per-foreground-class probabilities, shape (B, num_classes - 1, ...), matching the level-set head."""
    probs = seg_probabilities(seg_logits, num_classes)
    return probs if num_classes == 2 else probs[:, 1:]


def transform_layer(level_set: torch.Tensor, k: float = 1500.0) -> torch.Tensor:
    """T⁻¹: a level-set map to a soft segmentation, sigmoid(−k · φ) (spec "Transform layer"; inside is negative)."""
    return torch.sigmoid(-k * level_set)
