"""End-to-end command line: sample -> train (demo recipe, a few steps) -> eval --json (both protocols) ->
predict (--text, --texts-file, stdin) -> info; checkpoints are self-contained (vocabulary inside)."""

from __future__ import annotations

import json

import numpy as np
import pytest
from PIL import Image
from typer.testing import CliRunner

from zsk.core.checkpoint import load_checkpoint
from zsk.tasks.refer.cli import app

runner = CliRunner()
TINY = ["--set", "train.max_steps=3", "--set", "train.eval_every=3", "--set", "eval.max_refs=2",
        "--set", "train.log_every=1"]


def invoke(*args, input=None):  # noqa: A002
    return runner.invoke(app, [str(a) for a in args], catch_exceptions=False, input=input)


def last_json(result) -> dict:
    return json.loads(result.stdout.strip().splitlines()[-1])


@pytest.fixture(scope="module")
def sample_dir(tmp_path_factory):
    out = tmp_path_factory.mktemp("refer-sample")
    r = invoke("sample", out, "--images", 12, "--json")
    assert r.exit_code == 0, r.output
    assert last_json(r)["refs"] == 24
    return out


def test_end_to_end(sample_dir, tmp_path):
    run = tmp_path / "run"
    r = invoke("train", "--recipe", "refer/demo", "--set", f"data.root={sample_dir}", *TINY, "--out", run,
               "--device", "cpu", "--json", "--set", "runtime.loggers=[tensorboard]", "--set", "runtime.preview_images=1")
    assert r.exit_code == 0, r.output
    # the evaluation sent a ground truth | prediction picture of one ref to TensorBoard
    ea = pytest.importorskip("tensorboard.backend.event_processing.event_accumulator")
    acc = ea.EventAccumulator(str(run / "tensorboard"), size_guidance={ea.IMAGES: 0})
    acc.Reload()
    (tag,) = acc.Tags()["images"]
    assert tag.startswith("preview/ref") and acc.Images(tag)[-1].step == 3
    assert {"oIoU", "mIoU", "prec@0.5", "prec@0.9", "run_dir"} <= set(last_json(r))
    rows = [json.loads(x) for x in (run / "metrics.jsonl").read_text().splitlines()]
    train = [x for x in rows if x["kind"] == "train"]
    assert [x["step"] for x in train] == [1, 2, 3] and {"bce", "contrastive", "loss"} <= set(train[0])
    ckpt = load_checkpoint(run / "best.pt")
    assert ckpt["task"] == "refer" and "[CLS]" in ckpt["extra"]["vocab"]

    r = invoke("eval", "--checkpoint", run / "best.pt", "--split", "testA", "--json", "--out", tmp_path / "ev")
    assert r.exit_code == 0, r.output
    res = last_json(r)
    assert set(res) >= {"oIoU", "mIoU", "prec@0.5", "prec@0.6", "prec@0.7", "prec@0.8", "prec@0.9", "expressions"}
    assert res["split"] == "testA" and res["expressions"] == 6 and res["protocol"]["resolution"] == "input"
    per = json.loads((tmp_path / "ev" / "per_expression.json").read_text())
    assert len(per) == 6 and all(0 <= p["IoU"] <= 1 for p in per)
    r = invoke("eval", "--checkpoint", run, "--split", "testA", "--resolution", "original", "--threshold", 0.35,
               "--strict-prec", "--json")
    assert r.exit_code == 0, r.output
    assert last_json(r)["protocol"] == {"resolution": "original", "threshold": 0.35, "prec_rule": ">", "output": -1}

    image = sorted((sample_dir / "images/mscoco/images/train2014").glob("*.jpg"))[0]
    texts = tmp_path / "texts.txt"
    texts.write_text("the red square\n\nblue thing on the left\n")
    r = invoke("predict", image, "--checkpoint", run / "best.pt", "--text", "the green circle", "--texts-file", texts,
               "--out", tmp_path / "pred", "--json")
    assert r.exit_code == 0, r.output
    outs = [json.loads(x) for x in r.stdout.strip().splitlines() if x.startswith("{")]
    assert [o["text"] for o in outs] == ["the green circle", "the red square", "blue thing on the left"]
    mask = np.asarray(Image.open(outs[0]["mask"]))
    over = np.asarray(Image.open(outs[0]["overlay"]))
    assert mask.shape == (64, 64) and set(np.unique(mask)) <= {0, 255} and over.shape == (64, 64, 3)
    assert "the green circle" in Image.open(outs[0]["mask"]).text["Description"]
    r = invoke("predict", image, "--checkpoint", run / "best.pt", "--texts-file", "-", "--out", tmp_path / "p2",
               "--json", input="the yellow triangle\n")
    assert r.exit_code == 0, r.output
    assert (tmp_path / "p2" / f"{image.stem}_jpg_0_overlay.png").is_file() or list((tmp_path / "p2").glob("*_0_overlay.png"))


def test_info_of_the_paper_recipe_needs_no_weights(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    r = invoke("info", "--recipe", "refer/demo", "--set", "model.dec_layers=2", "--json")
    assert r.exit_code == 0, r.output
    info = last_json(r)
    assert info["outputs"] == 3 and info["gflops"] > 0
