"""Malformed inputs across the css verbs: each exits 2 with one ``error:`` line naming the file or the
recipe key and the fix (no traceback)."""

from __future__ import annotations

import shutil
from pathlib import Path

import numpy as np
import pytest
from PIL import Image
from typer.testing import CliRunner

from zsk.cli import app
from zsk.core.recipe import load_recipe
from zsk.tasks.css.data import write_sample


def _voc_copy(base: Path, name: str, mutate) -> Path:  # noqa: ANN001
    """A fresh 8-image MiB-layout VOC set with one step-0 training item (holding a class 1..3) changed by
    ``mutate(root, its_name)``."""
    out = base / name
    root = write_sample(out, num_train=8, num_val=2)
    first = next(p.stem for p in sorted((root / "SegmentationClassAug").glob("train_*.png"))
                 if set(np.unique(np.array(Image.open(p)))) & {1, 2, 3})
    mutate(root, first)
    return out


def _garbage_image(root: Path, n: str) -> None:
    (root / "JPEGImages" / f"{n}.jpg").write_bytes(b"\xff\xd8 not a jpeg" * 10)


def _big_id(root: Path, n: str) -> None:
    Image.fromarray(np.full((64, 64), 40, np.uint8)).save(root / "SegmentationClassAug" / f"{n}.png")


def _wrong_size(root: Path, n: str) -> None:
    Image.fromarray(np.full((32, 48), 1, np.uint8)).save(root / "SegmentationClassAug" / f"{n}.png")


def _no_label(root: Path, n: str) -> None:
    (root / "SegmentationClassAug" / f"{n}.png").unlink()


def _empty_split(root: Path, n: str) -> None:
    (root / "splits" / "train_aug.txt").write_text("")


def _bad_line(root: Path, n: str) -> None:
    (root / "splits" / "train_aug.txt").write_text("/JPEGImages/x.jpg\n")


DATA_ROWS = [
    (_garbage_image, "cannot be read"),
    (_big_id, ["SegmentationClassAug/train_aug_", "class id(s) [40]"]),
    (_wrong_size, ["SegmentationClassAug/train_aug_", "masks must match"]),
    (_no_label, ["SegmentationClassAug/train_aug_", "does not exist"]),
    (_empty_split, "lists no images"),
    (_bad_line, ["train_aug.txt", "must hold an image and a label path"]),
]


@pytest.mark.parametrize(("mutate", "fragments"), DATA_ROWS, ids=[r[0].__name__ for r in DATA_ROWS])
def test_bad_dataset_files(mutate, fragments, tmp_path, one_error_line) -> None:  # noqa: ANN001
    root = _voc_copy(tmp_path, "voc", mutate)
    result = CliRunner().invoke(app, ["css", "train", "--recipe", "css/demo", "--out", str(tmp_path / "run"),
                                      "--set", f"data.root={root}", "--set", "train.max_steps=1",
                                      "--set", "train.batch_size=2"])
    one_error_line(result, fragments)


RECIPE_ROWS = [
    (["--set", "data.root=/nonexistent/voc"], "not a PASCAL VOC 2012 folder"),
    (["--set", "data.dataset=ade", "--set", "data.root=/nonexistent/ade"], "not an ADE20K folder"),
    (["--set", "data.steps=null", "--set", "data.task=15-2"], "data.task"),
    (["--set", "data.steps=[[1, 2], [3]]"], "data.steps"),
    (["--set", "data.steps=[[0, 1], [1]]"], "data.steps"),
    (["--set", "data.steps=[[0, 1, 2, 3], [9]]"], ["step 1 of data.steps", "no training image", "[9]"]),  # empty class
    (["--set", "data.steps=[[0, 1], [30]]"], ["data.steps", "[30]"]),
    (["--set", "model.pretrained=/nonexistent/mit_b2.pth"], "mit_b2.pth"),
    (["--set", "train.sats.wieght=3"], "train.sats.wieght"),
    (["--set", "train.sats.head_layout=reshape"], "train.sats.head_layout"),
    (["--set", "train.stages.step0.lr=-1"], "train.stages.step0.lr"),
    (["--from-step", "5"], ["train.from_step=5", "data.steps has steps 0..2"]),  # the demo's steps, not data.task
    (["--from-step", "5", "--set", "data.steps=null", "--set", "data.task=19-1"], ["from_step=5", "task 19-1", "0..1"]),
    (["--from-step", "1"], ["step0", "train.init_checkpoint"]),
    (["--from-step", "1", "--set", "train.init_checkpoint=/nonexistent/last-step0.pt"], "/nonexistent/last-step0.pt"),
]


@pytest.mark.parametrize(("args", "fragments"), RECIPE_ROWS, ids=[" ".join(r[0])[-40:] for r in RECIPE_ROWS])
def test_bad_recipe_values(args, fragments, tmp_path, one_error_line) -> None:  # noqa: ANN001
    result = CliRunner().invoke(app, ["css", "train", "--recipe", "css/demo", "--out", str(tmp_path / "run"), *args])
    one_error_line(result, fragments)


def test_bad_predict_and_eval_inputs(trained, tmp_path, one_error_line) -> None:  # noqa: ANN001
    ckpt = str(trained / "best.pt")
    (tmp_path / "garbage.jpg").write_bytes(b"\xff\xd8 nope" * 10)
    Image.fromarray(np.zeros((3, 300, 3), np.uint8)).save(tmp_path / "thin.png")
    (tmp_path / "corrupt.pt").write_bytes(b"not a checkpoint")
    runner = CliRunner()
    one_error_line(runner.invoke(app, ["css", "predict", str(tmp_path / "garbage.jpg"), "--checkpoint", ckpt, "--out",
                                       str(tmp_path / "p")]), "garbage.jpg")
    one_error_line(runner.invoke(app, ["css", "predict", str(tmp_path / "thin.png"), "--checkpoint", ckpt, "--out",
                                       str(tmp_path / "p2")]), ["thin.png", "at least 8 px"])
    one_error_line(runner.invoke(app, ["css", "eval", "--checkpoint", str(tmp_path / "corrupt.pt")]), "corrupt.pt")
    root = Path(load_recipe(trained / "recipe.yaml")["data"]["root"])
    moved = tmp_path / "voc"
    shutil.copytree(root.parent, moved)
    (moved / "PascalVOC12" / "splits" / "val.txt").unlink()
    one_error_line(runner.invoke(app, ["css", "eval", "--checkpoint", ckpt, "--set", f"data.root={moved}"]),
                   "val.txt")
