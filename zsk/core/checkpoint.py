"""Checkpoints: plain dicts of tensors and primitives, written atomically, read with weights_only."""

from __future__ import annotations

import pickle
import re
from collections.abc import Iterable
from pathlib import Path
from typing import Any

import torch
from torch import nn

from zsk import __version__
from zsk.core.errors import ZskError
from zsk.core.io import atomic_open

FORMAT_VERSION = 1


def save_checkpoint(path: str | Path, state: dict[str, Any]) -> None:
    """Write ``state`` to ``path`` via a temp file in the same folder and ``os.replace``, so a write
    killed half-way leaves the previous checkpoint intact."""
    payload = {"format_version": FORMAT_VERSION, "zsk_version": __version__, **state}
    with atomic_open(path) as f:
        torch.save(payload, f)


def load_checkpoint(path: str | Path) -> dict[str, Any]:
    """Read a checkpoint with ``torch.load(weights_only=True)``; anything else is a ``ZskError``."""
    path = Path(path)
    if not path.is_file():
        raise ZskError(f"checkpoint not found: {path} (pass a run's best.pt or last.pt with --checkpoint)")
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as e:
        if "Weights only load failed" in str(e):
            raise ZskError(f"checkpoint {path} carries pickled Python objects ({_refused_detail(str(e))}) and is "
                           f"refused: zsk checkpoints hold only tensors and primitives") from None
        raise ZskError(f"checkpoint {path} is damaged or not a torch file: {_first_line(e)}") from None
    except Exception as e:  # noqa: BLE001 - a corrupt file can fail anywhere inside the unpickler
        raise ZskError(f"checkpoint {path} is damaged or not a torch file: {_first_line(e)}") from None
    if not isinstance(state, dict) or "format_version" not in state:
        raise ZskError(f"{path} is not a zsk checkpoint (no format_version)")
    if not isinstance(state["format_version"], int):
        raise ZskError(f"{path} is not a zsk checkpoint (format_version is not an integer)")
    if state["format_version"] > FORMAT_VERSION:
        raise ZskError(f"checkpoint {path} has format {state['format_version']}; this zsk reads up to "
                       f"{FORMAT_VERSION}: upgrade zsk")
    return state


def read_state_dict(path: str | Path, what: str, fix: str, *, unwrap: bool = True) -> dict[str, Any]:
    """A weights file that is not a zsk checkpoint (pretrained backbones, official checkpoints): a
    ``.safetensors`` file, or a torch file read with ``torch.load(weights_only=True)`` and, with ``unwrap``,
    taken from under a ``state_dict`` key. A missing, unreadable or non-dict file is bad input: ``ZskError``
    naming ``what`` and the file, ending in ``fix``."""
    p = Path(path).expanduser()
    if not p.is_file():
        raise ZskError(f"{what} {p} not found; {fix}")
    try:
        if p.suffix == ".safetensors":
            from safetensors.torch import load_file

            state = load_file(str(p))
        else:
            state = torch.load(p, map_location="cpu", weights_only=True)
    except Exception as e:  # noqa: BLE001 - any unreadable file is bad input
        raise ZskError(f"{what} {p} cannot be read ({_first_line(e)}); {fix}") from None
    if unwrap and isinstance(state, dict) and isinstance(state.get("state_dict"), dict):
        state = state["state_dict"]
    if not isinstance(state, dict):
        raise ZskError(f"{what} {p} is not a state dict; {fix}")
    return state


def _first_line(exc: BaseException) -> str:
    """The exception's first line without terminal escapes (``EOFError`` when it has no message)."""
    text = re.sub(r"\x1b\[[0-9;]*m", "", str(exc)).strip()
    return text.splitlines()[0] if text else type(exc).__name__


def _refused_detail(message: str) -> str:
    """What torch's weights-only unpickler refused, e.g. ``a mymodule.Vocab object``."""
    m = re.search(r"Unsupported global: GLOBAL ([\w.]+)", message)
    if m:
        return f"a {m.group(1)} object"
    m = re.search(r"WeightsUnpickler error: ([^\n]*)", message)
    detail = re.sub(r"\x1b\[[0-9;]*m", "", m.group(1)).strip() if m else ""
    return detail or "not tensors or primitives"


def _excluded(key: str, prefixes: Iterable[str]) -> bool:
    return any(key.startswith(p) for p in prefixes)


def model_state(model: nn.Module, exclude_prefixes: Iterable[str] = ()) -> dict[str, torch.Tensor]:
    """The model's state dict without frozen pretrained parts (their source is recorded instead)."""
    prefixes = tuple(exclude_prefixes)
    return {k: v.detach().cpu() for k, v in model.state_dict().items() if not _excluded(k, prefixes)}


def load_model_state(model: nn.Module, state: dict[str, torch.Tensor], exclude_prefixes: Iterable[str] = (),
                     source: str = "checkpoint") -> None:
    """Load weights strictly, except for keys under ``exclude_prefixes`` (loaded from pretrained)."""
    prefixes = tuple(exclude_prefixes)
    own = model.state_dict()
    wrong = [f"{k}: {list(v.shape)} in the file, {list(own[k].shape)} in the model" for k, v in state.items()
             if k in own and isinstance(v, torch.Tensor) and tuple(v.shape) != tuple(own[k].shape)]
    if wrong:
        more = f" (+{len(wrong) - 1} more)" if len(wrong) > 1 else ""
        raise ZskError(f"{source} does not fit the model built from its recipe and --set ({wrong[0]}{more}): drop "
                       "the --set that changes the model, or pass the recipe it was trained with")
    result = model.load_state_dict(state, strict=False)
    missing = [k for k in result.missing_keys if not _excluded(k, prefixes)]
    if missing or result.unexpected_keys:
        parts = [f"the model has weights the file lacks {missing[:5]}" if missing else "",
                 f"the file has weights the model lacks {list(result.unexpected_keys)[:5]}" if result.unexpected_keys else ""]
        raise ZskError(f"{source} does not match the model built from its recipe and --set: "
                       f"{'; '.join(p for p in parts if p)}")
