"""Shims that let ACNet's official code (leftthomas/ACNet) import on a CPU-only machine without network:
``.cuda()`` is a no-op (common.cpu_shims), pandas (used only to write a CSV in ``__main__``) is stubbed,
timm's ``create_model`` never downloads (``pretrained=True`` becomes random init: both sides then receive the
same seeded weights), and pytorch-metric-learning comes from a scratch folder
(``pip install --target /tmp/parity_site_sbir pytorch-metric-learning``), never from the venv.

Also the seeded weights both sides get (:func:`seed_weights`), shared with tests/parity/test_sbir_parity.py.
"""

from __future__ import annotations

import importlib
import os
import sys
from pathlib import Path
from types import ModuleType

import torch
from common import add_official, cpu_shims, stub_module
from torch import nn

PML_SITE = Path(os.environ.get("ZSK_PARITY_SITE", "/tmp/parity_site_sbir"))


def seed_weights(module: nn.Module, seed: int, scale: float = 0.05) -> None:
    """Deterministic weights for every floating tensor of ``module`` (parameters and buffers, in state-dict
    order): N(0, scale^2) from a per-tensor generator, BatchNorm running variances in [0.5, 1.5] and scales
    around 1, so the harness and the replay test rebuild the same networks without storing them."""
    state = module.state_dict()
    for i, (name, value) in enumerate(state.items()):
        if not value.dtype.is_floating_point:
            continue
        g = torch.Generator().manual_seed(seed * 10_007 + i)
        if name.endswith("running_var"):
            state[name] = torch.rand(value.shape, generator=g) + 0.5
        elif value.dim() == 1 and name.endswith("weight"):  # normalisation scales
            state[name] = 1.0 + torch.randn(value.shape, generator=g) * scale
        else:
            state[name] = torch.randn(value.shape, generator=g) * scale
    module.load_state_dict(state)


def setup(root: Path) -> dict[str, ModuleType]:
    """Import ACNet's ``model``, ``utils``, ``metric`` and ``train`` modules from the checkout ``root``."""
    add_official(root)
    cpu_shims()
    if PML_SITE.is_dir():
        sys.path.insert(1, str(PML_SITE))
    try:
        importlib.import_module("pytorch_metric_learning")
    except ImportError:
        sys.exit(f"error: pytorch-metric-learning is needed by ACNet's train.py; install it into {PML_SITE} with "
                 f"`python -m pip install --target {PML_SITE} pytorch-metric-learning` (never into the venv)")
    import timm  # before the pandas stub: torch's import-time scans look for real module specs

    try:
        importlib.import_module("pandas")
    except ImportError:
        stub_module("pandas", DataFrame=object)

    create = timm.create_model

    def offline_create(name: str, pretrained: bool = False, **kwargs):  # noqa: ANN202
        return create(name, pretrained=False, **kwargs)

    timm.create_model = offline_create
    mods = {name: importlib.import_module(name) for name in ("model", "metric", "utils", "train")}
    return mods
