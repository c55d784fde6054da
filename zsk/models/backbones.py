"""torchvision CNN backbones by name, with weights from a local file or the torchvision cache."""

from __future__ import annotations

import os
from pathlib import Path

import torch
import torchvision
from torch import nn

from zsk.core.errors import ZskError


def torch_hub_dir() -> Path:
    """Where torchvision keeps downloaded weights (``$TORCH_HOME/hub/checkpoints``)."""
    return Path(torch.hub.get_dir()) / "checkpoints"


def default_weights_file(name: str) -> Path:
    """The file torchvision's default ImageNet weights for ``name`` would be cached as."""
    try:
        weights = torchvision.models.get_model_weights(name).DEFAULT
    except (ValueError, KeyError):
        raise ZskError(f"torchvision has no pretrained weights for {name!r}") from None
    return torch_hub_dir() / os.path.basename(weights.url)


def build_torchvision_backbone(name: str, weights: str | None = None, **kwargs: object) -> nn.Module:
    """A torchvision classification model by name (``resnet50``, ...).

    ``weights``: None for random init, ``"imagenet"`` for torchvision's default weights from the local
    cache (no download), or a path to a state-dict file (``.pth``/``.pt``).
    """
    try:
        model = torchvision.models.get_model(name, weights=None, **kwargs)
    except ValueError:
        raise ZskError(f"unknown torchvision model {name!r}; e.g. resnet50, resnet101, vgg16") from None
    if weights is None:
        return model
    path = default_weights_file(name) if weights == "imagenet" else Path(weights)
    if not path.is_file():
        hint = f"copy torchvision's {path.name} there" if weights == "imagenet" else "check the path"
        raise ZskError(f"weights for {name} not found at {path}: {hint}, or pass a local file with "
                       f"--set model.pretrained=/path/to/{name}.pth")
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as e:  # noqa: BLE001
        raise ZskError(f"cannot read weights {path}: {str(e).splitlines()[0]}") from None
    if isinstance(state, dict) and "state_dict" in state:
        state = state["state_dict"]
    missing, unexpected = model.load_state_dict(state, strict=False)
    if missing and len(missing) == len(model.state_dict()):
        raise ZskError(f"weights {path} do not match torchvision's {name} (no key matched)")
    return model
