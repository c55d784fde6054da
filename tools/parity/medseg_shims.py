"""Shims that let DTC's official code (Luoxd1996/DTC, code/) import on a CPU-only machine with a current
NumPy: its training script's logger (tensorboardX) is stubbed, ``.cuda()`` is a no-op and the removed
NumPy aliases exist again (common.cpu_shims). medpy, scikit-image and pynrrd are real packages the
compared functions call (``pip install medpy scikit-image pynrrd``); without them those rows say so."""

from __future__ import annotations

import importlib
import sys
from pathlib import Path

from common import add_official, cpu_shims, stub_module


class _Writer:
    def __init__(self, *a, **k) -> None:
        pass

    def add_scalar(self, *a, **k) -> None:
        pass

    def add_image(self, *a, **k) -> None:
        pass

    def close(self) -> None:
        pass


def setup(root: Path) -> Path:
    """Put ``root`` and ``root/code`` on the path with the shims in place; returns ``root``."""
    root = add_official(root, "code")
    cpu_shims()
    try:
        import tensorboardX  # noqa: F401
    except ImportError:
        stub_module("tensorboardX", SummaryWriter=_Writer)
    return root


def optional(name: str):
    """Import an official module, or None when a real package it needs is missing (the reason is kept)."""
    try:
        return importlib.import_module(name)
    except ImportError as e:
        MISSING[name] = str(e)
        return None


MISSING: dict[str, str] = {}


def train_script(root: Path):
    """``train_la_dtc.py`` as a module (its argparse reads sys.argv at import; the training loop is under
    ``__main__`` and does not run)."""
    argv = sys.argv
    sys.argv = ["train_la_dtc.py"]
    try:
        return optional("train_la_dtc")
    finally:
        sys.argv = argv
