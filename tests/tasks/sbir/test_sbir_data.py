"""Readers of both on-disk layouts (ACNet's train/val folders; the flat layout with SAKE's unseen-class list),
ACNet's class numbering, the TU-Berlin >= 400-photo rule, the transform, and the sample writer."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from zsk.core.recipe import load_recipe, parse_config
from zsk.tasks.sbir.config import Config
from zsk.tasks.sbir.data import SketchPhotoPairs, class_order, load_image, read_split, write_sample
from zsk.tasks.sbir.splits import SPLITS, parse_class_list


def _img(path: Path, value: int = 200, size: tuple[int, int] = (20, 12)) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.new("RGB", size, (value, value // 2, 0)).save(path)


def _cfg(root: Path, *sets: str) -> Config:
    return parse_config(Config, load_recipe("sbir/demo", [f"data.root={root}", *sets]))


def test_acnet_folders_layout(tmp_path: Path) -> None:
    for split, classes in (("train", ["alarm", "alarm clock", "bee"]), ("val", ["cow", "bat"])):
        for c in classes:
            for i in range(2):
                _img(tmp_path / split / "sketch" / c / f"{i}.jpg")
            for i in range(3 if c != "bat" else 1):
                _img(tmp_path / split / "photo" / c / f"{i}.jpg")
    cfg = _cfg(tmp_path)
    train = read_split(cfg.data, "train")
    assert train.classes == ["alarm clock", "alarm", "bee"]  # ACNet numbers by sorted paths: ' ' < '/'
    assert len(train.sketches) == 6 and len(train.photos) == 9
    val = read_split(cfg.data, "val")
    assert val.classes == ["bat", "cow"] and not val.dropped
    # TU-Berlin's rule: unseen classes with fewer photos than data.min_val_photos are left out
    val = read_split(_cfg(tmp_path, "data.min_val_photos=2").data, "val")
    assert val.classes == ["cow"] and val.dropped == ["bat"] and len(val.sketches) == 2


def test_flat_layout_with_sake_list(tmp_path: Path) -> None:
    names = [f"c{i:02d}" for i in range(25)] + ["hot air balloon", "zebra"]
    for c in names:
        _img(tmp_path / "sketch" / c / "a.png")
        _img(tmp_path / "photo" / c / "a.jpg")
    unseen = names[1:26]  # 25 classes, one with spaces in its name
    (tmp_path / "zeroshot1").mkdir()  # where SAKE's dataset.zip keeps the 25-class list
    (tmp_path / "zeroshot1" / "cname_cid_zero.txt").write_text("".join(f"{c} {i}\n" for i, c in enumerate(unseen)))
    cfg = _cfg(tmp_path, "data.split=sake25")
    val = read_split(cfg.data, "val")
    assert sorted(val.classes) == sorted(unseen)
    assert read_split(cfg.data, "train").classes == ["c00", "zebra"]
    assert SPLITS["sake25"].num_unseen == 25 and SPLITS["yelamarthi21"].num_unseen == 21


def test_sake_archive_layout_gives_each_split_its_own_list(tmp_path: Path, capsys) -> None:
    """SAKE's dataset.zip: Sketchy/zeroshot1 holds the 25-class list (as in qliu24/SAKE), the 21-class list is
    zeroshot2 (SAKE-derived code) or zeroshot0 (ZSE-SBIR's data); a split never takes another split's file."""
    y21, s25 = SPLITS["yelamarthi21"].classes, SPLITS["sake25"].classes
    for c in sorted({*y21, *s25, "zebra"}):
        _img(tmp_path / "sketch" / c / "a.png")
        _img(tmp_path / "photo" / c / "a.jpg")

    def write(folder: str, classes: tuple[str, ...]) -> None:  # SAKE's "<name> <id>" lines, in its own order
        (tmp_path / folder).mkdir(exist_ok=True)
        (tmp_path / folder / "cname_cid_zero.txt").write_text("".join(f"{c} {i}\n" for i, c in enumerate(reversed(classes))))

    write("zeroshot1", s25)
    assert read_split(_cfg(tmp_path, "data.split=sake25").data, "val").classes == sorted(s25)
    # only the 25-class file present: the 21-class split keeps its published list
    assert read_split(_cfg(tmp_path, "data.split=yelamarthi21").data, "val").classes == sorted(y21)
    write("zeroshot0", s25)  # a 25-class list where a 21-class one may be: not taken, with a note
    assert read_split(_cfg(tmp_path, "data.split=yelamarthi21").data, "val").classes == sorted(y21)
    assert "zeroshot0/cname_cid_zero.txt lists 25 classes, not the 21 of yelamarthi21; not used" in capsys.readouterr().err
    for folder in ("zeroshot0", "zeroshot2"):
        write(folder, y21[:-1] + ("zebra",))  # a file that differs from the published list shows it is read
        assert "zebra" in read_split(_cfg(tmp_path, "data.split=yelamarthi21").data, "val").classes
        (tmp_path / folder / "cname_cid_zero.txt").unlink()


def test_published_split_lists_are_used_without_a_list_file(tmp_path: Path) -> None:
    """A flat dataset without SAKE's split files trains on the published unseen classes shipped with zsk."""
    for c in [*SPLITS["yelamarthi21"].classes, "airplane", "zebra"]:
        _img(tmp_path / "sketch" / c / "a.png")
        _img(tmp_path / "photo" / c / "a.jpg")
    cfg = _cfg(tmp_path, "data.split=yelamarthi21")
    assert read_split(cfg.data, "val").classes == sorted(SPLITS["yelamarthi21"].classes)
    assert read_split(cfg.data, "train").classes == ["airplane", "zebra"]
    for split in SPLITS.values():
        assert len(split.classes) == len(set(split.classes)) == split.num_unseen, split.name
    assert {"bat", "cabin", "window"} <= set(SPLITS["yelamarthi21"].classes)  # Yelamarthi et al.'s 21


def test_parse_class_list() -> None:
    assert parse_class_list("airplane 0\nhot air balloon 12\n\n# comment\ncow\n") == ["airplane", "hot air balloon", "cow"]
    assert class_order(["b", "a b", "a"]) == ["a b", "a", "b"]


def test_transform_is_resize_then_normalise(tmp_path: Path) -> None:
    _img(tmp_path / "x.png", value=255, size=(7, 5))
    x = load_image(tmp_path / "x.png", 16)
    assert x.shape == (3, 16, 16)
    assert torch.allclose(x[0], torch.ones(16, 16)) and torch.allclose(x[2], -torch.ones(16, 16))
    assert torch.allclose(x[1], torch.full((16, 16), (127 / 255 - 0.5) / 0.5))
    # the flip mirrors the resized image
    arr = np.zeros((8, 8, 3), np.uint8)
    arr[:, :2] = 255
    Image.fromarray(arr).save(tmp_path / "edge.png")
    a, b = load_image(tmp_path / "edge.png", 8), load_image(tmp_path / "edge.png", 8, flip=True)
    assert torch.equal(a.flip(-1), b)


def test_pairs_draw_a_photo_of_the_sketch_class(tmp_path: Path) -> None:
    root = write_sample(tmp_path, sketches=2, photos=3, size=16)
    split = read_split(_cfg(root).data, "train")
    pairs = SketchPhotoPairs(split, 16)
    torch.manual_seed(0)
    item = pairs[5]
    assert item["label"] == split.sketches[5][1]
    photos = {tuple(load_image(p, 16).flatten()[:64].tolist()) for p in split.photos_of()[item["label"]]}
    photos |= {tuple(load_image(p, 16).flip(-1).flatten()[:64].tolist()) for p in split.photos_of()[item["label"]]}
    assert tuple(item["photo"].flatten()[:64].tolist()) in photos


def test_sample_is_deterministic_and_in_acnet_layout(tmp_path: Path) -> None:
    a = write_sample(tmp_path / "a", sketches=2, photos=2, size=16, seed=3)
    b = write_sample(tmp_path / "b", sketches=2, photos=2, size=16, seed=3)
    files = sorted(p.relative_to(a) for p in a.rglob("*.jpg"))
    assert len(files) == 9 * 2 * 2
    assert {p.parts[:2] for p in files} == {("train", "sketch"), ("train", "photo"), ("val", "sketch"), ("val", "photo")}
    assert all((a / f).read_bytes() == (b / f).read_bytes() for f in files)


@pytest.mark.parametrize("name", sorted(SPLITS))
def test_every_split_cites_its_source(name: str) -> None:
    assert SPLITS[name].source and all(p.endswith("cname_cid_zero.txt") for p in SPLITS[name].default_lists)


def test_predict_gallery_layouts(tmp_path: Path) -> None:
    from zsk.tasks.sbir.predict import read_gallery

    root = write_sample(tmp_path / "s", sketches=1, photos=2, size=16)
    cfg = _cfg(root)
    paths, classes = read_gallery(root / "val", cfg)  # an ACNet split folder: its photo/<class>/ folders
    assert len(paths) == 6 and sorted(set(classes)) == ["diamond", "plus_ring", "ring"]
    assert all(p.parent.name == c for p, c in zip(paths, classes, strict=True))
    flat = tmp_path / "flat"
    flat.mkdir()
    for p in paths[:3]:
        (flat / p.name).write_bytes(p.read_bytes())
    paths, classes = read_gallery(flat, cfg)  # a flat folder: classes unknown
    assert len(paths) == 3 and classes == [None, None, None]
    paths, classes = read_gallery(None, cfg)  # default: the recipe's unseen photos
    assert len(paths) == 6
