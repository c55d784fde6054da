"""``zsk runs``: RUN/status.json written by the generated train verb (finished, interrupted, failed), the table
of a folder of runs (task, recipe, seed, step, best metric and step, status), and a killed run read as failed."""

from __future__ import annotations

import fcntl
import json
import os
from pathlib import Path

import pytest
from typer.testing import CliRunner

from zsk.cli import app as root_app
from zsk.core.errors import Interrupted
from zsk.core.runs import list_runs, run_row, write_status
from zsk.core.task import task_app

from .test_task import ToyTask


def _train(tmp_path: Path, name: str, *args: str) -> object:
    recipe = tmp_path / "toy.yaml"
    recipe.write_text("task: toy\ndescription: a toy run\n")
    return CliRunner().invoke(task_app(ToyTask()), ["train", "--recipe", str(recipe), "--out", str(tmp_path / "runs" / name),
                                                    "--quiet", *args])


def test_a_finished_run_is_listed_with_its_best_metric(tmp_path: Path) -> None:
    r = _train(tmp_path, "a", "--seed", "3")
    assert r.exit_code == 0, r.output
    status = json.loads((tmp_path / "runs" / "a" / "status.json").read_text())
    assert status["status"] == "finished" and status["exit_code"] == 0 and status["task"] == "toy"
    assert status["recipe"].endswith("toy.yaml") and status["seed"] == 3 and status["pid"] == os.getpid()
    (row,) = list_runs(tmp_path / "runs")
    # ToyTask: 3 steps, eval score = seed + 0.5 at the end
    assert row["task"] == "toy" and row["seed"] == 3 and row["step"] == 3 and row["status"] == "finished"
    assert (row["best_metric"], row["best_value"], row["best_step"]) == ("score", 3.5, 3)


def test_interrupted_and_failed_runs_keep_their_exit_codes(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    def stopped(self, ctx):  # noqa: ANN001, ANN202 - what the Trainer raises after SIGTERM and last.pt
        (ctx.run_dir / "metrics.jsonl").write_text(json.dumps({"kind": "train", "step": 2, "loss": 1.0}) + "\n")
        raise Interrupted(143)

    monkeypatch.setattr(ToyTask, "train", stopped)
    assert _train(tmp_path, "int").exit_code == 143
    row = run_row(tmp_path / "runs" / "int")
    assert (row["status"], row["exit_code"], row["step"]) == ("interrupted", 143, 2)

    def broken(self, ctx):  # noqa: ANN001, ANN202
        (ctx.run_dir / "metrics.jsonl").write_text(json.dumps({"kind": "train", "step": 1, "loss": 1.0}) + "\n")
        raise RuntimeError("diverged")

    monkeypatch.setattr(ToyTask, "train", broken)
    assert _train(tmp_path, "bad").exit_code == 1
    status = json.loads((tmp_path / "runs" / "bad" / "status.json").read_text())
    assert status["status"] == "failed" and "diverged" in status["error"]


def test_a_run_stopped_by_bad_input_before_training_leaves_no_folder(tmp_path: Path,
                                                                       monkeypatch: pytest.MonkeyPatch) -> None:
    from zsk.core.errors import ZskError

    def refuses(self, ctx):  # noqa: ANN001, ANN202
        raise ZskError("data.root /nowhere does not exist")

    monkeypatch.setattr(ToyTask, "train", refuses)
    r = _train(tmp_path, "none")
    assert r.exit_code == 2 and not (tmp_path / "runs" / "none").exists()


def test_running_is_told_from_killed_by_the_folder_lock(tmp_path: Path) -> None:
    run = tmp_path / "r"
    run.mkdir()
    (run / "recipe.yaml").write_text("task: toy\nruntime:\n  seed: 5\n")
    write_status(run, "running", task="toy", recipe="toy/demo", seed=5)
    assert run_row(run)["status"] == "failed"  # no process holds the folder: it was killed (kill -9, OOM)
    fd = os.open(run, os.O_RDONLY)
    fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)  # as zsk.core.run holds it while training
    try:
        assert run_row(run)["status"] == "running"
    finally:
        os.close(fd)


def test_older_runs_without_status_are_read_from_their_files(tmp_path: Path) -> None:
    done, stopped, empty = (tmp_path / n for n in ("done", "stopped", "empty"))
    for d in (done, stopped, empty):
        d.mkdir()
        (d / "recipe.yaml").write_text("task: toy\ndescription: old run\n")
    (done / "eval.json").write_text(json.dumps({"best": {"metric": "acc", "value": 0.5, "step": 4}}))
    (stopped / "last.pt").write_bytes(b"x")
    rows = {Path(r["run"]).name: r for r in list_runs(tmp_path)}
    assert {k: r["status"] for k, r in rows.items()} == {"done": "finished", "stopped": "interrupted", "empty": "failed"}
    assert rows["done"]["best_value"] == 0.5 and rows["done"]["recipe"] == "old run"


def test_zsk_runs_json_status_filter_and_bad_folder(tmp_path: Path) -> None:
    assert _train(tmp_path, "a").exit_code == 0
    assert _train(tmp_path, "b", "--runs", "2").exit_code == 0  # two seeds: run-0/, run-1/
    r = CliRunner().invoke(root_app, ["runs", str(tmp_path / "runs"), "--json"])
    assert r.exit_code == 0, r.output
    rows = [json.loads(x) for x in r.stdout.strip().splitlines()]
    assert [Path(x["run"]).relative_to(tmp_path / "runs").as_posix() for x in rows] == ["a", "b/run-0", "b/run-1"]
    assert [x["seed"] for x in rows] == [0, 0, 1] and all(x["status"] == "finished" for x in rows)
    r = CliRunner().invoke(root_app, ["runs", str(tmp_path / "runs"), "--status", "failed", "--json"])
    assert r.exit_code == 0 and r.stdout.strip() == ""
    r = CliRunner().invoke(root_app, ["runs", str(tmp_path / "runs")])
    assert r.exit_code == 0 and "finished" in r.stdout and "b/run-1" in r.stdout
    for bad in (["runs", str(tmp_path / "nowhere")], ["runs", str(tmp_path / "runs"), "--status", "done"]):
        r = CliRunner().invoke(root_app, bad)
        assert r.exit_code == 2 and r.output.count("\n") == 1, r.output
