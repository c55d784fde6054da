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


def check_one_error_line(result, fragments) -> None:  # noqa: ANN001 - a click/typer Result
    """A refused command: exit 2, one ``error:`` line holding every fragment (the file or key it names), no
    traceback and no "unexpected" failure. Shared by every task's bad-input table."""
    out = result.output
    assert result.exit_code == 2, f"exit {result.exit_code}\n{out}"
    assert "Traceback" not in out and "unexpected" not in out, out
    errors = [line for line in out.splitlines() if line.startswith("error:")]
    assert len(errors) == 1, out
    for fragment in [fragments] if isinstance(fragments, str) else fragments:
        assert fragment in errors[0], (fragment, errors[0])


@pytest.fixture
def one_error_line():  # noqa: ANN201
    """:func:`check_one_error_line`, for the bad-input tables of tests/tasks/<task>."""
    return check_one_error_line
