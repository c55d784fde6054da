"""End to end through the CLI: sample -> train (pretrain + linear) -> eval --json -> predict (files and stdin) ->
linear on the pretrained checkpoint -> exact resume -> the online-probe protocol; in-process with CliRunner."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from typer.testing import CliRunner

from zsk.cli import app

FAST = ["train.steps=6", "train.stages.linear.epochs=2", "train.stages.linear.milestone_epochs=[1]"]


def _sets(values: list[str]) -> list[str]:
    return [a for v in values for a in ("--set", v)]


def _json(output: str) -> dict:
    return json.loads([ln for ln in output.splitlines() if ln.startswith("{")][-1])


@pytest.fixture(scope="module")
def trained(tmp_path_factory) -> tuple[Path, Path]:  # noqa: ANN001
    d = tmp_path_factory.mktemp("contrast")
    r = CliRunner().invoke(app, ["contrast", "sample", str(d / "data"), "--per-class", "9", "--json"])
    assert r.exit_code == 0, r.output
    r = CliRunner().invoke(app, ["contrast", "train", "--recipe", "contrast/demo", "--out", str(d / "run"), "--quiet",
                                 "--json", *_sets([f"data.root={d / 'data'}", *FAST])])
    assert r.exit_code == 0, r.output
    return d, d / "run"


def test_train_writes_the_run_folder(trained) -> None:  # noqa: ANN001
    _, run = trained
    for name in ("best.pt", "last.pt", "eval.json", "last-pretrain.pt", "last-linear.pt", "recipe.yaml"):
        assert (run / name).is_file(), name
    result = json.loads((run / "eval.json").read_text())
    assert result["protocol"] == "metaug" and 0 <= result["top1"] <= result["top5"] <= 100


def test_eval_json_prints_top1_top5_protocol(trained) -> None:  # noqa: ANN001
    _, run = trained
    r = CliRunner().invoke(app, ["contrast", "eval", "--checkpoint", str(run), "--json", "--quiet"])
    assert r.exit_code == 0, r.output
    got = _json(r.stdout)
    assert {"top1", "top5", "protocol"} <= set(got) and got["protocol"] == "metaug"
    assert got["top1"] == pytest.approx(json.loads((run / "eval.json").read_text())["top1"])


def test_predict_files_and_stdin(trained, tmp_path) -> None:  # noqa: ANN001
    d, run = trained
    imgs = sorted((d / "data" / "val").rglob("*.png"))[:2]
    r = CliRunner().invoke(app, ["contrast", "predict", *map(str, imgs), "--checkpoint", str(run / "best.pt"),
                                 "--out", str(tmp_path / "p"), "--json", "--quiet", "--embedding", "--top-k", "2"])
    assert r.exit_code == 0, r.output
    rows = [json.loads(ln) for ln in r.stdout.splitlines() if ln.startswith("{")]
    assert len(rows) == 2 and len(rows[0]["top"]) == 2 and len(rows[0]["embedding"]) == 3 * 32
    assert (tmp_path / "p" / "predictions.jsonl").read_text().count("\n") == 2
    r = CliRunner().invoke(app, ["contrast", "predict", "-", "--checkpoint", str(run), "--out", str(tmp_path / "q"),
                                 "--json", "--quiet"], input=f"{imgs[0]}\n")
    assert r.exit_code == 0, r.output
    assert _json(r.stdout)["class"] == rows[0]["class"]


def test_linear_verb_on_the_pretrained_checkpoint(trained, tmp_path) -> None:  # noqa: ANN001
    _, run = trained
    r = CliRunner().invoke(app, ["contrast", "linear", "--checkpoint", str(run / "last-pretrain.pt"), "--out",
                                 str(tmp_path / "lin"), "--json", "--quiet",
                                 *_sets(["eval.layer=conv5", "eval.protocol=solo_offline",
                                         "train.stages.linear.epochs=1"])])
    assert r.exit_code == 0, r.output
    got = _json(r.stdout)
    assert got["layer"] == "conv5" and got["protocol"] == "solo_offline"
    r = CliRunner().invoke(app, ["contrast", "eval", "--checkpoint", str(tmp_path / "lin"), "--json", "--quiet"])
    assert r.exit_code == 0 and _json(r.stdout)["layer"] == "conv5"


def test_resume_continues_the_run(trained, tmp_path) -> None:  # noqa: ANN001
    d, _ = trained
    sets = _sets([f"data.root={d / 'data'}", "train.steps=4", "train.stages.linear.epochs=1"])
    out = tmp_path / "r"
    r = CliRunner().invoke(app, ["contrast", "train", "--recipe", "contrast/demo", "--out", str(out), "--quiet",
                                 *sets, "--set", "train.max_steps=2"])
    assert r.exit_code == 0, r.output
    r = CliRunner().invoke(app, ["contrast", "train", "--recipe", "contrast/demo", "--out", str(out), "--quiet",
                                 "--resume", *sets])
    assert r.exit_code == 0, r.output
    rows = [json.loads(ln) for ln in (out / "metrics.jsonl").read_text().splitlines()]
    assert max(r.get("step", 0) for r in rows if r.get("stage") == "pretrain") == 4
    # exact: the same weights, memory bank and generator optimizer state as an uninterrupted run
    whole = tmp_path / "whole"
    r = CliRunner().invoke(app, ["contrast", "train", "--recipe", "contrast/demo", "--out", str(whole), "--quiet",
                                 *sets])
    assert r.exit_code == 0, r.output
    a, b = (torch.load(p / "last-pretrain.pt", weights_only=True) for p in (out, whole))
    assert all(torch.equal(a["model"][k], b["model"][k]) for k in a["model"])
    ga, gb = a["extra"]["generator_optimizer"]["state"], b["extra"]["generator_optimizer"]["state"]
    assert all(torch.equal(ga[k]["momentum_buffer"], gb[k]["momentum_buffer"]) for k in ga)


def test_online_probe_protocol(trained, tmp_path) -> None:  # noqa: ANN001
    d, _ = trained
    out = tmp_path / "online"
    r = CliRunner().invoke(app, ["contrast", "train", "--recipe", "contrast/demo", "--out", str(out), "--quiet", "--json",
                                 *_sets([f"data.root={d / 'data'}", "train.steps=4", "model.online_probe=true",
                                         "eval.protocol=online"])])
    assert r.exit_code == 0, r.output
    assert not (out / "last-linear.pt").exists()  # the online head needs no linear stage
    assert _json(r.stdout)["protocol"] == "online"
    r = CliRunner().invoke(app, ["contrast", "eval", "--checkpoint", str(out), "--json", "--quiet"])
    assert r.exit_code == 0 and _json(r.stdout)["protocol"] == "online"


def test_linear_stage_follows_its_own_epochs_not_train_steps(trained) -> None:  # noqa: ANN001
    # FAST sets train.steps=6 (pretraining) and train.stages.linear.epochs=2: the probe must run 2 epochs of the
    # 36 labelled images in batches of 32, not inherit the pretraining's 6 steps
    from zsk.core.trainer import batches_per_epoch

    _, run = trained
    rows = [json.loads(ln) for ln in (run / "metrics.jsonl").read_text().splitlines()]
    steps = {s: max(r["step"] for r in rows if r.get("stage") == s and "step" in r) for s in ("pretrain", "linear")}
    assert steps == {"pretrain": 6, "linear": 2 * batches_per_epoch(36, 32)}


def test_pretraining_checkpoint_has_no_probe_score_only_embeddings(trained, tmp_path, one_error_line) -> None:  # noqa: ANN001
    d, run = trained
    # its probe was never trained: a top-1 of it would be noise labelled "metaug"
    r = CliRunner().invoke(app, ["contrast", "eval", "--checkpoint", str(run / "last-pretrain.pt"), "--json"])
    one_error_line(r, ["last-pretrain.pt", "no trained linear probe", "zsk contrast linear"])
    img = sorted((d / "data" / "val").rglob("*.png"))[0]
    r = CliRunner().invoke(app, ["contrast", "predict", str(img), "--checkpoint", str(run / "last-pretrain.pt"),
                                 "--out", str(tmp_path / "p"), "--json", "--quiet"])
    assert r.exit_code == 0, r.output
    row = _json(r.stdout)
    assert "class" not in row and "top" not in row and len(row["embedding"]) == 3 * 32


@pytest.mark.parametrize("verb", ["eval", "linear"])
def test_probe_only_checkpoint_names_the_whole_network_file(trained, verb, tmp_path, one_error_line) -> None:  # noqa: ANN001
    _, run = trained
    r = CliRunner().invoke(app, ["contrast", verb, "--checkpoint", str(run / "last-linear.pt"), "--out",
                                 str(tmp_path / "o")])
    one_error_line(r, ["last-linear.pt", "probe head only", "best.pt"])
    assert not (tmp_path / "o").exists()
