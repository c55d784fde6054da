"""Test-wide settings: one torch thread per worker (2-core CI), an isolated cache, offline hubs."""

from __future__ import annotations

import os

import pytest
import torch

torch.set_num_threads(1)
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")


@pytest.fixture(autouse=True)
def _isolated_cache(tmp_path_factory: pytest.TempPathFactory, monkeypatch: pytest.MonkeyPatch) -> None:
    """Every test gets its own empty ``$ZSK_CACHE`` and no ``$ZSK_DEVICE`` from the environment."""
    monkeypatch.setenv("ZSK_CACHE", str(tmp_path_factory.mktemp("zsk-cache")))
    monkeypatch.delenv("ZSK_DEVICE", raising=False)
    from zsk.core.progress import settings

    settings.quiet = False
    settings.debug = False
