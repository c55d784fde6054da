"""Training measurably helps: after a short ACNet run on the sample set, sketch -> photo retrieval of the seen
classes (queries E(G(s)), gallery E(p)) beats the same networks at their random initialisation."""

from __future__ import annotations

from pathlib import Path

import torch

from zsk.core.run import release_run, start_run
from zsk.tasks.sbir.cli import TASK
from zsk.tasks.sbir.data import load_split, write_sample
from zsk.tasks.sbir.evaluate import evaluate_split
from zsk.tasks.sbir.train import build_model


def test_training_beats_the_random_initialisation(tmp_path: Path) -> None:
    root = write_sample(tmp_path / "data")
    sets = [f"data.root={root}", "train.epochs=8", "model.generator_blocks=1", "eval.split=null"]
    ctx = start_run("sbir", TASK.Config, "sbir/demo", sets, out=tmp_path / "run", device="cpu")
    TASK.train(ctx)
    release_run(ctx)
    cfg = ctx.cfg
    seen = load_split(cfg.data, "train")
    torch.manual_seed(cfg.runtime.seed)
    baseline = evaluate_split(build_model(cfg, len(seen.classes)), cfg, seen, torch.device("cpu"))
    trained = evaluate_split(TASK.load(ctx.run_dir / "last.pt", device="cpu").model, cfg, seen, torch.device("cpu"))
    chance = 1 / len(seen.classes)
    assert baseline["mAP@all"] < chance + 0.12  # the untrained networks rank near chance
    assert trained["mAP@all"] > baseline["mAP@all"] + 0.08, (baseline["mAP@all"], trained["mAP@all"])
