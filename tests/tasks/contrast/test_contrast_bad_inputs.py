"""Malformed inputs across the contrast verbs: each exits 2 with one `error:` line naming the file or recipe key
(no traceback), and a refused `train` leaves no run folder behind. Table-driven, in-process (CliRunner)."""

from __future__ import annotations

import pickle
from pathlib import Path

import numpy as np
import pytest
from PIL import Image
from typer.testing import CliRunner

from zsk.cli import app
from zsk.data.classification import write_cifar, write_stl10
from zsk.tasks.contrast.data import write_sample


class _Evil:
    def __reduce__(self):  # noqa: ANN204
        return (print, ("pwned",))


def write_inputs(d: Path) -> None:
    """Every malformed dataset of the table, in its real layout."""
    write_sample(d / "ok", per_class_train=3, per_class_val=2)
    # an empty class folder, an unreadable image, val classes that differ from train
    write_sample(d / "empty", per_class_train=3, per_class_val=2)
    for p in (d / "empty" / "train" / "green_dots").iterdir():
        p.unlink()
    write_sample(d / "broken", per_class_train=3, per_class_val=2)
    (d / "broken" / "train" / "red_stripes" / "red_stripes_001.png").write_bytes(b"not a png")
    write_sample(d / "mismatch", per_class_train=3, per_class_val=2)
    (d / "mismatch" / "val" / "blue_checks").rename(d / "mismatch" / "val" / "purple")
    # CIFAR: a batch holding an arbitrary object
    rng = np.random.default_rng(0)
    write_cifar(d / "cifar", rng.integers(0, 256, (10, 32, 32, 3), dtype=np.uint8), np.arange(10) % 3,
                ["a", "b", "c"], "cifar10", "train")
    (d / "cifar" / "cifar-10-batches-py" / "data_batch_2").write_bytes(pickle.dumps({b"data": _Evil()}, protocol=2))
    # CIFAR: a batch whose images have the wrong shape
    write_cifar(d / "cifar_shape", rng.integers(0, 256, (10, 32, 32, 3), dtype=np.uint8), np.arange(10) % 3,
                ["a", "b", "c"], "cifar10", "train")
    bad = {b"data": np.zeros((2, 100), np.uint8), b"labels": [0, 1]}
    (d / "cifar_shape" / "cifar-10-batches-py" / "data_batch_3").write_bytes(pickle.dumps(bad, protocol=2))
    # STL-10: a truncated image file
    write_stl10(d / "stl", "train", rng.integers(0, 256, (2, 96, 96, 3), dtype=np.uint8), np.array([1, 2]))
    path = d / "stl" / "stl10_binary" / "train_X.bin"
    path.write_bytes(path.read_bytes()[:-5])
    # Tiny ImageNet: a val annotation naming an unknown wnid
    for w in ("n01", "n02"):
        (d / "tiny" / "train" / w / "images").mkdir(parents=True)
        Image.fromarray(np.zeros((8, 8, 3), np.uint8)).save(d / "tiny" / "train" / w / "images" / "a.png")
    (d / "tiny" / "val" / "images").mkdir(parents=True)
    (d / "tiny" / "val" / "val_annotations.txt").write_text("v.JPEG\tn99\t0\t0\t1\t1\n")
    (d / "garbage.png").write_bytes(b"\x89PNG broken")


TRAIN = ["train", "--recipe", "contrast/demo", "--out", "{d}/run", "--quiet", "--set", "train.steps=1"]
ROWS = [
    (TRAIN + ["--set", "data.root={d}/missing"], ["data.root", "missing"]),
    (TRAIN + ["--set", "data.root={d}/empty"], ["green_dots", "holds no images"]),
    (TRAIN + ["--set", "data.root={d}/broken", "--set", "train.steps=3", "--set", "train.batch_size=4"],
     ["red_stripes_001.png", "cannot be read"]),
    (TRAIN + ["--set", "data.root={d}/mismatch"], ["classes", "differ"]),
    (TRAIN + ["--set", "data.root={d}/cifar", "--set", "data.format=cifar10", "--set", "data.val_split=test"],
     ["data_batch_2", "not a CIFAR python pickle"]),
    (TRAIN + ["--set", "data.root={d}/cifar", "--set", "data.format=cifar10"], ["data.val_split='val'", "train and test"]),
    (TRAIN + ["--set", "data.root={d}/cifar_shape", "--set", "data.format=cifar10", "--set", "data.val_split=test"],
     ["data_batch_3", "N x 3072 uint8"]),
    (TRAIN + ["--set", "data.root={d}/stl", "--set", "data.format=stl10", "--set", "data.val_split=test"],
     ["train_X.bin", "3 x 96 x 96"]),
    (TRAIN + ["--set", "data.root={d}/tiny", "--set", "data.format=tiny_imagenet"],
     ["val_annotations.txt line 1", "wnid"]),
    (TRAIN + ["--set", "data.root={d}/ok", "--set", "model.colour=lab"], ["model.colour"]),
    (TRAIN + ["--set", "data.root={d}/ok", "--set", "eval.layer=pool"], ["eval.layer"]),
    (TRAIN + ["--set", "data.root={d}/ok", "--set", "data.image_size=40"], ["image_size", "64"]),
    (TRAIN + ["--set", "data.root={d}/ok", "--set", "data.crop_scale=[0.5,0.2]"], ["data.crop_scale"]),
    (TRAIN + ["--set", "data.root={d}/ok", "--set", "eval.protocol=online"], ["model.online_probe"]),
    (TRAIN + ["--set", "data.root={d}/ok", "--set", "train.loss.gamma=-1"], ["train.loss.gamma"]),
    (["eval", "--checkpoint", "{d}/nothing.pt"], ["nothing.pt"]),
    (["predict", "{d}/garbage.png", "--checkpoint", "{d}/nothing.pt"], ["nothing.pt"]),
    (["linear", "--checkpoint", "{d}/nothing.pt"], ["nothing.pt"]),
]


@pytest.fixture(scope="module")
def inputs(tmp_path_factory) -> Path:  # noqa: ANN001
    d = tmp_path_factory.mktemp("bad")
    write_inputs(d)
    return d


@pytest.mark.parametrize("argv,fragments", ROWS, ids=[f"row{i}" for i in range(len(ROWS))])
def test_bad_input_exits_2_with_one_line(inputs, argv, fragments, one_error_line) -> None:  # noqa: ANN001
    args = ["contrast", *[a.replace("{d}", str(inputs)) for a in argv]]
    result = CliRunner().invoke(app, args)
    one_error_line(result, [f.replace("{d}", str(inputs)) for f in fragments])
    assert not (inputs / "run").exists(), "a refused train left its run folder"


def test_unreadable_image_in_predict_names_it(inputs, tmp_path, one_error_line) -> None:  # noqa: ANN001
    run = tmp_path / "run"
    r = CliRunner().invoke(app, ["contrast", "train", "--recipe", "contrast/demo", "--out", str(run), "--quiet",
                                 "--set", f"data.root={inputs / 'ok'}", "--set", "train.steps=1",
                                 "--set", "train.batch_size=4", "--set", "train.stages.linear.epochs=1",
                                 "--set", "train.stages.linear.batch_size=4"])
    assert r.exit_code == 0, r.output
    r = CliRunner().invoke(app, ["contrast", "predict", str(inputs / "garbage.png"), "--checkpoint", str(run),
                                 "--out", str(tmp_path / "p")])
    one_error_line(r, ["garbage.png"])
    assert not (tmp_path / "p" / "predictions.jsonl").exists()
