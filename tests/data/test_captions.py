"""Caption dataset readers: precomputed layout, Karpathy JSON, IAPR TC-12, LSA files."""

from __future__ import annotations

import json

import numpy as np
import pytest
from PIL import Image

from zsk.core.errors import ZskError
from zsk.data.captions import (
    find_precomp_folder,
    read_iapr_split,
    read_karpathy,
    read_lsa_matrix,
    read_precomp,
    write_lsa_matrix,
    write_precomp,
)


def _caps(n_img: int, cpi: int = 5) -> list[str]:
    return [f"image {i} caption {j}" for i in range(n_img) for j in range(cpi)]


def test_precomp_roundtrip(tmp_path) -> None:
    feats = np.random.default_rng(0).random((3, 4, 6)).astype(np.float32)
    write_precomp(tmp_path, "dev", feats, _caps(3), ["a", "b", "c"])
    s = read_precomp(tmp_path, "dev", 5, feature_shape=(4, 6))
    assert s.num_images == 3 and s.num_captions == 15
    assert s.captions[7] == "image 1 caption 2"  # caption k belongs to image k // 5
    assert s.image_ids == ["a", "b", "c"]
    np.testing.assert_array_equal(np.asarray(s.features), feats)


def test_precomp_caption_count_must_be_five_per_image(tmp_path) -> None:
    write_precomp(tmp_path, "train", np.zeros((3, 2, 4), np.float32), _caps(3)[:-1])
    with pytest.raises(ZskError, match=r"train_caps\.txt: 14 captions for 3 images"):
        read_precomp(tmp_path, "train", 5)


def test_precomp_empty_caption_names_line(tmp_path) -> None:
    caps = _caps(2)
    caps[3] = "   "
    write_precomp(tmp_path, "test", np.zeros((2, 2, 4), np.float32), caps)
    with pytest.raises(ZskError, match=r"test_caps\.txt: line 4 is an empty caption"):
        read_precomp(tmp_path, "test", 5)


def test_precomp_feature_shape_mismatch(tmp_path) -> None:
    write_precomp(tmp_path, "test", np.zeros((2, 3, 4), np.float32), _caps(2))
    with pytest.raises(ZskError, match=r"test_ims\.npy: per-image feature shape \(3, 4\)"):
        read_precomp(tmp_path, "test", 5, feature_shape=(36, 2048))


def test_precomp_bad_feature_files(tmp_path) -> None:
    (tmp_path / "test_caps.txt").write_text("\n".join(_caps(2)))
    np.save(tmp_path / "test_ims.npy", np.zeros((2, 3), np.int64))
    with pytest.raises(ZskError, match="dtype int64"):
        read_precomp(tmp_path, "test", 5)
    (tmp_path / "test_ims.npy").write_bytes(b"not numpy")
    with pytest.raises(ZskError, match="not a readable .npy"):
        read_precomp(tmp_path, "test", 5)


def test_find_precomp_folder_layouts(tmp_path) -> None:
    write_precomp(tmp_path / "f30k_precomp", "dev", np.zeros((1, 4), np.float32), _caps(1))
    write_precomp(tmp_path / "coco" / "precomp", "dev", np.zeros((1, 4), np.float32), _caps(1))
    assert find_precomp_folder(tmp_path, "f30k") == tmp_path / "f30k_precomp"
    assert find_precomp_folder(tmp_path, "coco") == tmp_path / "coco" / "precomp"  # VSE infinity layout
    with pytest.raises(ZskError, match="no precomputed caption dataset"):
        find_precomp_folder(tmp_path, "iapr")


def _karpathy(tmp_path, n_caps: int = 5) -> None:
    images = []
    for i, split in enumerate(["train", "restval", "val", "test"]):
        (tmp_path / "imgs" / "sub").mkdir(parents=True, exist_ok=True)
        Image.new("RGB", (8, 6), (i * 40, 0, 0)).save(tmp_path / "imgs" / "sub" / f"{i}.jpg")
        images.append({"filepath": "sub", "filename": f"{i}.jpg", "split": split, "imgid": i,
                       "sentences": [{"raw": f"photo {i} number {j}", "tokens": []} for j in range(n_caps)]})
    (tmp_path / "dataset.json").write_text(json.dumps({"images": images, "dataset": "coco"}))


def test_karpathy_splits_and_restval(tmp_path) -> None:
    _karpathy(tmp_path, n_caps=6)
    train = read_karpathy(tmp_path / "dataset.json", tmp_path / "imgs", "train")
    assert [it.image_id for it in train] == ["0"]
    assert len(train[0].captions) == 5  # extra captions beyond five are dropped
    both = read_karpathy(tmp_path / "dataset.json", tmp_path / "imgs", "train", use_restval=True)
    assert [it.image_id for it in both] == ["0", "1"]
    dev = read_karpathy(tmp_path / "dataset.json", tmp_path / "imgs", "dev")
    assert dev[0].path == tmp_path / "imgs" / "sub" / "2.jpg"


def test_karpathy_errors(tmp_path) -> None:
    _karpathy(tmp_path, n_caps=3)
    with pytest.raises(ZskError, match="has 3 captions, expected 5"):
        read_karpathy(tmp_path / "dataset.json", tmp_path / "imgs", "test")
    with pytest.raises(ZskError, match="not found"):
        read_karpathy(tmp_path / "dataset.json", tmp_path / "elsewhere", "test", captions_per_image=3)
    (tmp_path / "bad.json").write_text("{")
    with pytest.raises(ZskError, match="Karpathy split file .* is not valid JSON"):
        read_karpathy(tmp_path / "bad.json", tmp_path, "test")


def _iapr_doc(folder: str, image_id: int, desc: str) -> str:
    return (f"<DOC>\n<DOCNO>annotations/{folder}/{image_id}.eng</DOCNO>\n<TITLE>Title</TITLE>\n"
            f"<DESCRIPTION>{desc}</DESCRIPTION>\n<NOTES></NOTES>\n<LOCATION>Quito, Ecuador</LOCATION>\n"
            f"<DATE>April 2002</DATE>\n<IMAGE>images/{folder}/{image_id}.jpg</IMAGE>\n"
            f"<THUMBNAIL>thumbnails/{folder}/{image_id}.jpg</THUMBNAIL>\n</DOC>\n")


def test_iapr_tc12_reader(tmp_path) -> None:
    for folder, iid, desc in [("00", 25, "a white church in front of\n green hills;"), ("01", 1003, "two men on a boat;")]:
        (tmp_path / "annotations_complete_eng" / folder).mkdir(parents=True, exist_ok=True)
        (tmp_path / "annotations_complete_eng" / folder / f"{iid}.eng").write_bytes(
            _iapr_doc(folder, iid, desc).encode("latin-1"))
        (tmp_path / "images" / folder).mkdir(parents=True, exist_ok=True)
        Image.new("RGB", (4, 4)).save(tmp_path / "images" / folder / f"{iid}.jpg")
    (tmp_path / "test.txt").write_text("01/1003\n25\n")
    items = read_iapr_split(tmp_path, tmp_path / "test.txt")
    assert [it.captions for it in items] == [["two men on a boat"], ["a white church in front of green hills"]]
    assert items[1].path == tmp_path / "images" / "00" / "25.jpg"
    (tmp_path / "bad.txt").write_text("99\n")
    with pytest.raises(ZskError, match="line 1: no annotation for image id '99'"):
        read_iapr_split(tmp_path, tmp_path / "bad.txt")
    (tmp_path / "annotations_complete_eng" / "00" / "25.eng").write_text(_iapr_doc("00", 25, " "))
    with pytest.raises(ZskError, match="no <DESCRIPTION>"):
        read_iapr_split(tmp_path, tmp_path / "test.txt")


def test_lsa_file_roundtrip(tmp_path) -> None:
    mat = np.random.default_rng(1).standard_normal((4, 3)).astype(np.float32)
    write_lsa_matrix(tmp_path / "train_svd.txt", mat)
    assert (tmp_path / "train_svd.txt").read_text().splitlines()[0].count(",") == 2
    np.testing.assert_allclose(read_lsa_matrix(tmp_path / "train_svd.txt", 4), mat, rtol=1e-6)
    with pytest.raises(ZskError, match="4 rows for 5 training captions"):
        read_lsa_matrix(tmp_path / "train_svd.txt", 5)
