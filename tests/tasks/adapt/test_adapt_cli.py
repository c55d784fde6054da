"""End to end through the CLI on the synthetic sample: train the demo (two active-learning rounds) -> eval --json
-> predict -> select, resume of a finished run, and the learning test (the trained teacher beats the untrained
network of the same seed on the target val set)."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from PIL import Image
from typer.testing import CliRunner

from zsk.cli import app


@pytest.fixture(scope="module")
def trained(tmp_path_factory: pytest.TempPathFactory) -> dict:
    d = tmp_path_factory.mktemp("adapt")
    runner = CliRunner()
    res = runner.invoke(app, ["adapt", "sample", str(d / "data"), "--json"])
    assert res.exit_code == 0, res.output
    roots = json.loads(res.stdout.strip().splitlines()[-1])
    sets = ["--set", f"data.root={roots['cityscapes']}", "--set", f"data.source_root={roots['gtav']}"]
    res = runner.invoke(app, ["adapt", "train", "--recipe", "adapt/demo", "--out", str(d / "run"), "--json", "--quiet",
                              *sets, "--set", "runtime.loggers=[tensorboard]", "--set", "runtime.preview_images=1"])
    assert res.exit_code == 0, res.output
    return {"dir": d, "run": d / "run", "roots": roots, "sets": sets,
            "train": json.loads(res.stdout.strip().splitlines()[-1])}


def test_train_writes_rounds_and_nested_lists(trained: dict) -> None:
    run = trained["run"]
    for name in ("best.pt", "last.pt", "eval.json", "best-round1.pt", "best-round2.pt", "eval-round2.json"):
        assert (run / name).is_file(), name
    r1 = (run / "labeled-round1.txt").read_text().split()
    r2 = (run / "labeled-round2.txt").read_text().split()
    assert len(r1) == 2 and len(r2) == 4 and r2[:2] == r1  # nested: round 2 adds the budget to round 1's list
    assert all(line.startswith("leftImg8bit/train/") for line in r2)
    assert {"mIoU", "mIoU16", "mIoU13", "per_class"} <= set(trained["train"])
    # each evaluation of round 2 sent an image | ground truth | prediction panel of one val image to TensorBoard
    ea = pytest.importorskip("tensorboard.backend.event_processing.event_accumulator")
    acc = ea.EventAccumulator(str(run / "tensorboard" / "round2"), size_guidance={ea.IMAGES: 0})
    acc.Reload()
    (tag,) = acc.Tags()["images"]
    shot = acc.Images(tag)[-1]
    val = sorted((Path(trained["roots"]["cityscapes"]) / "leftImg8bit" / "val").glob("*/*.png"))
    w, h = Image.open(val[0]).size
    assert tag.startswith("round2/preview/0_") and (shot.width, shot.height) == (3 * w + 8, h)


def test_eval_predict_and_select(trained: dict) -> None:
    runner, run, d = CliRunner(), trained["run"], trained["dir"]
    res = runner.invoke(app, ["adapt", "eval", "-c", str(run), "--json", "--quiet"])
    assert res.exit_code == 0, res.output
    metrics = json.loads(res.stdout.strip().splitlines()[-1])
    assert metrics["mIoU"] == pytest.approx(trained["train"]["mIoU"]) and len(metrics["per_class"]) == 19
    val = sorted((Path(trained["roots"]["cityscapes"]) / "leftImg8bit" / "val").glob("*/*.png"))
    res = runner.invoke(app, ["adapt", "predict", str(val[0]), str(val[1]), "-c", str(run / "best.pt"), "--out",
                              str(d / "pred"), "--json", "--quiet"])
    assert res.exit_code == 0, res.output
    rows = [json.loads(line) for line in res.stdout.strip().splitlines()]
    assert len(rows) == 2
    pred = Image.open(rows[0]["prediction"])
    assert pred.mode == "P" and pred.size == Image.open(val[0]).size
    assert np.array(pred).max() < 19
    res = runner.invoke(app, ["adapt", "select", "-c", str(run / "best.pt"), "--budget", "3", "--out",
                              str(d / "sel" / "labeled.txt"), "--json", "--quiet"])
    assert res.exit_code == 0, res.output
    sel = json.loads(res.stdout.strip().splitlines()[-1])
    lines = (d / "sel" / "labeled.txt").read_text().split()
    before = (run / "labeled-round2.txt").read_text().split()
    assert lines[:4] == before and len(lines) == 7 and not set(sel["selected"]) & set(before)
    assert Image.open(d / "sel" / "labeled-montage.png").size[1] > 0


def test_resume_of_a_finished_run_skips_every_round(trained: dict) -> None:
    res = CliRunner().invoke(app, ["adapt", "train", "--recipe", "adapt/demo", "--out", str(trained["run"]),
                                   "--resume", "--json", *trained["sets"]])
    assert res.exit_code == 0, res.output
    assert "round1 finished earlier" in res.output and "round2 finished earlier" in res.output
    assert json.loads(res.stdout.strip().splitlines()[-1])["mIoU"] == pytest.approx(trained["train"]["mIoU"])


def test_training_beats_the_untrained_network(trained: dict) -> None:
    from zsk.core.recipe import load_recipe, parse_config
    from zsk.tasks.adapt.config import Config
    from zsk.tasks.adapt.evaluate import evaluate_model
    from zsk.tasks.adapt.train import build_model

    sets = [s for s in trained["sets"] if s != "--set"]
    cfg = parse_config(Config, load_recipe("adapt/demo", sets))
    baseline = evaluate_model(build_model(cfg).teacher, cfg, "val")["mIoU"]
    assert trained["train"]["mIoU"] > baseline + 10, (trained["train"]["mIoU"], baseline)


def test_import_official_checkpoint_evaluates_like_the_run(trained: dict) -> None:
    """A checkpoint in STAL's train.py format (DDP `module.` prefixes, model_state / teacher_state,
    class_criterion) imports into a zsk checkpoint whose eval equals the run's."""
    import torch

    d = trained["dir"]
    state = torch.load(trained["run"] / "best.pt", map_location="cpu", weights_only=True)["model"]
    official = {
        "epoch": 3, "best_miou": 0.5, "optimizer_state": {"state": {}, "param_groups": []},
        "model_state": {f"module.{k[len('student.'):]}": v for k, v in state.items() if k.startswith("student.")},
        "teacher_state": {f"module.{k[len('teacher.'):]}": v for k, v in state.items() if k.startswith("teacher.")},
        "class_criterion": state["class_conf"].repeat(3, 1),
    }
    torch.save(official, d / "ckpt_best.pth")
    runner = CliRunner()
    res = runner.invoke(app, ["adapt", "import-official", str(d / "ckpt_best.pth"), "--recipe", "adapt/demo", "--out",
                              str(d / "imported.pt"), "--json", "--quiet", *trained["sets"]])
    assert res.exit_code == 0, res.output
    assert json.loads(res.stdout.strip().splitlines()[-1])["official_best_miou"] == pytest.approx(50.0)
    res = runner.invoke(app, ["adapt", "eval", "-c", str(d / "imported.pt"), "--json", "--quiet"])
    assert res.exit_code == 0, res.output
    assert json.loads(res.stdout.strip().splitlines()[-1])["mIoU"] == pytest.approx(trained["train"]["mIoU"])
