"""Shims that let LGFormer's official code (ZhichaoWei/LGFormer, mirror mqchen1993/LGFormer) import on a
CPU-only machine without mmcv/mmseg or its compiled ops: ``mmseg.utils.get_root_logger`` and
``lib.mmcv_custom.load_checkpoint`` (weight loading, unused: the harness copies weights itself) are stubbed,
and the ``MultiScaleDeformableAttention`` CUDA extension is a module whose call fails, so the official
``MSDeformAttn`` takes its own pure-PyTorch fallback (``ms_deform_attn_core_pytorch``) as on a machine
without the op. ``skimage.io`` (only used by REFER's image display) is stubbed when missing."""

from __future__ import annotations

import logging
import os
import sys
import types
from pathlib import Path

from common import add_official, cpu_shims, stub_module


def _no_extension(*args, **kwargs):  # noqa: ANN002, ANN003, ANN202
    raise RuntimeError("MultiScaleDeformableAttention CUDA op not built (parity harness: pure PyTorch path)")


def setup(root: Path) -> Path:
    """Put ``root`` (and ``root/refer`` for REFER) on the path with the shims in place; returns ``root``."""
    os.environ.setdefault("MPLBACKEND", "Agg")
    root = add_official(root)
    cpu_shims()
    stub_module("mmseg.utils", get_root_logger=lambda *a, **k: logging.getLogger("lgformer"))
    stub_module("MultiScaleDeformableAttention", ms_deform_attn_forward=_no_extension,
                ms_deform_attn_backward=_no_extension)
    import lib  # the checkout's namespace package

    mm = types.ModuleType("lib.mmcv_custom")
    mm.load_checkpoint = lambda *a, **k: None  # type: ignore[attr-defined]
    sys.modules["lib.mmcv_custom"] = mm
    lib.mmcv_custom = mm  # type: ignore[attr-defined]
    try:
        import skimage.io  # noqa: F401
    except ImportError:
        stub_module("skimage.io", imread=lambda *a, **k: None)
    return root
