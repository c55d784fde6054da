"""hsi training as two declared stages: `train.stages.<name>` blocks honoured and validated, the weights each
stage hands on, and the demo recipe writing its own sample data."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from typer.testing import CliRunner

from zsk.core.checkpoint import load_checkpoint
from zsk.core.run import load_config
from zsk.core.stages import stage_config
from zsk.data import cubes
from zsk.tasks.hsi import data as hsi_data
from zsk.tasks.hsi.cli import TASK, app
from zsk.tasks.hsi.config import Config

runner = CliRunner()
TINY = [
    "model.patch=3", "model.band_groups=2", "model.branch_channels=[2,4]", "model.branch_spectral_kernels=[3,3]",
    "model.feature_dim=8", "model.pairwise_hidden=8", "model.refine_reduced_dim=2", "model.refine_widths=[4,4]",
    "train.steps=4", "train.batch_size=16", "train.eval_every=2", "data.rgb_bands=[8,4,1]",
]


def _sets(values: list[str]) -> list[str]:
    return [a for v in values for a in ("--set", v)]


def _records(run) -> list[dict]:
    return [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]


@pytest.fixture(scope="module")
def sample(tmp_path_factory):
    out = tmp_path_factory.mktemp("hsi_stages")
    hsi_data.write_sample(out, 24, 24, 12)
    return out


def test_stage_settings_inherit_train_and_the_refine_block_overrides():
    cfg, _ = load_config("hsi", Config, "hsi/indian_pines", ["data.root=/nowhere"])
    assert type(cfg.train).STAGES == ("piecewise", "refine")
    piecewise, refine = stage_config(cfg.train, "piecewise"), stage_config(cfg.train, "refine")
    assert piecewise is cfg.train and piecewise.epochs == 100 and piecewise.weight_decay == 5e-4
    # the refinement of the paper recipes: 200 Adam iterations, lr 1e-3, no weight decay, val OA every 50
    assert (refine.steps, refine.epochs, refine.lr, refine.weight_decay, refine.eval_every) == (200, None, 1e-3, 0.0, 50)
    assert refine.optimizer == "adam" and refine.schedule == "constant" and refine.select == "best"
    assert refine.refine_crop is None and refine.batch_size == 1


def test_stage_blocks_are_honoured(sample, tmp_path):
    run = tmp_path / "run"
    sets = [f"data.root={sample}", *TINY, "train.stages.piecewise.steps=3", "train.stages.refine.steps=2",
            "train.stages.refine.eval_every=1", "train.stages.refine.lr=0.005", "train.stages.refine.refine_crop=8"]
    r = runner.invoke(app, ["train", "--recipe", "hsi/demo", *_sets(sets), "--out", str(run), "--device", "cpu"])
    assert r.exit_code == 0, r.output
    assert json.loads((run / "eval-piecewise.json").read_text())["step"] == 3
    assert json.loads((run / "eval-refine.json").read_text())["step"] == 2
    records = _records(run)
    refine_train = [x for x in records if x.get("stage") == "refine" and x["kind"] == "train"]
    assert refine_train and all(x["lr"] == pytest.approx(0.005) for x in refine_train)
    assert [x["step"] for x in records if x.get("stage") == "refine" and x["kind"] == "eval"] == [1, 2]
    piecewise_train = [x for x in records if x.get("stage") == "piecewise" and x["kind"] == "train"]
    assert piecewise_train[-1]["step"] == 3 and piecewise_train[0]["lr"] == pytest.approx(3e-3)


def test_stages_hand_on_their_best_weights(sample, tmp_path):
    """best.pt holds the piecewise stage's best potentials and the refine stage's best refinement; last.pt the
    refinement's last weights on the same potentials (frozen during refinement)."""
    run = tmp_path / "run"
    sets = [f"data.root={sample}", *TINY, "train.stages.refine.steps=3", "train.stages.refine.eval_every=1"]
    r = runner.invoke(app, ["train", "--recipe", "hsi/demo", *_sets(sets), "--out", str(run), "--device", "cpu"])
    assert r.exit_code == 0, r.output
    best, last = load_checkpoint(run / "best.pt")["model"], load_checkpoint(run / "last.pt")["model"]
    for stage, prefix in (("piecewise", "potentials."), ("refine", "refine.")):
        chosen = load_checkpoint(run / f"best-{stage}.pt")["model"]
        assert chosen and all(torch.equal(best[prefix + k], v) for k, v in chosen.items()), stage
    final = load_checkpoint(run / "last-refine.pt")["model"]
    assert all(torch.equal(last["refine." + k], v) for k, v in final.items())
    assert all(torch.equal(last[k], v) for k, v in best.items() if k.startswith("potentials."))
    assert json.loads((run / "eval.json").read_text())["OA"] == pytest.approx(load_checkpoint(run / "best.pt")["metrics"]["OA"])


def test_unknown_stage_keys_exit_2(sample, tmp_path):
    base = ["train", "--recipe", "hsi/demo", "--set", f"data.root={sample}", "--out", str(tmp_path / "r")]
    for key, named in (("train.refine_lr=0.001", "train.refine_lr"),  # the old per-stage key
                       ("train.stages.refine.refine_lr=0.001", "train.stages.refine.refine_lr"),
                       ("train.stages.fusion.lr=0.001", "train.stages.fusion")):
        r = runner.invoke(app, [*base, "--set", key])
        assert r.exit_code == 2 and named in r.output, (key, r.output)


def test_demo_recipe_trains_without_sample_written(tmp_path, monkeypatch):
    """`zsk hsi train --recipe hsi/demo` on a machine that never ran `zsk hsi sample`: the sample scene is
    written into the cache (the same scene the old demo wrote) and trained on."""
    cache = tmp_path / "cache"
    monkeypatch.setenv("ZSK_CACHE", str(cache))
    run = tmp_path / "run"
    r = runner.invoke(app, ["train", "--recipe", "hsi/demo", *_sets([*TINY, "model.refine=false"]), "--out", str(run),
                            "--device", "cpu", "--json"])
    assert r.exit_code == 0, r.output
    folder = cache / "samples" / f"hsi-v{TASK.sample_version}"
    assert (run / "best.pt").is_file() and (folder / "sample.h5").is_file()
    assert load_checkpoint(run / "best.pt")["recipe"]["data"]["root"] == str(folder)
    cube, labels, _ = hsi_data.synthetic_scene(64, 64, 48, len(hsi_data.SAMPLE_CLASSES), seed=0)
    np.testing.assert_array_equal(cubes.read_cube(folder / "sample.h5"), cube)
    np.testing.assert_array_equal(cubes.read_labels(folder / "sample.h5"), labels)


def test_predict_folders_hold_the_cube_formats():
    assert set(TASK.input_suffixes) == set(cubes.CUBE_SUFFIXES)


def test_resume_skips_finished_stages(sample, tmp_path):
    run = tmp_path / "run"
    args = ["train", "--recipe", "hsi/demo", *_sets([f"data.root={sample}", *TINY, "train.stages.refine.steps=2"]),
            "--out", str(run), "--device", "cpu"]
    r = runner.invoke(app, args)
    assert r.exit_code == 0, r.output
    before = load_checkpoint(run / "best.pt")["model"]
    r = runner.invoke(app, [*args, "--resume"])
    assert r.exit_code == 0, r.output
    assert "stage piecewise finished earlier: skipped" in r.output and "stage refine finished earlier" in r.output
    after = load_checkpoint(run / "best.pt")["model"]
    assert all(torch.equal(v, after[k]) for k, v in before.items())
