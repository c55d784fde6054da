"""What every task promises the foundation (issue 2): `info --json` without data or weights, and the
hooks `zsk demo` / `zsk bench` call."""

from __future__ import annotations

import importlib
import json

import pytest
from typer.testing import CliRunner

from zsk.cli import app, available_tasks

TASKS = available_tasks()


def test_the_six_built_tasks_are_mounted() -> None:
    assert {"segment", "retrieve", "fakenews", "medseg", "gzsl", "hsi"} <= set(TASKS)


@pytest.mark.parametrize("task", TASKS)
def test_info_json_needs_no_data(task: str, tmp_path, monkeypatch) -> None:  # noqa: ANN001
    monkeypatch.chdir(tmp_path)  # no dataset under the recipe's data.root
    result = CliRunner().invoke(app, [task, "info", "--recipe", f"{task}/demo", "--json", "--quiet"])
    assert result.exit_code == 0, result.output
    info = json.loads(result.stdout.strip().splitlines()[-1])
    assert info["params_total"] >= info["params_trainable"] > 0
    assert info["gflops"] > 0


@pytest.mark.parametrize("task", TASKS)
def test_demo_and_bench_hooks_exist(task: str) -> None:
    pipeline = importlib.import_module(f"zsk.tasks.{task}.pipeline")
    config = importlib.import_module(f"zsk.tasks.{task}.config")
    assert callable(pipeline.run_demo) and callable(pipeline.bench_spec)
    assert hasattr(config, "Config")
