"""torchvision CNN backbones by name, with weights from a local file or the torchvision cache."""

from __future__ import annotations

import os
from pathlib import Path

import torch
import torchvision
from torch import nn

from zsk.core.checkpoint import read_state_dict
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
    load_weights_file(model, path, f"torchvision's {name}")
    return model


def load_weights_file(model: nn.Module, path: str | Path, what: str) -> None:
    """Load a state-dict file (plain, or under a ``state_dict`` key) into ``model`` non-strictly, so
    classifier heads may differ; a file none of whose keys match ``what`` is refused (exit 2)."""
    path = Path(path)
    state = read_state_dict(path, f"weights for {what}", "pass a local file with --set model.pretrained=PATH")
    if not set(state) & set(model.state_dict()):
        raise ZskError(f"weights {path} do not match {what} (no key matched)")
    try:
        model.load_state_dict(state, strict=False)
    except RuntimeError as e:  # tensors of other shapes: another variant of the architecture
        raise ZskError(f"weights {path} do not fit {what}: {str(e).splitlines()[1].strip()}") from None


def split_classifier(net: nn.Module) -> tuple[nn.Module, nn.Linear]:
    """Remove a torchvision classifier's last Linear layer in place; return (pooled-feature trunk, layer).

    Handles ``fc`` (ResNet), ``classifier`` (VGG, DenseNet, MobileNet: everything after the last Linear
    goes too) and ``heads``/``head`` (ViT, Swin).
    """
    for attr in ("fc", "classifier", "heads", "head"):
        head = getattr(net, attr, None)
        if isinstance(head, nn.Linear):
            setattr(net, attr, nn.Identity())
            return net, head
        if isinstance(head, nn.Sequential):
            layers = list(head.children())
            for i in range(len(layers) - 1, -1, -1):
                if isinstance(layers[i], nn.Linear):
                    setattr(net, attr, nn.Sequential(*layers[:i]))
                    return net, layers[i]
    raise ZskError(f"{type(net).__name__} has no final Linear layer (fc, classifier, heads or head) to remove; "
                   "use a ResNet, VGG, DenseNet, MobileNet or ViT torchvision classifier")
