"""Shims that let licongguan/ILM-ASSL's modules import and run on one CPU process for tools/parity/adapt.py:
``.cuda()`` is a no-op, ``gather_together`` (an all_gather across GPUs) returns this process's data, and the
image libraries its dataset and eval modules import (``imageio``, ``cv2``) are stubs: the compared functions
never call them, and Pillow's removed ``Image.ANTIALIAS`` (= LANCZOS). scikit-image (used by ``generate_cutmix``) must be importable: ``pip install --target
/tmp/parity_site_adapt scikit-image`` (the harness puts that folder on ``sys.path``)."""

from __future__ import annotations

import sys
from pathlib import Path

from common import cpu_shims, stub_module

SITE = Path("/tmp/parity_site_adapt")


def install(root: Path) -> None:
    """Prepare the imports of the official checkout at ``root`` (already on sys.path)."""
    if SITE.is_dir() and str(SITE) not in sys.path:
        sys.path.append(str(SITE))
    cpu_shims()
    from PIL import Image

    if not hasattr(Image, "ANTIALIAS"):  # removed in Pillow 10; it was an alias of LANCZOS
        Image.ANTIALIAS = Image.LANCZOS
    for name in ("imageio", "cv2"):
        if name not in sys.modules:
            stub_module(name)
    sys.path.insert(0, str(root / "core" / "active_learning"))  # its scripts import `Config` as a top-level module
    import core.utils.utils as utils

    utils.gather_together = lambda data: [data]
