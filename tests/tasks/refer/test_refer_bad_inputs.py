"""Bad inputs exit 2 with one line naming the file or key and the fix (the one_error_line fixture)."""

from __future__ import annotations

import json
import os
import pickle
import shutil

import pytest
from typer.testing import CliRunner

from zsk.tasks.refer.cli import app
from zsk.tasks.refer.data import write_sample

runner = CliRunner()


class _Evil:
    def __reduce__(self):  # noqa: ANN204
        return (os.system, ("echo pwned",))


@pytest.fixture(scope="module")
def clean(tmp_path_factory):
    return write_sample(tmp_path_factory.mktemp("refer-clean"), num_images=8, size=48)


def _refs(root):
    return root / "refcoco" / "refs(unc).p"


def _inst(root):
    return root / "refcoco" / "instances.json"


def _edit_inst(root, fn):
    d = json.loads(_inst(root).read_text())
    fn(d)
    _inst(root).write_text(json.dumps(d))


def _first_train_image(root):
    refs = pickle.loads(_refs(root).read_bytes())
    image_id = next(r["image_id"] for r in refs if r["split"] == "train")
    return root / "images/mscoco/images/train2014" / f"COCO_train2014_{image_id:012d}.jpg"


CASES = {
    "missing refs file": (lambda r: _refs(r).unlink(), ["refs(unc).p", "not found"]),
    "refs pickle with code": (lambda r: _refs(r).write_bytes(pickle.dumps([_Evil()], protocol=2)),
                              ["refs(unc).p", "not a plain refs pickle"]),
    "refs not a list": (lambda r: _refs(r).write_bytes(pickle.dumps({"a": 1})), ["refs(unc).p", "non-empty list"]),
    "truncated refs": (lambda r: _refs(r).write_bytes(_refs(r).read_bytes()[:50]), ["refs(unc).p"]),
    "ref without sentences": (lambda r: _refs(r).write_bytes(pickle.dumps(
        [{**x, "sentences": []} for x in pickle.loads(_refs(r).read_bytes())])), ["refs(unc).p", "no sentences"]),
    "instances not json": (lambda r: _inst(r).write_text("{oops"), ["instances.json", "not valid JSON"]),
    "instances without images": (lambda r: _inst(r).write_text("{}"), ["instances.json", "COCO instances"]),
    "bad polygon": (lambda r: _edit_inst(r, lambda d: d["annotations"][0].update(segmentation=[[1, 2, 3]])),
                    ["instances.json", "polygon"]),
    "unreadable image": (lambda r: _first_train_image(r).write_bytes(b"not a jpeg"), ["COCO_train2014_", "cannot be read"]),
    "missing image": (lambda r: _first_train_image(r).unlink(), ["COCO_train2014_", "not found", "data.image_dir"]),
    "image of another size": (lambda r: _edit_inst(r, lambda d: [im.update(height=50) for im in d["images"]]),
                              ["COCO_train2014_", "instances.json says"]),
}


@pytest.mark.parametrize("case", list(CASES), ids=list(CASES))
def test_bad_data_exits_2(case, clean, tmp_path, one_error_line):
    root = tmp_path / "data"
    shutil.copytree(clean, root)
    breaker, fragments = CASES[case]
    breaker(root)
    r = runner.invoke(app, ["train", "--recipe", "refer/demo", "--set", f"data.root={root}", "--set", "train.max_steps=1",
                            "--set", "eval.split=null", "--device", "cpu", "--out", str(tmp_path / "run")])
    one_error_line(r, fragments)
    assert not (tmp_path / "run" / "best.pt").exists()


@pytest.mark.parametrize("sets, fragments", [
    (["data.split_by=umd"], ["data.split_by", "unc"]),
    (["data.image_size=50"], ["data.image_size", "multiple of 32"]),
    (["data.image_size=32"], ["data.image_size", "at least 64"]),
    (["train.loss.contrastive.tau=0"], ["train.loss.contrastive.tau"]),
    (["eval.threshold=1.5"], ["eval.threshold"]),
    (["train.loss.contrastive.positive=instance_mean", "train.loss.contrastive.negatives=image"],
     ["instance_mean", "negatives=batch"]),
    (["model.mask_dim=30"], ["model.mask_dim"]),
    (["eval.split=testC"], ["testC", "has no refs"]),
    (["model.swin_weights=/nonexistent/swin.pth"], ["model.swin_weights", "/nonexistent/swin.pth"]),
    (["model.tokenizer=/nonexistent/vocab.txt"], ["model.tokenizer", "/nonexistent/vocab.txt"]),
    (["model.vocab_size=8"], ["model.vocab_size"]),
    (["data.root=/nonexistent/refer-root"], ["data.root", "/nonexistent/refer-root", "zsk refer sample"]),
])
def test_bad_recipe_values_exit_2(sets, fragments, clean, tmp_path, one_error_line):
    args = ["train", "--recipe", "refer/demo", "--set", f"data.root={clean}", "--set", "train.max_steps=1",
            "--device", "cpu", "--out", str(tmp_path / "run")]
    for s in sets:
        args += ["--set", s]
    one_error_line(runner.invoke(app, args), fragments)


def test_bad_predict_and_eval_usage(tmp_path, one_error_line):
    from zsk.core.run import start_run
    from zsk.tasks.refer import train
    from zsk.tasks.refer.config import Config

    root = write_sample(tmp_path / "d", num_images=4, size=32)
    ctx = start_run("refer", Config, "refer/demo", [f"data.root={root}", "train.max_steps=1",
                                                   "eval.max_refs=1", "train.batch_size=2"], out=tmp_path / "run", device="cpu")
    train.train(ctx)
    ckpt = str(tmp_path / "run" / "best.pt")
    image = str(next((root / "images/mscoco/images/train2014").glob("*.jpg")))
    one_error_line(runner.invoke(app, ["predict", image, "--checkpoint", ckpt, "--out", str(tmp_path / "p")]),
                   ["--text"])
    one_error_line(runner.invoke(app, ["predict", image, "--checkpoint", ckpt, "--texts-file",
                                       str(tmp_path / "none.txt")]), ["--texts-file", "none.txt"])
    one_error_line(runner.invoke(app, ["predict", image, "--checkpoint", ckpt, "--texts-file", "-", "--out",
                                       str(tmp_path / "p")], input=""), ["--texts-file -", "--text"])
    assert not (tmp_path / "p").exists() or not any((tmp_path / "p").iterdir())
    one_error_line(runner.invoke(app, ["eval", "--checkpoint", ckpt, "--resolution", "full"]), ["--resolution", "full"])
    one_error_line(runner.invoke(app, ["eval", "--checkpoint", ckpt, "--split", "nosuch"]), ["nosuch", "has no refs"])
    bad = tmp_path / "bad.png"
    bad.write_bytes(b"\x89PNG broken")
    one_error_line(runner.invoke(app, ["predict", str(bad), "--checkpoint", ckpt, "--text", "a"]), ["bad.png"])
