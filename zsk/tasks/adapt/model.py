"""DeepLabv3+ on a deep-stem ResNet with a representation head and an aux head, and the mean-teacher
pair STAL trains (Guan & Yuan, arXiv 2301.13361; official code licongguan/ILM-ASSL, core/models/*.py,
inherited from U2PL). Module and attribute names follow the official code so its state dicts (and U2PL's
ImageNet ``resnet101.pth``) load unchanged."""

from __future__ import annotations

import copy
from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import Tensor, nn


def conv3x3(cin: int, cout: int, stride: int = 1, dilation: int = 1) -> nn.Conv2d:
    return nn.Conv2d(cin, cout, 3, stride=stride, padding=dilation, dilation=dilation, bias=False)


class Bottleneck(nn.Module):
    """ResNet v1.5 bottleneck (stride on the 3x3 conv)."""

    expansion = 4

    def __init__(self, inplanes: int, planes: int, stride: int = 1, downsample: nn.Module | None = None,
                 dilation: int = 1) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(inplanes, planes, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(planes)
        self.conv2 = conv3x3(planes, planes, stride, dilation)
        self.bn2 = nn.BatchNorm2d(planes)
        self.conv3 = nn.Conv2d(planes, planes * 4, 1, bias=False)
        self.bn3 = nn.BatchNorm2d(planes * 4)
        self.relu = nn.ReLU(inplace=True)
        self.downsample = downsample

    def forward(self, x: Tensor) -> Tensor:
        out = self.relu(self.bn1(self.conv1(x)))
        out = self.relu(self.bn2(self.conv2(out)))
        out = self.bn3(self.conv3(out))
        identity = self.downsample(x) if self.downsample is not None else x
        return self.relu(out + identity)


class DeepStemResNet(nn.Module):
    """ResNet with the 3-conv deep stem (64-64-128), output stride 8 (layers 3-4 dilated) and the
    multi-grid (2, 2, 4) of layer4; returns the four stage outputs (U2PL/STAL ``resnet.py`` with fpn)."""

    def __init__(self, layers: Sequence[int] = (3, 4, 23, 3), base_width: int = 64, stem_width: int = 64,
                 multi_grid: bool = True, zero_init_residual: bool = True) -> None:
        super().__init__()
        self.inplanes = 2 * stem_width
        self.dilation = 1
        self.conv1 = nn.Sequential(
            conv3x3(3, stem_width, stride=2), nn.BatchNorm2d(stem_width), nn.ReLU(inplace=True),
            conv3x3(stem_width, stem_width), nn.BatchNorm2d(stem_width), nn.ReLU(inplace=True),
            conv3x3(stem_width, self.inplanes))
        self.bn1 = nn.BatchNorm2d(self.inplanes)
        self.relu = nn.ReLU(inplace=True)
        self.maxpool = nn.MaxPool2d(3, stride=2, padding=1, ceil_mode=True)
        b = base_width
        self.layer1 = self._make_layer(b, layers[0])
        self.layer2 = self._make_layer(2 * b, layers[1], stride=2)
        self.layer3 = self._make_layer(4 * b, layers[2], stride=2, dilate=True)
        self.layer4 = self._make_layer(8 * b, layers[3], stride=2, dilate=True, multi_grid=multi_grid)
        for m in self.modules():
            if isinstance(m, nn.Conv2d):
                nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")
            elif isinstance(m, nn.BatchNorm2d):
                nn.init.constant_(m.weight, 1)
                nn.init.constant_(m.bias, 0)
        if zero_init_residual:
            for m in self.modules():
                if isinstance(m, Bottleneck):
                    nn.init.constant_(m.bn3.weight, 0)

    def _make_layer(self, planes: int, blocks: int, stride: int = 1, dilate: bool = False,
                    multi_grid: bool = False) -> nn.Sequential:
        previous = self.dilation
        if dilate:
            self.dilation *= stride
            stride = 1
        downsample = None
        if stride != 1 or self.inplanes != planes * 4:
            downsample = nn.Sequential(nn.Conv2d(self.inplanes, planes * 4, 1, stride=stride, bias=False),
                                       nn.BatchNorm2d(planes * 4))
        grids = [2, 2, 4] if multi_grid else [1] * blocks
        # the first block uses the previous dilation x grid[0], the others the new one x grid[i] (official)
        layers = [Bottleneck(self.inplanes, planes, stride, downsample, previous * grids[0])]
        self.inplanes = planes * 4
        layers += [Bottleneck(self.inplanes, planes, dilation=self.dilation * grids[i]) for i in range(1, blocks)]
        return nn.Sequential(*layers)

    def forward(self, x: Tensor) -> list[Tensor]:
        x = self.maxpool(self.relu(self.bn1(self.conv1(x))))
        x1 = self.layer1(x)
        x2 = self.layer2(x1)
        x3 = self.layer3(x2)
        return [x1, x2, x3, self.layer4(x3)]


class PooledBatchNorm(nn.BatchNorm2d):
    """BatchNorm of the ASPP image-pooling branch. With one image per process that branch holds one value
    per channel, which BatchNorm cannot normalise (STAL's unlabelled student pass has batch 1 and relies on
    SyncBN over several GPUs); then the running statistics are used for that pass."""

    def forward(self, x: Tensor) -> Tensor:
        if self.training and x.shape[0] * x.shape[2] * x.shape[3] == 1:
            return F.batch_norm(x, self.running_mean, self.running_var, self.weight, self.bias, False, 0.0, self.eps)
        return super().forward(x)


def _conv_bn_relu(cin: int, cout: int, k: int, dilation: int = 1, bias: bool = False,
                  norm: type[nn.BatchNorm2d] = nn.BatchNorm2d) -> list[nn.Module]:
    return [nn.Conv2d(cin, cout, k, padding=dilation * (k // 2), dilation=dilation, bias=bias), norm(cout),
            nn.ReLU(inplace=True)]


class ASPP(nn.Module):
    """Image pooling + 1x1 + three dilated 3x3 branches, concatenated (Chen et al. 2017)."""

    def __init__(self, cin: int, inner: int = 256, dilations: Sequence[int] = (12, 24, 36)) -> None:
        super().__init__()
        self.conv1 = nn.Sequential(nn.AdaptiveAvgPool2d(1), *_conv_bn_relu(cin, inner, 1, norm=PooledBatchNorm))
        self.conv2 = nn.Sequential(*_conv_bn_relu(cin, inner, 1))
        self.conv3 = nn.Sequential(*_conv_bn_relu(cin, inner, 3, dilations[0]))
        self.conv4 = nn.Sequential(*_conv_bn_relu(cin, inner, 3, dilations[1]))
        self.conv5 = nn.Sequential(*_conv_bn_relu(cin, inner, 3, dilations[2]))
        self.out_planes = 5 * inner

    def forward(self, x: Tensor) -> Tensor:
        h, w = x.shape[-2:]
        pooled = F.interpolate(self.conv1(x), size=(h, w), mode="bilinear", align_corners=True)
        return torch.cat([pooled, self.conv2(x), self.conv3(x), self.conv4(x), self.conv5(x)], 1)


def _two_conv_head(cin: int, width: int, cout: int) -> nn.Sequential:
    return nn.Sequential(*_conv_bn_relu(cin, width, 3, bias=True), nn.Dropout2d(0.1),
                         *_conv_bn_relu(width, width, 3, bias=True), nn.Dropout2d(0.1),
                         nn.Conv2d(width, cout, 1))


class DeepLabV3PlusDecoder(nn.Module):
    """ASPP on layer4, 3x3 head + dropout, upsampled to layer1 and concatenated with its 1x1 projection;
    the classifier and the parallel representation head (the U2PL embedding) read the concatenation."""

    def __init__(self, cin: int, low_in: int, num_classes: int, inner: int = 256,
                 dilations: Sequence[int] = (12, 24, 36)) -> None:
        super().__init__()
        self.low_conv = nn.Sequential(nn.Conv2d(low_in, inner, 1), nn.BatchNorm2d(inner), nn.ReLU(inplace=True))
        self.aspp = ASPP(cin, inner, dilations)
        self.head = nn.Sequential(*_conv_bn_relu(self.aspp.out_planes, inner, 3), nn.Dropout2d(0.1))
        self.classifier = _two_conv_head(2 * inner, inner, num_classes)
        self.representation = _two_conv_head(2 * inner, inner, inner)

    def forward(self, feats: Sequence[Tensor]) -> dict[str, Tensor]:
        x1, _, _, x4 = feats
        low = self.low_conv(x1)
        high = F.interpolate(self.head(self.aspp(x4)), size=low.shape[-2:], mode="bilinear", align_corners=True)
        cat = torch.cat([low, high], 1)
        return {"pred": self.classifier(cat), "rep": self.representation(cat)}


class AuxModule(nn.Module):
    """The auxiliary classifier on layer3 (loss weight 0.4)."""

    def __init__(self, cin: int, num_classes: int, width: int = 256) -> None:
        super().__init__()
        self.aux = nn.Sequential(nn.Conv2d(cin, width, 3, padding=1), nn.BatchNorm2d(width), nn.ReLU(inplace=True),
                                 nn.Dropout2d(0.1), nn.Conv2d(width, num_classes, 1))

    def forward(self, x: Tensor) -> Tensor:
        return self.aux(x)


class DeepLabV3Plus(nn.Module):
    """The STAL segmentation network: ``forward`` gives ``pred`` and ``rep`` at 1/4 resolution and
    ``aux`` at 1/8 (official ``ModelBuilder``)."""

    def __init__(self, num_classes: int = 19, layers: Sequence[int] = (3, 4, 23, 3), base_width: int = 64,
                 stem_width: int = 64, decoder_channels: int = 256, dilations: Sequence[int] = (12, 24, 36),
                 multi_grid: bool = True, zero_init_residual: bool = True) -> None:
        super().__init__()
        self.encoder = DeepStemResNet(layers, base_width, stem_width, multi_grid, zero_init_residual)
        self.decoder = DeepLabV3PlusDecoder(32 * base_width, 4 * base_width, num_classes, decoder_channels, dilations)
        self.auxor = AuxModule(16 * base_width, num_classes, decoder_channels)

    def forward(self, x: Tensor) -> dict[str, Tensor]:
        feats = self.encoder(x)
        out = self.decoder(feats)
        out["aux"] = self.auxor(feats[2])
        return out


class MeanTeacher(nn.Module):
    """Student and EMA teacher (Tarvainen & Valpola 2017), plus the per-class confidence ``class_conf``
    that drives ACP, ACM and the class-sampling mask (AEL). Calling the module runs the teacher, the
    network STAL evaluates and selects with."""

    def __init__(self, student: DeepLabV3Plus, num_classes: int, seed: int = 0) -> None:
        super().__init__()
        self.student = student
        self.teacher = copy.deepcopy(student)
        for p in self.teacher.parameters():
            p.requires_grad_(False)
        # official: torch.rand(3, C) at start (row 0 is the one used)
        g = torch.Generator().manual_seed(seed)
        self.register_buffer("class_conf", torch.rand(num_classes, generator=g))

    def forward(self, x: Tensor, role: str = "teacher") -> dict[str, Tensor]:
        """The teacher's outputs, or the student's with ``role="student"`` (the training pass, through DDP)."""
        return self.student(x) if role == "student" else self.teacher(x)

    @torch.no_grad()
    def ema_update(self, step: int, decay: float) -> float:
        """teacher <- d * teacher + (1 - d) * student over the parameters, d = min(1 - 1/(step+1), decay)
        (STAL train.py; BN statistics are the teacher's own)."""
        d = min(1.0 - 1.0 / (step + 1), decay)
        for t, s in zip(self.teacher.parameters(), self.student.parameters(), strict=True):
            t.mul_(d).add_(s.detach(), alpha=1.0 - d)
        return d

    def reset_teacher(self) -> None:
        """Copy the student's weights and buffers into the teacher (a fresh round)."""
        self.teacher.load_state_dict(self.student.state_dict())
