"""Device and autocast dtype resolution (``--device`` > ``ZSK_DEVICE`` > ``runtime.device`` > auto)."""

from __future__ import annotations

import contextlib
import os
from collections.abc import Iterator

import torch

from zsk.core.errors import ZskError

VALID = "auto, cpu, cuda, cuda:N, mps"


def resolve_device(flag: str | None = None, recipe_value: str | None = "auto") -> torch.device:
    """Pick the device: the flag, then ``$ZSK_DEVICE``, then the recipe, then the best available."""
    name = flag or os.environ.get("ZSK_DEVICE") or recipe_value or "auto"
    name = name.strip().lower()
    if name == "auto":
        if torch.cuda.is_available():
            local_rank = int(os.environ.get("LOCAL_RANK", 0))
            return torch.device("cuda", local_rank % torch.cuda.device_count())
        if getattr(torch.backends, "mps", None) is not None and torch.backends.mps.is_available():
            return torch.device("mps")
        return torch.device("cpu")
    try:
        device = torch.device(name)
    except RuntimeError:
        raise ZskError(f"unknown device {name!r}; use one of {VALID}") from None
    if device.type == "cuda":
        if not torch.cuda.is_available():
            raise ZskError(f"device {name!r} asked for but CUDA is not available here; use --device cpu")
        if device.index is not None and device.index >= torch.cuda.device_count():
            raise ZskError(f"device {name!r}: only {torch.cuda.device_count()} CUDA device(s) present")
        if device.index is None:
            device = torch.device("cuda", int(os.environ.get("LOCAL_RANK", 0)) % torch.cuda.device_count())
    elif device.type == "mps":
        if not (getattr(torch.backends, "mps", None) is not None and torch.backends.mps.is_available()):
            raise ZskError("device 'mps' asked for but MPS is not available here; use --device cpu")
    elif device.type != "cpu":
        raise ZskError(f"unsupported device {name!r}; use one of {VALID}")
    return device


def autocast_dtype(device: torch.device, precision: str = "auto") -> torch.dtype | None:
    """The mixed-precision dtype: bf16 on CUDA that supports it, fp16 (with a grad scaler) on older
    CUDA, none (fp32) on CPU/MPS unless ``precision`` asks for bf16/fp16 explicitly."""
    if precision == "fp32":
        return None
    if precision == "bf16":
        return torch.bfloat16
    if precision == "fp16":
        if device.type == "cpu":
            from zsk.core.progress import warn

            warn("runtime.precision fp16 on a CPU runs most operators in slow fallback kernels (the paper recipes "
                 "that set it, css and refer, target a GPU): --set runtime.precision=fp32 or bf16", once=True)
        return torch.float16
    if precision != "auto":
        raise ZskError(f"runtime.precision: {precision!r} is not one of auto, fp32, bf16, fp16")
    if device.type == "cuda":
        return torch.bfloat16 if torch.cuda.is_bf16_supported() else torch.float16
    return None


@contextlib.contextmanager
def autocast(device: torch.device, dtype: torch.dtype | None) -> Iterator[None]:
    """``torch.autocast`` for the device, or nothing when ``dtype`` is None."""
    if dtype is None:
        yield
        return
    with torch.autocast(device_type=device.type, dtype=dtype):
        yield


def needs_grad_scaler(device: torch.device, dtype: torch.dtype | None) -> bool:
    """fp16 on CUDA needs loss scaling; bf16 and fp32 do not."""
    return device.type == "cuda" and dtype == torch.float16


def seed_everything(seed: int) -> None:
    """Seed Python, NumPy and torch (all devices)."""
    import random

    import numpy as np

    random.seed(seed)
    np.random.seed(seed % (2**32))
    torch.manual_seed(seed)
