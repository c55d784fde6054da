"""Continual task tables, MiB filtering and label masking, the VOC (MiB and mmseg layouts) and ADE20K
readers on files written in those layouts, the transforms and the SATS-M exemplar choice."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from PIL import Image

from zsk.core.errors import ZskError
from zsk.tasks.css import increments
from zsk.tasks.css.config import DataConfig
from zsk.tasks.css.data import (
    ADE_CLASSES,
    TrainTransform,
    balanced_exemplars,
    class_presence,
    eval_transform,
    load_items,
    random_resized_crop_params,
    step_indices,
    write_sample,
)


def test_task_tables() -> None:
    assert increments.task_steps("voc", "15-1") == [list(range(16)), [16], [17], [18], [19], [20]]
    assert increments.task_steps("voc", "15-5s") == increments.task_steps("voc", "15-1")
    assert len(increments.task_steps("voc", "10-1")) == 11
    assert increments.task_steps("voc", "5-3")[1:] == [[6, 7, 8], [9, 10, 11], [12, 13, 14], [15, 16, 17], [18, 19, 20]]
    assert increments.task_steps("voc", "19-1") == [list(range(20)), [20]]
    ade = increments.task_steps("ade", "100-10")
    assert len(ade) == 6 and ade[1] == list(range(101, 111)) and ade[-1][-1] == 150
    assert [len(s) for s in increments.task_steps("ade", "50")] == [51, 50, 50]
    assert len(ADE_CLASSES) == 150
    with pytest.raises(ZskError, match="data.task"):
        increments.task_steps("voc", "15-2")


def test_filtering_overlapped_and_disjoint() -> None:
    steps = [[0, 1, 2], [3], [4]]
    # image classes: only old / current+old / current+future / nothing of the step
    presence = [[0, 1], [0, 2, 3], [0, 3, 4, 255], [0, 4]]
    assert step_indices(presence, steps, 1, train=True, overlap=True) == [1, 2]
    assert step_indices(presence, steps, 1, train=True, overlap=False) == [1]
    assert step_indices(presence, steps, 0, train=False) == [0, 1]
    assert step_indices(presence, steps, 2, train=False) == [0, 1, 2, 3]


def test_label_masking_and_test_labels() -> None:
    steps = [[0, 1, 2], [3], [4]]
    lut = increments.train_lut(steps, 1)
    assert lut[[0, 1, 2, 3, 4, 255]].tolist() == [0, 0, 0, 3, 0, 255]  # old and future -> background
    keep = increments.train_lut(steps, 1, keep_old=True)
    assert keep[[1, 2, 3, 4]].tolist() == [1, 2, 3, 0]
    assert increments.test_lut(steps, 1)[[3, 4, 255]].tolist() == [3, 0, 255]
    assert increments.test_lut(steps, 1, "ignore")[[4]].tolist() == [255]
    assert increments.test_lut(steps, 2, ignore_background=True)[[0, 4]].tolist() == [255, 4]
    # a task in another class order remaps to the model's output order
    shuffled = [[0, 5, 1], [3]]
    assert increments.train_lut(shuffled, 0)[[5, 1, 3]].tolist() == [1, 2, 0]


def test_voc_mib_layout_sample_and_mmseg_layout(tmp_path) -> None:  # noqa: ANN001
    root = write_sample(tmp_path / "s", num_train=6, num_val=3)
    lines = (root / "splits" / "train_aug.txt").read_text().splitlines()
    assert lines[0] == "/JPEGImages/train_aug_0000.jpg /SegmentationClassAug/train_aug_0000.png"
    cfg = DataConfig(root=str(tmp_path / "s"))
    items = load_items(cfg, "train_aug")
    assert [it.name for it in items] == [f"train_aug_{i:04d}" for i in range(6)]
    presence = class_presence(cfg, "train_aug", items)
    assert all(set(p) <= {0, 1, 2, 3, 4, 5, 255} for p in presence) and any(len(p) > 2 for p in presence)
    # the mmseg layout of the same images
    voc = tmp_path / "VOCdevkit" / "VOC2012"
    (voc / "ImageSets" / "Segmentation").mkdir(parents=True)
    (voc / "JPEGImages").symlink_to(root / "JPEGImages")
    (voc / "SegmentationClass").symlink_to(root / "SegmentationClassAug")
    (voc / "ImageSets" / "Segmentation" / "val.txt").write_text("val_0000\nval_0002\n")
    mm = load_items(DataConfig(root=str(tmp_path)), "val")
    assert [it.name for it in mm] == ["val_0000", "val_0002"] and mm[1].label.is_file()
    # official index lists number the lines of MiB's split files: refused on the mmseg layout, read on MiB's
    with pytest.raises(ZskError, match="data.index_dir holds indices into MiB's splits/val.txt"):
        load_items(DataConfig(root=str(tmp_path), index_dir=str(tmp_path)), "val")
    assert len(load_items(DataConfig(root=str(tmp_path / "s"), index_dir=str(tmp_path)), "val")) == 3


def test_ade_layout(tmp_path) -> None:  # noqa: ANN001
    base = tmp_path / "ADEChallengeData2016"
    for split in ("training", "validation"):
        (base / "images" / split).mkdir(parents=True)
        (base / "annotations" / split).mkdir(parents=True)
    Image.fromarray(np.zeros((8, 8, 3), np.uint8)).save(base / "images" / "validation" / "ADE_val_00000001.jpg")
    Image.fromarray(np.array([[0, 150], [7, 7]], np.uint8).repeat(4, 0).repeat(4, 1)).save(
        base / "annotations" / "validation" / "ADE_val_00000001.png")
    cfg = DataConfig(dataset="ade", root=str(tmp_path))
    items = load_items(cfg, "validation")
    assert [it.name for it in items] == ["ADE_val_00000001"]
    assert class_presence(cfg, "validation", items) == [[0, 7, 150]]
    with pytest.raises(ZskError, match="training and validation"):
        load_items(cfg, "test")


def test_random_resized_crop_params_stay_inside_and_are_seeded() -> None:
    for seed in range(20):
        g = torch.Generator().manual_seed(seed)
        top, left, h, w = random_resized_crop_params(50, 80, (0.5, 2.0), g)
        assert 0 <= top and top + h <= 50 and 0 <= left and left + w <= 80 and h > 0 and w > 0
    a = random_resized_crop_params(50, 80, (0.5, 2.0), torch.Generator().manual_seed(3))
    assert a == random_resized_crop_params(50, 80, (0.5, 2.0), torch.Generator().manual_seed(3))


def test_transforms_shapes_and_label_values() -> None:
    rng = np.random.default_rng(0)
    image = rng.integers(0, 255, (40, 60, 3), dtype=np.uint8)
    label = np.zeros((40, 60), np.uint8)
    label[10:20, 10:30] = 3
    img, lab = TrainTransform(32)(image, label, torch.Generator().manual_seed(0))
    assert img.shape == (3, 32, 32) and lab.shape == (32, 32) and set(lab.unique().tolist()) <= {0, 3}
    img, lab = eval_transform(image, label, 32)
    assert img.shape == (3, 32, 32) and lab.shape == (32, 32)
    img, lab = eval_transform(image, label, 32, center_crop=False)
    assert img.shape == (3, 32, 48)


def test_balanced_exemplars() -> None:
    presence = [[0, 1], [0, 1], [0, 1], [0, 2], [0, 2], [0, 1, 2], [0, 3]]
    chosen = balanced_exemplars(presence, list(range(7)), [0, 1, 2], total=4, seed=0)
    assert len(chosen) <= 4 and 6 not in chosen  # class 3 is not old
    counted = {c: sum(c in presence[i] for i in chosen) for c in (1, 2)}
    assert min(counted.values()) >= 1  # both old classes present
    assert balanced_exemplars(presence, list(range(7)), [0], total=4) == []


def test_official_index_lists_are_read_from_index_dir(tmp_path) -> None:  # noqa: ANN001
    steps = [[0, 1, 2], [3]]
    presence = [[0, 1], [0, 3], [0, 2, 3], [0, 3]]
    np.save(tmp_path / "train-1.npy", np.array([3, 1]))
    np.save(tmp_path / "test_on_val-1.npy", np.array([0, 2]))
    assert step_indices(presence, steps, 1, train=True, index_dir=str(tmp_path)) == [3, 1]
    assert step_indices(presence, steps, 1, train=False, index_dir=str(tmp_path), split="val") == [0, 2]
    assert step_indices(presence, steps, 0, train=True, index_dir=str(tmp_path)) == [0, 2]  # no file: filtered
    np.save(tmp_path / "train-1.npy", np.array([7]))
    with pytest.raises(ZskError, match="train-1.npy points past"):
        step_indices(presence, steps, 1, train=True, index_dir=str(tmp_path))
