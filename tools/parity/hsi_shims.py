"""Shims that let DeepHyperX (nshaud/DeepHyperX, the peer toolbox of the hsi task: Alam et al. publish no code)
import without a display: its visualisation packages (visdom, seaborn) are stubbed, and the removed NumPy
aliases (``np.bool`` in ``utils.metrics``) exist again (common.cpu_shims). scikit-learn, spectral, scipy,
tqdm and joblib are real packages the compared functions call."""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from pathlib import Path

import numpy as np
from common import add_official, cpu_shims, stub_module


class _Visdom:
    def __init__(self, *a, **k) -> None:
        pass

    def __getattr__(self, name):  # every plotting call is a no-op
        return lambda *a, **k: None


def setup(root: Path) -> Path:
    """Put the DeepHyperX checkout on the path with the shims in place; returns ``root``."""
    root = add_official(root)
    cpu_shims()
    stub_module("visdom", Visdom=_Visdom)
    stub_module("seaborn")
    return root


@contextlib.contextmanager
def lenient_pad() -> Iterator[None]:
    """``utils.padding_image`` passes ``constant_values`` to ``np.pad`` for every mode, which NumPy >= 1.17 refuses
    for all but ``constant``: drop it for the other modes while the helper runs."""
    original = np.pad

    def pad(array, pad_width, mode="constant", **kwargs):
        if mode != "constant":
            kwargs.pop("constant_values", None)
        return original(array, pad_width, mode=mode, **kwargs)

    np.pad = pad
    try:
        yield
    finally:
        np.pad = original


class OldIndexing(np.ndarray):
    """A label map that indexes like NumPy < 1.23: a list of index lists ``a[[rows, cols]]`` means ``a[rows, cols]``.

    ``utils.sample_gt`` (random and fixed modes) indexes that way; current NumPy reads it as rows only and fills
    whole rows. Wrap the ground truth with ``gt.view(OldIndexing)`` to get the behaviour it was written for."""

    @staticmethod
    def _key(key):
        if isinstance(key, list) and key and all(isinstance(k, (list, tuple, np.ndarray)) for k in key):
            return tuple(key)
        return key

    def __getitem__(self, key):
        return np.asarray(super().__getitem__(self._key(key)))

    def __setitem__(self, key, value) -> None:
        super().__setitem__(self._key(key), value)
