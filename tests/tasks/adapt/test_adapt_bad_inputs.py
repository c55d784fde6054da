"""Malformed inputs across the adapt verbs: each exits 2 with one `error:` line naming the file or the recipe key
(no traceback, no "unexpected ..."). Table-driven, as the other tasks' bad-input tests.

`ROWS` holds argv templates: `{cs}`/`{gta}` are a damaged copy of the sample's Cityscapes / GTAV folders (one
damage per row, made by `damage`), `{d}` a scratch folder, `{ckpt}` a tiny trained best.pt.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image
from typer.testing import CliRunner

from zsk.cli import app

TINY = ["--set", "train.epochs=1", "--set", "train.al.rounds=1", "--set", "data.num_source=3"]
TRAIN = ["adapt", "train", "--recipe", "adapt/demo", "--out", "{d}/run", "--set", "data.root={cs}",
         "--set", "data.source_root={gta}", *TINY]


def _first(folder: Path, pattern: str) -> Path:
    return sorted(folder.glob(pattern))[0]


def damage(kind: str, cs: Path, gta: Path, d: Path) -> None:
    """Apply one damage to the copied sample (real formats, one fault each)."""
    if kind == "no_train":
        shutil.rmtree(cs / "leftImg8bit" / "train")
    elif kind == "no_gta_images":
        shutil.rmtree(gta / "images")
    elif kind == "truncated_image":
        p = _first(cs / "leftImg8bit" / "train", "*/*.png")
        p.write_bytes(p.read_bytes()[:100])
    elif kind == "garbage_label":
        for p in (gta / "labels").glob("*.png"):
            p.write_bytes(b"not a png" * 20)
    elif kind == "missing_label":
        p = _first(cs / "gtFine" / "val", "*/*_labelTrainIds.png")
        p.unlink()
        Path(str(p).replace("_labelTrainIds", "_labelIds")).unlink()
    elif kind == "label_shape":
        p = _first(cs / "gtFine" / "train", "*/*_labelTrainIds.png")
        Image.fromarray(np.zeros((10, 10), np.uint8)).save(p)
    elif kind == "label_id":
        for p in (cs / "gtFine" / "val").glob("*/*_labelTrainIds.png"):
            a = np.array(Image.open(p))
            a[0, 0] = 40
            Image.fromarray(a).save(p)
    elif kind == "lists":
        (d / "empty.txt").write_text("\n")
        (d / "bad.txt").write_text("some/other/file.png\n")
        (d / "unknown.txt").write_text("leftImg8bit/train/ulm/ulm_999999_000019_leftImg8bit.png\n")


ROWS: list[tuple[str, str, list[str], list[str]]] = [
    ("no_train", "", TRAIN, ["leftImg8bit/train", "data.root"]),
    ("no_gta_images", "", TRAIN, ["images", "data.source_root"]),
    ("truncated_image", "", TRAIN, ["image", "_leftImg8bit.png", "cannot be read"]),
    ("garbage_label", "", TRAIN, ["label", "labels/", "cannot be read"]),
    ("missing_label", "", TRAIN, ["label", "does not exist"]),
    ("label_shape", "", TRAIN, ["_labelTrainIds.png", "must match"]),
    ("label_id", "", TRAIN, ["_labelTrainIds.png", "id 40"]),
    ("lists", "", [*TRAIN, "--set", "train.al.initial_list={d}/empty.txt"], ["empty.txt", "is empty"]),
    ("lists", "", [*TRAIN, "--set", "train.al.initial_list={d}/bad.txt"], ["bad.txt", "some/other/file.png"]),
    ("lists", "", [*TRAIN, "--set", "train.al.initial_list={d}/unknown.txt"], ["unknown.txt", "ulm_999999"]),
    ("lists", "", [*TRAIN, "--set", "train.al.initial_list={d}/missing.txt"], ["missing.txt", "does not exist"]),
    ("", "", [*TRAIN, "--set", "train.al.rounds=3", "--set", "train.al.budget_per_round=6"], ["train.al", "would label all"]),
    ("", "", [*TRAIN, "--set", "train.al.selector=margin"], ["train.al.selector"]),
    ("", "", [*TRAIN, "--set", "data.crop_size=[4,4]"], ["data.crop_size"]),
    ("", "", [*TRAIN, "--set", "model.layers=[1,1,1,2]"], ["model.multi_grid"]),
    ("", "", [*TRAIN, "--set", "train.al.rounds=9"], ["train.al.rounds"]),
    ("", "", [*TRAIN, "--set", "model.pretrained={d}/none.pth"], ["model.pretrained", "none.pth"]),
    ("", "", [*TRAIN, "--set", "model.pretrained={d}/junk.pth"], ["junk.pth", "cannot be read"]),
    ("", "", [*TRAIN, "--set", "data.synthia_label_map=cs16"], ["data.synthia_label_map"]),
    ("", "ckpt", ["adapt", "select", "-c", "{ckpt}", "--budget", "0", "--out", "{d}/l.txt"], ["--budget"]),
    ("", "ckpt", ["adapt", "select", "-c", "{ckpt}", "--budget", "99", "--out", "{d}/l.txt"], ["--budget 99"]),
    ("", "ckpt", ["adapt", "select", "-c", "{ckpt}", "--budget", "1", "--out", "{d}"], ["is a folder"]),
    ("lists", "ckpt", ["adapt", "select", "-c", "{ckpt}", "--budget", "1", "--out", "{d}/l.txt", "--labeled",
                       "{d}/unknown.txt"], ["ulm_999999", "not a Cityscapes train image"]),
    ("", "ckpt", ["adapt", "predict", "{d}/notes.png", "-c", "{ckpt}", "--out", "{d}/pred"], ["notes.png"]),
    ("", "ckpt", ["adapt", "eval", "-c", "{d}/medseg.pt"], ["medseg"]),
    ("", "ckpt", ["adapt", "eval", "-c", "{d}/garbage.pt"], ["garbage.pt"]),
    ("", "", ["adapt", "sample", "{d}/s", "--size", "8,8"], ["--size"]),
    ("", "", ["adapt", "import-official", "{d}/medseg.pt", "--recipe", "adapt/demo", "--out", "{d}/x.pt"],
     ["medseg.pt", "model_state"]),
    ("", "", ["adapt", "import-official", "{d}/garbage.pt", "--recipe", "adapt/demo", "--out", "{d}/x.pt"],
     ["garbage.pt", "cannot be read"]),
]


@pytest.fixture(scope="module")
def sample(tmp_path_factory: pytest.TempPathFactory) -> dict:
    d = tmp_path_factory.mktemp("adapt-bad")
    res = CliRunner().invoke(app, ["adapt", "sample", str(d / "data"), "--source", "4", "--train", "8", "--json"])
    assert res.exit_code == 0, res.output
    roots = json.loads(res.stdout.strip().splitlines()[-1])
    res = CliRunner().invoke(app, ["adapt", "train", "--recipe", "adapt/demo", "--out", str(d / "ckpt"), "--quiet",
                                   "--set", f"data.root={roots['cityscapes']}", "--set",
                                   f"data.source_root={roots['gtav']}", *TINY])
    assert res.exit_code == 0, res.output
    return {"cs": Path(roots["cityscapes"]), "gta": Path(roots["gtav"]), "ckpt": d / "ckpt" / "best.pt"}


@pytest.mark.parametrize("row", range(len(ROWS)))
def test_bad_input_exits_2_with_one_line(row: int, sample: dict, tmp_path: Path, one_error_line) -> None:  # noqa: ANN001
    kind, _, argv, fragments = ROWS[row]
    cs, gta = tmp_path / "cityscapes", tmp_path / "gtav"
    shutil.copytree(sample["cs"], cs)
    shutil.copytree(sample["gta"], gta)
    (tmp_path / "notes.png").write_text("not an image\n")
    (tmp_path / "junk.pth").write_bytes(b"junk" * 10)
    torch.save({"format_version": 1, "task": "medseg", "recipe": {"task": "medseg"}, "model": {}}, tmp_path / "medseg.pt")
    (tmp_path / "garbage.pt").write_bytes(b"not a torch file" * 8)
    if kind:
        damage(kind, cs, gta, tmp_path)
    args = [a.format(d=tmp_path, cs=cs, gta=gta, ckpt=sample["ckpt"]) for a in argv]
    result = CliRunner().invoke(app, args)
    one_error_line(result, [f.format(d=tmp_path) for f in fragments])
