"""End to end through the CLI: the 3-step demo task trains (one stage per step), eval --json gives old /
new / all / per_step / per_class, predict writes masks and overlays, per-class IoU of every step is in
metrics.jsonl, a sequence restarts mid-way with --from-step, and training beats the untrained model."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from typer.testing import CliRunner

from zsk.cli import app
from zsk.core.recipe import load_recipe


def _run(*args: str) -> str:
    result = CliRunner().invoke(app, list(args))
    assert result.exit_code == 0, result.output
    return result.stdout


def test_every_step_is_a_stage_with_its_files(trained: Path) -> None:
    for t in range(3):
        assert (trained / f"last-step{t}.pt").is_file() and (trained / f"eval-step{t}.json").is_file()
    rows = [json.loads(line) for line in (trained / "metrics.jsonl").read_text().splitlines()]
    evals = [r for r in rows if r["kind"] == "eval"]
    assert [r["stage"] for r in evals] == ["step0", "step1", "step2"]
    assert list(evals[0]["per_class"]) == ["background", "aeroplane", "bicycle", "bird"]
    assert list(evals[2]["per_class"])[-2:] == ["boat", "bottle"]  # per-class IoU after every step
    train_rows = [r for r in rows if r["kind"] == "train" and r["stage"] == "step1"]
    assert {"ce", "unkd", "sats"} <= set(train_rows[-1])  # distillation terms from step 1 on


def test_eval_json_and_predict(trained: Path, tmp_path: Path) -> None:
    out = json.loads(_run("css", "eval", "--checkpoint", str(trained / "best.pt"), "--json", "--quiet").splitlines()[-1])
    assert {"old", "new", "all", "per_step", "per_class"} <= set(out)
    assert [s["step"] for s in out["per_step"]] == [0, 1, 2] and out["per_step"][0]["new"] is None
    assert len(out["per_class"]) == 6
    assert abs(out["avg"] - sum(s["all"] for s in out["per_step"]) / 3) < 1e-12  # PLOP's avg over the steps
    saved = json.loads((trained / "eval.json").read_text())
    assert abs(saved["all"] - out["all"]) < 1e-9  # a re-run of the test equals the end-of-training one (PLOP #3)
    root = Path(load_recipe(trained / "recipe.yaml")["data"]["root"])
    img = sorted((root / "JPEGImages").glob("val_*.jpg"))[0]
    rows = [json.loads(line) for line in _run("css", "predict", str(img), "--checkpoint", str(trained / "best.pt"),
                                              "--out", str(tmp_path / "pred"), "--json", "--quiet").splitlines()
            if line.startswith("{")]
    assert len(rows) == 1 and Path(rows[0]["mask"]).is_file() and Path(rows[0]["overlay"]).is_file()
    legend = json.loads(Path(rows[0]["legend"]).read_text())
    assert [c["id"] for c in legend["classes"]] == [0, 1, 2, 3, 4, 5]  # every class learned so far, VOC ids


def test_training_beats_the_untrained_model(trained: Path) -> None:
    """Learning test: after the three steps, all-class mIoU is far above the same network untrained, and the
    base step alone beats it too."""
    from zsk.tasks.css.evaluate import evaluate, load

    final = json.loads((trained / "eval.json").read_text())
    loaded = load(trained / "best.pt")
    torch.manual_seed(0)
    fresh = type(loaded.model)(loaded.model.body.cfg, loaded.model.classes_per_step, 0.0,
                               loaded.model.head.to_segmentation.out_channels)
    loaded.model.load_state_dict(fresh.state_dict())
    untrained = evaluate(loaded)
    assert final["all"] > untrained["all"] + 0.3, (final["all"], untrained["all"])
    assert final["per_step"][0]["all"] > 0.5


def test_from_step_restarts_the_sequence_midway(trained: Path, tmp_path: Path) -> None:
    run = tmp_path / "from2"
    _run("css", "train", "--recipe", "css/demo", "--out", str(run), "--from-step", "2", "--quiet",
         "--set", f"train.init_checkpoint={trained / 'last-step1.pt'}",
         "--set", "runtime.loggers=[tensorboard]", "--set", "runtime.preview_images=1")
    assert not (run / "last-step0.pt").exists() and (run / "last-step2.pt").is_file()
    # the step's evaluation sends one image | ground truth | prediction panel to TensorBoard
    ea = pytest.importorskip("tensorboard.backend.event_processing.event_accumulator")
    acc = ea.EventAccumulator(str(run / "tensorboard" / "step2"), size_guidance={ea.IMAGES: 0})
    acc.Reload()
    (tag,) = acc.Tags()["images"]
    shot = acc.Images(tag)[-1]
    assert tag.startswith("step2/preview/0_") and shot.width == 3 * shot.height + 8  # square eval crops
    a = json.loads((trained / "eval-step2.json").read_text())["all"]
    b = json.loads((run / "eval-step2.json").read_text())["all"]
    assert abs(a - b) < 1e-6  # the same step-2 training from the same step-1 weights
    # steps 0 and 1 were scored in the init checkpoint's run: the history and PLOP's avg are complete
    final = json.loads((run / "eval.json").read_text())
    assert [s["step"] for s in final["per_step"]] == [0, 1, 2]
    full = json.loads((trained / "eval.json").read_text())
    assert [s["all"] for s in final["per_step"][:2]] == [s["all"] for s in full["per_step"][:2]]
    assert final["avg"] is not None and abs(final["avg"] - sum(s["all"] for s in final["per_step"]) / 3) < 1e-12
    # a checkpoint saved mid-sequence: its run folder's records of the earlier steps, then this evaluation
    mid = json.loads(_run("css", "eval", "--checkpoint", str(trained / "last-step1.pt"), "--json", "--quiet")
                     .splitlines()[-1])
    assert mid["step"] == 1 and [s["step"] for s in mid["per_step"]] == [0, 1]
    assert mid["per_step"][0]["all"] == full["per_step"][0]["all"] and mid["per_step"][1]["all"] == mid["all"]
    assert abs(mid["avg"] - (full["per_step"][0]["all"] + mid["all"]) / 2) < 1e-12
    # --resume of a finished run skips every finished step
    result = CliRunner().invoke(app, ["css", "train", "--recipe", "css/demo", "--out", str(trained), "--resume"])
    assert result.exit_code == 0 and result.output.count("finished earlier") == 3, result.output


def test_eval_modes_whole_and_slide(trained: Path) -> None:
    """The official center crop, the whole resized image and sliding windows (the shared inferer) all score the
    demo model; on the square sample images one window covers the resized image, so all three agree."""
    from zsk.tasks.css.evaluate import evaluate, load

    crop = json.loads(_run("css", "eval", "--checkpoint", str(trained / "best.pt"), "--json", "--quiet").splitlines()[-1])
    whole = evaluate(load(trained / "best.pt", sets=["eval.mode=whole"]))
    slide = evaluate(load(trained / "best.pt", sets=["eval.mode=slide", "eval.stride=20"]))
    assert abs(whole["all"] - crop["all"]) < 1e-9  # the square sample: the center crop is the whole image
    assert abs(slide["all"] - whole["all"]) < 1e-9 and whole["per_step"] == crop["per_step"]


def test_kill_mid_step_then_resume_auto_gives_the_uninterrupted_result(trained: Path, tmp_path: Path,
                                                                        monkeypatch) -> None:  # noqa: ANN001
    """SIGTERM in the middle of step 1 writes last-step1.pt and exits 143; ``--resume auto`` skips step 0,
    continues step 1 from its checkpoint and ends with the metrics of the uninterrupted run."""
    import os
    import signal

    from zsk.tasks.css import train as css_train

    real = css_train.make_step_fn
    calls = {"n": 0}

    def killing_step_fn(cfg, old):  # noqa: ANN001, ANN202
        fn = real(cfg, old)
        if old is None or old.num_old != 4:
            return fn

        def step(m, batch, i):  # noqa: ANN001, ANN202
            calls["n"] += 1
            if calls["n"] == 5:
                os.kill(os.getpid(), signal.SIGTERM)
            return fn(m, batch, i)

        return step

    monkeypatch.setattr(css_train, "make_step_fn", killing_step_fn)
    run = tmp_path / "killed"
    result = CliRunner().invoke(app, ["css", "train", "--recipe", "css/demo", "--out", str(run), "--quiet"])
    assert result.exit_code == 143, result.output
    assert (run / "last-step1.pt").is_file() and not (run / "eval-step1.json").exists()
    monkeypatch.setattr(css_train, "make_step_fn", real)
    _run("css", "train", "--recipe", "css/demo", "--out", str(run), "--resume", "auto", "--quiet")
    a, b = (json.loads((r / "eval.json").read_text()) for r in (trained, run))
    assert abs(a["all"] - b["all"]) < 1e-6 and a["per_class"] == pytest.approx(b["per_class"], abs=1e-6)


def test_distillation_prevents_catastrophic_forgetting(trained: Path, tmp_path: Path) -> None:
    """The method's learning test: from the same step-0 model, plain fine-tuning on steps 1-2 (no UNKD, no
    L_SATS, no pseudo-labels) forgets the base classes, SATS keeps them (old mIoU after the last step)."""
    run = tmp_path / "finetune"
    _run("css", "train", "--recipe", "css/demo", "--out", str(run), "--from-step", "1", "--quiet",
         "--set", f"train.init_checkpoint={trained / 'last-step0.pt'}", "--set", "train.kd_weight=0",
         "--set", "train.sats.weight=0", "--set", "train.pseudo_label.enabled=false")
    sats = json.loads((trained / "eval-step2.json").read_text())
    finetune = json.loads((run / "eval-step2.json").read_text())
    base = json.loads((trained / "eval-step0.json").read_text())["old"]
    assert sats["old"] > finetune["old"] + 0.2, (sats["old"], finetune["old"])
    assert sats["old"] > base - 0.1 and sats["all"] > finetune["all"]
