"""torchvision backbones: classifier removal and local weight files."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from torch import nn

from zsk.core.errors import ZskError
from zsk.models.backbones import build_torchvision_backbone, load_weights_file, split_classifier


@pytest.mark.parametrize(("name", "features"), [("resnet18", 512), ("mobilenet_v2", 1280)])
def test_split_classifier_gives_pooled_features_and_the_layer(name: str, features: int) -> None:
    net = build_torchvision_backbone(name).eval()
    x = torch.randn(2, 3, 64, 64)
    with torch.no_grad():
        logits = net(x)
    trunk, last = split_classifier(net)
    assert isinstance(last, nn.Linear) and last.in_features == features
    with torch.no_grad():
        feats = trunk(x)
    assert feats.shape == (2, features)
    # the removed layer applied to the trunk's features gives back the original logits
    assert torch.allclose(last(feats), logits, atol=1e-5)


def test_load_weights_file_round_trip_and_mismatch(tmp_path: Path) -> None:
    src = build_torchvision_backbone("resnet18")
    torch.save({"state_dict": src.state_dict()}, tmp_path / "r18.pth")
    dst = build_torchvision_backbone("resnet18", str(tmp_path / "r18.pth"))
    assert all(torch.equal(a, b) for a, b in zip(src.state_dict().values(), dst.state_dict().values(), strict=True))
    torch.save({"other.weight": torch.zeros(1)}, tmp_path / "other.pth")
    with pytest.raises(ZskError, match="other.pth do not match"):
        load_weights_file(build_torchvision_backbone("resnet18"), tmp_path / "other.pth", "torchvision's resnet18")
    with pytest.raises(ZskError, match="not found"):
        build_torchvision_backbone("resnet18", str(tmp_path / "missing.pth"))


def test_weights_of_another_variant_are_refused(tmp_path: Path) -> None:
    torch.save(build_torchvision_backbone("resnet18").state_dict(), tmp_path / "r18.pth")
    with pytest.raises(ZskError, match="r18.pth do not fit torchvision's resnet50"):
        build_torchvision_backbone("resnet50", str(tmp_path / "r18.pth"))
