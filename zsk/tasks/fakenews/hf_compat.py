"""Keep text models importable when torchvision is installed but broken.

`transformers` imports torchvision for image utilities whenever the package is installed, even to
build a text-only BERT. A torchvision wheel built for another torch (e.g. a CUDA build next to a CPU
torch) then makes every `transformers` model fail to import. This module, imported before any
model class, checks once whether torchvision actually imports and, only if it does not, tells
`transformers` that torchvision is unavailable (text models never need it).
"""

from __future__ import annotations

import importlib.util


def _torchvision_broken() -> bool:
    if importlib.util.find_spec("torchvision") is None:
        return False
    try:
        import torchvision  # noqa: F401
    except Exception:  # noqa: BLE001 - any failure means "cannot be used"
        return True
    return False


def _apply() -> None:
    if not _torchvision_broken():
        return
    import transformers.utils as tf_utils
    import transformers.utils.import_utils as tf_import_utils

    tf_import_utils.is_torchvision_available = lambda: False  # type: ignore[assignment]
    tf_utils.is_torchvision_available = lambda: False  # type: ignore[assignment]


_apply()
