"""``zsk plot``: curves per metric, seeds with mean and spread, best step, confusion matrix, exit 2 on bad input."""

from __future__ import annotations

import json
import math
from pathlib import Path

import pytest
from PIL import Image
from typer.testing import CliRunner

from zsk.cli import app
from zsk.core import plot
from zsk.core.errors import ZskError

runner = CliRunner()


def write_run(folder: Path, losses: list[float], accs: list[float], best_step: int | None = None,
              confusion: list[list[int]] | None = None, extra_lines: list[str] | None = None) -> Path:
    """A run folder with train rows every step (loss, lr), eval rows every 2 steps and eval.json."""
    folder.mkdir(parents=True)
    lines = []
    for i, loss in enumerate(losses, 1):
        lines.append(json.dumps({"kind": "train", "step": i, "epoch": 0, "lr": 0.1 / i, "loss": loss}))
        if i % 2 == 0:
            lines.append(json.dumps({"kind": "eval", "step": i, "epoch": 0, "acc": accs[i // 2 - 1]}))
    lines.extend(extra_lines or [])
    (folder / "metrics.jsonl").write_text("\n".join(lines) + "\n")
    if best_step is not None:
        ev: dict = {"step": len(losses), "best": {"metric": "acc", "value": accs[best_step // 2 - 1], "step": best_step},
                    "acc": accs[-1]}
        if confusion is not None:
            ev["confusion"] = confusion
            ev["class_names"] = ["cat", "dog", "bird"][: len(confusion)]
        (folder / "eval.json").write_text(json.dumps(ev))
    return folder


def invoke(*args: str | Path):  # noqa: ANN201 - click's Result
    return runner.invoke(app, ["plot", *map(str, args)])


def assert_png(path: Path) -> None:
    assert path.is_file(), path
    with Image.open(path) as im:
        assert im.format == "PNG"
        w, h = im.size
    assert 300 <= w <= 3000 and 200 <= h <= 3000, (w, h)


@pytest.fixture()
def two_runs(tmp_path: Path) -> tuple[Path, Path]:
    a = write_run(tmp_path / "a", [1.0, 0.8, 0.6, 0.5], [0.5, 0.7], best_step=4, confusion=[[5, 1, 0], [2, 6, 1], [0, 0, 9]])
    b = write_run(tmp_path / "b", [1.2, 0.9, 0.7, 0.6], [0.6, 0.55], best_step=2)
    return a, b


def test_two_runs_write_one_png_per_metric_and_confusion(two_runs: tuple[Path, Path], tmp_path: Path) -> None:
    a, b = two_runs
    result = invoke(a, b, "--json")
    assert result.exit_code == 0, result.output
    rows = [json.loads(line) for line in result.stdout.splitlines()]
    names = sorted(Path(r["file"]).name for r in rows)
    assert names == ["confusion.png", "eval_acc.png", "train_loss.png", "train_lr.png"]
    for r in rows:
        assert Path(r["file"]).parent == a / "plots"
        assert_png(Path(r["file"]))
    curve = {r["key"]: r for r in rows if r["kind"] == "curve"}
    assert curve["train/loss"]["runs"] == 2
    conf = [r for r in rows if r["kind"] == "confusion"]
    assert len(conf) == 1 and conf[0]["run"] == str(a)


def test_never_overwrites_silently(two_runs: tuple[Path, Path], tmp_path: Path) -> None:
    a, b = two_runs
    out = tmp_path / "out"
    assert invoke(a, b, "--out", out).exit_code == 0
    before = (out / "train_loss.png").stat().st_mtime_ns
    again = invoke(a, b, "--out", out)
    assert again.exit_code == 2
    assert "train_loss.png" in again.output and "already exists" in again.output
    assert (out / "train_loss.png").stat().st_mtime_ns == before
    assert invoke(a, b, "--out", out, "--force").exit_code == 0
    assert not (a / "plots").exists()


def test_seeds_folder_mean_and_spread(tmp_path: Path) -> None:
    root = tmp_path / "seeds"
    write_run(root / "run-0", [1.0, 0.8, 0.6, 0.4], [0.5, 0.7], best_step=4)
    write_run(root / "run-1", [2.0, 1.0, 0.7, 0.2], [0.3, 0.9], best_step=4)
    write_run(root / "run-2", [3.0, 0.6, 0.5, 0.3], [0.4, 0.8], best_step=2)
    (root / "summary.json").write_text("{}")
    groups = plot.expand_runs([root])
    assert len(groups) == 1 and groups[0].is_seeds
    assert [p.name for p in groups[0].runs] == ["run-0", "run-1", "run-2"]
    series = [plot.group_series(plot.read_metrics(p / "metrics.jsonl"))["train/loss"] for p in groups[0].runs]
    agg = plot.aggregate(series)
    assert agg["step"] == [1, 2, 3, 4]
    assert agg["mean"] == pytest.approx([2.0, 0.8, 0.6, 0.3])
    # sample std of [1, 2, 3] is 1; of [0.8, 1.0, 0.6] is 0.2; of [0.6, 0.7, 0.5] is 0.1; of [0.4, 0.2, 0.3] is 0.1
    assert agg["std"] == pytest.approx([1.0, 0.2, 0.1, 0.1])
    assert agg["min"] == pytest.approx([1.0, 0.6, 0.5, 0.2])
    assert agg["max"] == pytest.approx([3.0, 1.0, 0.7, 0.4])
    acc = plot.aggregate([plot.group_series(plot.read_metrics(p / "metrics.jsonl"))["eval/acc"] for p in groups[0].runs])
    assert acc["step"] == [2, 4] and acc["mean"] == pytest.approx([0.4, 0.8])

    result = invoke(root, "--json")
    assert result.exit_code == 0, result.output
    rows = [json.loads(line) for line in result.stdout.splitlines()]
    assert {Path(r["file"]).parent for r in rows} == {root / "run-0" / "plots"}
    assert all(r["runs"] == 3 for r in rows) and not any(r["kind"] == "confusion" for r in rows)
    for r in rows:
        assert_png(Path(r["file"]))


def test_aggregate_uses_steps_every_run_logged() -> None:
    agg = plot.aggregate([([1, 2, 3], [1.0, 2.0, 3.0]), ([2, 3, 4], [4.0, 6.0, 8.0])])
    assert agg["step"] == [2, 3]
    assert agg["mean"] == pytest.approx([3.0, 4.5])
    assert agg["std"] == pytest.approx([math.sqrt(2), math.sqrt(4.5)])
    single = plot.aggregate([([1], [5.0])])
    assert single["std"] == [0.0] and single["min"] == single["max"] == [5.0]


def test_best_step_comes_from_eval_json(two_runs: tuple[Path, Path]) -> None:
    a, b = two_runs
    best_a = plot.best_of(plot.read_eval(a))
    best_b = plot.best_of(plot.read_eval(b))
    assert best_a == {"metric": "acc", "value": 0.7, "step": 4}
    assert best_b is not None and best_b["step"] == 2
    keys = list(plot.group_series(plot.read_metrics(a / "metrics.jsonl")))
    assert plot.best_key(best_a, keys) == "eval/acc"
    assert plot.best_of({"acc": 1.0}) is None and plot.best_of(None) is None


def test_group_series_names_stages_and_keeps_last_of_repeated_step() -> None:
    rows = [{"kind": "train", "step": 1, "epoch": 0, "lr": 0.1, "loss": 2.0, "stage": "pre"},
            {"kind": "train", "step": 1, "epoch": 0, "lr": 0.1, "loss": 1.5, "stage": "pre"},
            {"kind": "train", "step": 2, "epoch": 0, "lr": 0.1, "loss": float("nan"), "flag": True, "note": "x"},
            {"kind": "eval", "step": 2, "epoch": 0, "miou": 0.3, "per_class": [0.1, 0.2]}]
    series = plot.group_series(rows)
    assert series["train/pre/loss"] == ([1], [1.5])
    assert "train/loss" not in series and "train/flag" not in series and "train/note" not in series
    assert series["eval/miou"] == ([2], [0.3])
    assert set(series) == {"train/pre/loss", "train/pre/lr", "train/lr", "eval/miou"}
    assert plot.sanitize("train/pre/loss") == "train_pre_loss"
    assert plot.sanitize("eval/top-1 acc (%)") == "eval_top-1_acc"


def test_confusion_of_reads_matrix_and_names() -> None:
    matrix, names = plot.confusion_of({"confusion": [[1, 2], [3, 4]], "class_names": ["x", "y"]})
    assert matrix == [[1.0, 2.0], [3.0, 4.0]] and names == ["x", "y"]
    assert plot.confusion_of({"confusion": [[1, 2], [3, 4]], "class_names": ["x"]}) == ([[1.0, 2.0], [3.0, 4.0]], None)
    assert plot.confusion_of({"confusion": [[1, 2]]}) is None
    assert plot.confusion_of({"acc": 1.0}) is None


def test_corrupt_lines_are_skipped_with_a_warning(tmp_path: Path) -> None:
    run = write_run(tmp_path / "r", [1.0, 0.5], [0.4], extra_lines=["{not json", "[1, 2]"])
    result = invoke(run, "--json")
    assert result.exit_code == 0, result.output
    assert "skipped 2 corrupt line(s)" in result.stderr
    assert_png(run / "plots" / "train_loss.png")


def test_bad_input_is_exit_2_naming_the_file(tmp_path: Path) -> None:
    missing = invoke(tmp_path / "nope")
    assert missing.exit_code == 2 and "nope" in missing.output
    empty = tmp_path / "empty"
    empty.mkdir()
    no_metrics = invoke(empty)
    assert no_metrics.exit_code == 2 and str(empty / "metrics.jsonl") in no_metrics.output
    corrupt = tmp_path / "corrupt"
    corrupt.mkdir()
    (corrupt / "metrics.jsonl").write_text("{oops\nnot json either\n")
    bad = invoke(corrupt)
    assert bad.exit_code == 2 and str(corrupt / "metrics.jsonl") in bad.output
    assert not (corrupt / "plots").exists()
    good = write_run(tmp_path / "good", [1.0, 0.5], [0.4])
    (good / "eval.json").write_text("{broken")
    bad_eval = invoke(good)
    assert bad_eval.exit_code == 2 and str(good / "eval.json") in bad_eval.output
    with pytest.raises(ZskError):
        plot.read_metrics(tmp_path / "absent.jsonl")
