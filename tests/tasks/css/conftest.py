"""A demo run shared by the css tests (trained once per session: ~7 s on one CPU thread)."""

from __future__ import annotations

from pathlib import Path

import pytest
from typer.testing import CliRunner

from zsk.cli import app


@pytest.fixture(scope="session")
def trained(tmp_path_factory: pytest.TempPathFactory) -> Path:
    run = tmp_path_factory.mktemp("css") / "run"
    result = CliRunner().invoke(app, ["css", "train", "--recipe", "css/demo", "--out", str(run), "--quiet"])
    assert result.exit_code == 0, result.output
    return run
