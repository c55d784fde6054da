"""3-D volume readers: HDF5 (LA layout), NIfTI with geometry, list files, CSV pairs, validation errors."""

from __future__ import annotations

import h5py
import nibabel as nib
import numpy as np
import pytest

from zsk.core.errors import ZskError
from zsk.data.volumes import (
    find_nifti_pairs,
    read_h5_volume,
    read_list_file,
    read_nifti_volume,
    read_pairs_csv,
    read_volume,
    volume_stem,
    write_h5_volume,
    write_nifti,
)


def _vol(shape=(6, 5, 4), seed=0):
    rng = np.random.default_rng(seed)
    return rng.normal(size=shape).astype(np.float32), (rng.random(shape) > 0.5).astype(np.uint8)


def test_h5_round_trip_la_layout(tmp_path):
    image, label = _vol()
    path = tmp_path / "CASE01" / "mri_norm2.h5"
    write_h5_volume(path, image, label, spacing=(0.625, 0.625, 0.625))
    vol = read_h5_volume(path, require_label=True)
    assert vol.name == "CASE01" and vol.fmt == "h5"
    np.testing.assert_array_equal(vol.image, image)
    np.testing.assert_array_equal(vol.label, label)
    assert vol.label.dtype == np.int64
    assert vol.spacing == (0.625, 0.625, 0.625) and vol.spacing_from_file
    with h5py.File(path) as f:  # the real layout: float32 image, uint8 label
        assert f["image"].dtype == np.float32 and f["label"].dtype == np.uint8


def test_h5_errors_name_the_file(tmp_path):
    image, label = _vol()
    p = tmp_path / "nokey.h5"
    with h5py.File(p, "w") as f:
        f["img"] = image
    with pytest.raises(ZskError, match=r"nokey\.h5.*no dataset 'image'.*found: img"):
        read_h5_volume(p)
    p2 = tmp_path / "flat.h5"
    with h5py.File(p2, "w") as f:
        f["image"] = image[:, :, 0]
    with pytest.raises(ZskError, match=r"flat\.h5.*3-D"):
        read_h5_volume(p2)
    p3 = tmp_path / "mismatch.h5"
    with h5py.File(p3, "w") as f:
        f["image"] = image
        f["label"] = label[:, :, :3]
    with pytest.raises(ZskError, match=r"mismatch\.h5.*label shape"):
        read_h5_volume(p3)
    p4 = tmp_path / "nan.h5"
    bad = image.copy()
    bad[1, 1, 1] = np.nan
    write_h5_volume(p4, bad, label)
    with pytest.raises(ZskError, match=r"nan\.h5.*NaN"):
        read_h5_volume(p4)
    p5 = tmp_path / "nolabel.h5"
    write_h5_volume(p5, image)
    assert read_h5_volume(p5).label is None
    assert read_h5_volume(p5).spacing_from_file is False  # no 'spacing' attribute: (1, 1, 1) assumed
    with pytest.raises(ZskError, match=r"nolabel\.h5.*'label'"):
        read_h5_volume(p5, require_label=True)
    p6 = tmp_path / "junk.h5"
    p6.write_bytes(b"not an hdf5 file")
    with pytest.raises(ZskError, match=r"junk\.h5"):
        read_h5_volume(p6)
    with pytest.raises(ZskError, match="not found"):
        read_h5_volume(tmp_path / "missing.h5")


def test_nifti_keeps_affine_header_spacing(tmp_path):
    image, label = _vol((7, 6, 5))
    affine = np.diag([0.8, 0.9, 2.5, 1.0])
    affine[:3, 3] = (10.0, -4.0, 3.0)
    write_nifti(tmp_path / "img.nii.gz", image, affine, dtype=np.float32)
    write_nifti(tmp_path / "lbl.nii.gz", label, affine, dtype=np.uint8)
    vol = read_nifti_volume(tmp_path / "img.nii.gz", tmp_path / "lbl.nii.gz")
    assert vol.name == "img" and vol.fmt == "nifti"
    np.testing.assert_allclose(vol.image, image, rtol=1e-6)
    np.testing.assert_array_equal(vol.label, label)
    np.testing.assert_allclose(vol.affine, affine)
    assert vol.spacing == pytest.approx((0.8, 0.9, 2.5))
    # writing a mask with the source header keeps the geometry
    write_nifti(tmp_path / "out.nii.gz", label, vol.affine, vol.header, dtype=np.uint8)
    back = nib.load(str(tmp_path / "out.nii.gz"))
    np.testing.assert_allclose(back.affine, affine)
    assert back.header.get_zooms()[:3] == pytest.approx((0.8, 0.9, 2.5))
    np.testing.assert_array_equal(np.asanyarray(back.dataobj), label)


def test_nifti_errors(tmp_path):
    image, label = _vol((7, 6, 5))
    write_nifti(tmp_path / "img.nii", image)
    write_nifti(tmp_path / "small.nii", label[:, :, :2])
    with pytest.raises(ZskError, match=r"small\.nii.*does not match"):
        read_nifti_volume(tmp_path / "img.nii", tmp_path / "small.nii")
    write_nifti(tmp_path / "twod.nii", image[:, :, 0])
    with pytest.raises(ZskError, match=r"twod\.nii.*3-D"):
        read_nifti_volume(tmp_path / "twod.nii")
    (tmp_path / "broken.nii.gz").write_bytes(b"garbage")
    with pytest.raises(ZskError, match=r"broken\.nii\.gz"):
        read_nifti_volume(tmp_path / "broken.nii.gz")
    with pytest.raises(ZskError, match="unknown volume format"):
        read_volume(tmp_path / "x.png")


def test_lists_and_csv(tmp_path):
    (tmp_path / "train.list").write_text("A\n\nB\n  C  \n")
    assert read_list_file(tmp_path / "train.list") == ["A", "B", "C"]
    (tmp_path / "empty.list").write_text("\n\n")
    with pytest.raises(ZskError, match=r"empty\.list.*empty"):
        read_list_file(tmp_path / "empty.list")
    (tmp_path / "pairs.csv").write_text("image,label\nimages/a.nii.gz,labels/a.nii.gz\n/abs/b.nii,\n")
    rows = read_pairs_csv(tmp_path / "pairs.csv")
    assert rows[0] == ("a", tmp_path / "images/a.nii.gz", tmp_path / "labels/a.nii.gz")
    assert rows[1][0] == "b" and str(rows[1][1]) == "/abs/b.nii" and rows[1][2] is None
    (tmp_path / "bad.csv").write_text("path\nx\n")
    with pytest.raises(ZskError, match=r"bad\.csv.*'image'"):
        read_pairs_csv(tmp_path / "bad.csv")


def test_find_nifti_pairs(tmp_path):
    image, label = _vol()
    write_nifti(tmp_path / "images" / "c1.nii.gz", image)
    write_nifti(tmp_path / "images" / "c2.nii.gz", image)
    write_nifti(tmp_path / "labels" / "c1.nii.gz", label)
    pairs = find_nifti_pairs(tmp_path)
    assert [(n, lb is not None) for n, _, lb in pairs] == [("c1", True), ("c2", False)]
    assert volume_stem("x/case.nii.gz") == "case" and volume_stem("case.h5") == "case"
