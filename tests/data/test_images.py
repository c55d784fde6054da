"""Image + mask folder readers and the mmseg-style segmentation transforms, on files in the real layouts."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from zsk.core.errors import ZskError
from zsk.data import images as io
from zsk.data import seg_transforms as T


def _img(path: Path, h: int = 6, w: int = 8, value: int = 100) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(np.full((h, w, 3), value, dtype=np.uint8)).save(path)


def _lab(path: Path, arr: np.ndarray) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    io.write_label(path, arr)


def test_voc_palette_known_colours() -> None:
    pal = io.voc_palette()
    assert pal[0].tolist() == [0, 0, 0]
    assert pal[1].tolist() == [128, 0, 0]
    assert pal[2].tolist() == [0, 128, 0]
    assert pal[3].tolist() == [128, 128, 0]
    assert pal[15].tolist() == [192, 128, 128]  # person
    assert pal[255].tolist() == [224, 224, 192]  # void


def test_palette_png_reads_back_as_indices(tmp_path: Path) -> None:
    lab = np.array([[0, 1, 255], [20, 3, 3]], dtype=np.uint8)
    io.write_label(tmp_path / "l.png", lab)
    with Image.open(tmp_path / "l.png") as im:
        assert im.mode == "P"
    assert np.array_equal(io.read_label(tmp_path / "l.png"), lab)


def test_reduce_zero_label_lut() -> None:
    lut = io.reduce_zero_label_lut()
    assert lut[np.array([0, 1, 20, 255])].tolist() == [255, 0, 19, 255]


def _voc_mmseg(root: Path) -> None:
    base = root / "VOCdevkit" / "VOC2012"
    sets = base / "ImageSets" / "Segmentation"
    sets.mkdir(parents=True)
    for n in ("a", "b", "c", "v"):
        _img(base / "JPEGImages" / f"{n}.jpg")
        _lab(base / "SegmentationClass" / f"{n}.png", np.ones((6, 8), np.uint8))
        _lab(base / "SegmentationClassAug" / f"{n}.png", np.full((6, 8), 2, np.uint8))
    (sets / "train.txt").write_text("a\nb\n")
    (sets / "aug.txt").write_text("b\nc\n")
    (sets / "val.txt").write_text("v\n")


def test_voc_mmseg_layout_train_aug_is_the_union(tmp_path: Path) -> None:
    _voc_mmseg(tmp_path)
    items = io.voc_items(tmp_path, "train_aug")
    assert sorted(i.name for i in items) == ["a", "b", "c"]
    by = {i.name: i for i in items}
    assert by["c"].label.parent.name == "SegmentationClassAug"
    assert by["a"].label.parent.name == "SegmentationClass"
    val = io.voc_items(tmp_path / "VOCdevkit" / "VOC2012", "val")
    assert [i.name for i in val] == ["v"]
    img, lab = io.load_pair(val[0], 20, reduce_zero_label=True)
    assert img.shape == (6, 8, 3) and lab.shape == (6, 8)
    with pytest.raises(ZskError, match="unknown VOC split"):
        io.voc_items(tmp_path, "nosuch")


def test_voc_mib_layout(tmp_path: Path) -> None:
    base = tmp_path / "PascalVOC12"
    _img(base / "JPEGImages" / "x.jpg")
    _lab(base / "SegmentationClassAug" / "x.png", np.zeros((6, 8), np.uint8))
    (base / "splits").mkdir()
    (base / "splits" / "train_aug.txt").write_text("/JPEGImages/x.jpg /SegmentationClassAug/x.png\n")
    items = io.voc_items(tmp_path, "train")
    assert items[0].image == base / "JPEGImages" / "x.jpg" and items[0].label == base / "SegmentationClassAug" / "x.png"


def test_not_a_voc_folder_names_it(tmp_path: Path) -> None:
    with pytest.raises(ZskError, match=str(tmp_path)):
        io.voc_items(tmp_path, "val")


def test_coco_stuff_layout(tmp_path: Path) -> None:
    base = tmp_path / "coco_stuff164k"
    _img(base / "images" / "val2017" / "000000000139.jpg")
    _lab(base / "annotations" / "val2017" / "000000000139_labelTrainIds.png", np.full((6, 8), 170, np.uint8))
    items = io.coco_stuff_items(tmp_path, "val")
    assert items[0].label.name == "000000000139_labelTrainIds.png"
    _, lab = io.load_pair(items[0], 171)
    assert lab.max() == 170
    with pytest.raises(ZskError, match="train2017"):
        io.coco_stuff_items(tmp_path, "train")


def test_context_layout_both_list_locations(tmp_path: Path) -> None:
    base = tmp_path / "VOC2010"
    _img(base / "JPEGImages" / "2008_000002.jpg")
    _lab(base / "SegmentationClassContext" / "2008_000002.png", np.full((6, 8), 59, np.uint8))
    (base / "val.txt").write_text("2008_000002\n")
    assert [i.name for i in io.context_items(tmp_path, "val")] == ["2008_000002"]
    (base / "ImageSets" / "SegmentationContext").mkdir(parents=True)
    (base / "ImageSets" / "SegmentationContext" / "train.txt").write_text("2008_000002\n")
    items = io.context_items(base, "train")
    _, lab = io.load_pair(items[0], 59, reduce_zero_label=True)  # id 59 is valid before the shift
    assert lab.max() == 59


def test_folder_layout_and_class_file(tmp_path: Path) -> None:
    _img(tmp_path / "images" / "train" / "p.png")
    _lab(tmp_path / "masks" / "train" / "p.png", np.zeros((6, 8), np.uint8))
    (tmp_path / "classes.txt").write_text("# comment\nroad\ncar\n\n")
    assert io.read_class_names(tmp_path / "classes.txt") == ["road", "car"]
    items = io.folder_items(tmp_path, "train")
    assert items[0].label == tmp_path / "masks" / "train" / "p.png"
    (tmp_path / "empty.txt").write_text("\n")
    with pytest.raises(ZskError, match="empty.txt"):
        io.read_class_names(tmp_path / "empty.txt")


def test_bad_inputs_name_the_file(tmp_path: Path) -> None:
    bad = tmp_path / "bad.jpg"
    bad.write_bytes(b"not an image")
    with pytest.raises(ZskError, match="bad.jpg"):
        io.read_image(bad)
    _img(tmp_path / "i.jpg", 6, 8)
    _lab(tmp_path / "small.png", np.zeros((5, 8), np.uint8))
    with pytest.raises(ZskError, match="small.png"):
        io.load_pair(io.SegItem("i", tmp_path / "i.jpg", tmp_path / "small.png"), 20)
    _lab(tmp_path / "big.png", np.full((6, 8), 30, np.uint8))
    with pytest.raises(ZskError, match="big.png.*30"):
        io.load_pair(io.SegItem("i", tmp_path / "i.jpg", tmp_path / "big.png"), 20, reduce_zero_label=True)
    Image.fromarray(np.zeros((6, 8, 3), np.uint8)).save(tmp_path / "rgb.png")
    with pytest.raises(ZskError, match="rgb.png"):
        io.read_label(tmp_path / "rgb.png")


# ----------------------------------------------------------------------------- transforms
def test_rescale_size_is_mmcv_keep_ratio() -> None:
    assert T.rescale_size(375, 500, (2048, 512)) == (512, 683)  # short side to 512
    assert T.rescale_size(100, 4000, (2048, 512)) == (51, 2048)  # long side capped


def test_pad_uses_zero_for_images_and_255_for_labels() -> None:
    img, lab = T.pad(torch.ones(3, 2, 3), torch.zeros(2, 3, dtype=torch.long), (4, 4))
    assert img.shape == (3, 4, 4) and img[:, 2:].abs().sum() == 0 and img[:, :, 3:].abs().sum() == 0
    assert (lab[2:] == 255).all() and (lab[:, 3:] == 255).all() and (lab[:2, :3] == 0).all()


def test_random_crop_respects_cat_max_ratio() -> None:
    # class 1 only in the last 4 of 16 columns: an 8-wide crop passes the 0.75 rule only at x = 7 or 8
    lab = torch.zeros(4, 16, dtype=torch.long)
    lab[:, 12:] = 1
    img = torch.arange(16.0).expand(3, 4, 16).clone()

    def passing(ratio: float) -> int:
        g = torch.Generator().manual_seed(0)
        ok = 0
        for _ in range(40):
            ci, cl = T.random_crop(img, lab, (4, 8), ratio, 255, g)
            x = int(ci[0, 0, 0])
            assert torch.equal(cl, lab[:, x : x + 8])  # image and label cropped together
            counts = torch.bincount(cl.reshape(-1), minlength=2).float()
            ok += int(counts.max() / counts.sum() < 0.75)
        return ok

    assert passing(0.75) >= 34  # only when all ten tries fail (p ~ 0.08) does a bad crop remain
    assert passing(1.0) <= 20  # without the rule 2 of 9 offsets pass


def test_hsv_roundtrip_and_photometric_range() -> None:
    x = torch.rand(3, 5, 7)
    assert torch.allclose(T.hsv_to_rgb(T.rgb_to_hsv(x)), x, atol=1e-5)
    hsv = T.rgb_to_hsv(torch.tensor([1.0, 0.0, 0.0]).view(3, 1, 1))
    assert hsv.flatten().tolist() == pytest.approx([0.0, 1.0, 1.0])
    out = T.photometric_distortion(torch.rand(3, 8, 8) * 255, torch.Generator().manual_seed(3))
    assert out.min() >= 0 and out.max() <= 255


def test_train_transform_output_is_a_padded_normalised_crop() -> None:
    tf = T.SegTrainTransform(crop_size=(32, 32), img_scale=(64, 16), ratio_range=(1.0, 1.0))
    image = np.full((20, 30, 3), 128, np.uint8)
    label = np.ones((20, 30), np.uint8)
    img, lab = tf(image, label, torch.Generator().manual_seed(0))
    # resized to 16 x 24 (short side 16), padded to 32 x 32
    assert img.shape == (3, 32, 32) and lab.shape == (32, 32)
    assert (lab[16:] == 255).all() and (lab[:16, :24] == 1).all()
    assert img[:, 16:].abs().sum() == 0
    test = T.SegTestTransform((64, 16))(image)
    assert test.shape == (3, 16, 24)
    assert test[0].mean().item() == pytest.approx((128 - T.IMAGENET_MEAN[0]) / T.IMAGENET_STD[0], abs=1e-4)
