"""V-Net building blocks (the UA-MT / DTC variant): 3×3×3 conv stages, stride-2 down/up convolutions,
additive skip connections, and an encoder-decoder that returns the last 16-channel feature map.

Stage layout with ``n_filters = F`` (DTC spec, "Backbone"):
enc1 1 conv (1→F), down →2F; enc2 2 convs, down →4F; enc3 3 convs, down →8F; enc4 3 convs, down →16F;
enc5 3 convs + Dropout3d; dec6 up →8F + enc4, 3 convs; dec7 up →4F + enc3, 3 convs;
dec8 up →2F + enc2, 2 convs; dec9 up →F + enc1, 1 conv, Dropout3d.
"""

from __future__ import annotations

from typing import Literal

import torch
from torch import nn

Norm = Literal["batchnorm", "groupnorm", "instancenorm", "none"]


def norm_layer(kind: Norm, channels: int) -> nn.Module:
    """The normalisation after each convolution (DTC uses BatchNorm)."""
    if kind == "batchnorm":
        return nn.BatchNorm3d(channels)
    if kind == "groupnorm":
        return nn.GroupNorm(num_groups=min(16, channels), num_channels=channels)
    if kind == "instancenorm":
        return nn.InstanceNorm3d(channels, affine=True)
    if kind == "none":
        return nn.Identity()
    raise ValueError(f"unknown normalisation {kind!r}; choose batchnorm, groupnorm, instancenorm or none")


class ConvBlock(nn.Sequential):
    """``n_stages`` × [Conv3d 3×3×3 (padding 1) → norm → ReLU]; the first conv maps in→out channels."""

    def __init__(self, n_stages: int, in_channels: int, out_channels: int, norm: Norm = "batchnorm") -> None:
        layers: list[nn.Module] = []
        for i in range(n_stages):
            layers += [nn.Conv3d(in_channels if i == 0 else out_channels, out_channels, 3, padding=1),
                       norm_layer(norm, out_channels), nn.ReLU(inplace=True)]
        super().__init__(*layers)


class DownsamplingConvBlock(nn.Sequential):
    """Conv3d kernel 2 stride 2 → norm → ReLU: halves every spatial size."""

    def __init__(self, in_channels: int, out_channels: int, norm: Norm = "batchnorm") -> None:
        super().__init__(nn.Conv3d(in_channels, out_channels, 2, stride=2), norm_layer(norm, out_channels),
                         nn.ReLU(inplace=True))


class UpsamplingDeconvBlock(nn.Sequential):
    """ConvTranspose3d kernel 2 stride 2 → norm → ReLU: doubles every spatial size."""

    def __init__(self, in_channels: int, out_channels: int, norm: Norm = "batchnorm") -> None:
        super().__init__(nn.ConvTranspose3d(in_channels, out_channels, 2, stride=2),
                         norm_layer(norm, out_channels), nn.ReLU(inplace=True))


class VNetEncoder(nn.Module):
    """Five conv stages with four stride-2 downsamplings; returns the five stage outputs (skips + bottleneck)."""

    def __init__(self, in_channels: int = 1, n_filters: int = 16, norm: Norm = "batchnorm",
                 dropout: float = 0.5) -> None:
        super().__init__()
        f = n_filters
        self.block_one = ConvBlock(1, in_channels, f, norm)
        self.block_one_dw = DownsamplingConvBlock(f, 2 * f, norm)
        self.block_two = ConvBlock(2, 2 * f, 2 * f, norm)
        self.block_two_dw = DownsamplingConvBlock(2 * f, 4 * f, norm)
        self.block_three = ConvBlock(3, 4 * f, 4 * f, norm)
        self.block_three_dw = DownsamplingConvBlock(4 * f, 8 * f, norm)
        self.block_four = ConvBlock(3, 8 * f, 8 * f, norm)
        self.block_four_dw = DownsamplingConvBlock(8 * f, 16 * f, norm)
        self.block_five = ConvBlock(3, 16 * f, 16 * f, norm)
        self.dropout = nn.Dropout3d(p=dropout) if dropout > 0 else nn.Identity()

    def forward(self, x: torch.Tensor) -> list[torch.Tensor]:
        x1 = self.block_one(x)
        x2 = self.block_two(self.block_one_dw(x1))
        x3 = self.block_three(self.block_two_dw(x2))
        x4 = self.block_four(self.block_three_dw(x3))
        x5 = self.dropout(self.block_five(self.block_four_dw(x4)))
        return [x1, x2, x3, x4, x5]


class VNetDecoder(nn.Module):
    """Four upsampling stages, each adding the encoder feature of the same scale; returns F channels."""

    def __init__(self, n_filters: int = 16, norm: Norm = "batchnorm", dropout: float = 0.5) -> None:
        super().__init__()
        f = n_filters
        self.block_five_up = UpsamplingDeconvBlock(16 * f, 8 * f, norm)
        self.block_six = ConvBlock(3, 8 * f, 8 * f, norm)
        self.block_six_up = UpsamplingDeconvBlock(8 * f, 4 * f, norm)
        self.block_seven = ConvBlock(3, 4 * f, 4 * f, norm)
        self.block_seven_up = UpsamplingDeconvBlock(4 * f, 2 * f, norm)
        self.block_eight = ConvBlock(2, 2 * f, 2 * f, norm)
        self.block_eight_up = UpsamplingDeconvBlock(2 * f, f, norm)
        self.block_nine = ConvBlock(1, f, f, norm)
        self.dropout = nn.Dropout3d(p=dropout) if dropout > 0 else nn.Identity()

    def forward(self, features: list[torch.Tensor]) -> torch.Tensor:
        x1, x2, x3, x4, x5 = features
        x = self.block_six(self.block_five_up(x5) + x4)
        x = self.block_seven(self.block_six_up(x) + x3)
        x = self.block_eight(self.block_seven_up(x) + x2)
        x = self.block_nine(self.block_eight_up(x) + x1)
        return self.dropout(x)


class VNet(nn.Module):
    """Plain V-Net: encoder, decoder and one 1×1×1 output convolution (``num_outputs`` channels)."""

    downsample_factor = 16  # input sizes must be multiples of 2**4

    def __init__(self, in_channels: int = 1, num_outputs: int = 1, n_filters: int = 16,
                 norm: Norm = "batchnorm", dropout: float = 0.5) -> None:
        super().__init__()
        self.encoder = VNetEncoder(in_channels, n_filters, norm, dropout)
        self.decoder = VNetDecoder(n_filters, norm, dropout)
        self.out_conv = nn.Conv3d(n_filters, num_outputs, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.out_conv(self.decoder(self.encoder(x)))
