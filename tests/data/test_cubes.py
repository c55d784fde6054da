"""Hyperspectral cube readers: the same cube round-trips through every format; bad files fail with ZskError."""

from __future__ import annotations

import numpy as np
import pytest

from zsk.core.errors import ZskError
from zsk.data import cubes


@pytest.fixture()
def cube() -> np.ndarray:
    rng = np.random.default_rng(0)
    # non-square, distinct sizes per axis so any transposition is caught
    return rng.random((7, 5, 4)).astype(np.float32)


@pytest.fixture()
def labels() -> np.ndarray:
    return (np.arange(35).reshape(7, 5) % 4).astype(np.uint8)


def test_h5_round_trip(tmp_path, cube, labels):
    p = cubes.write_h5(tmp_path / "c.h5", cube, labels, wavelengths=np.arange(4) * 10.0)
    np.testing.assert_array_equal(cubes.read_cube(p), cube)
    np.testing.assert_array_equal(cubes.read_labels(p), labels)
    # custom keys
    cubes.write_h5(tmp_path / "k.h5", cube, labels, image_key="data/img", gt_key="data/truth")
    np.testing.assert_array_equal(cubes.read_cube(tmp_path / "k.h5", "data/img"), cube)
    np.testing.assert_array_equal(cubes.read_labels(tmp_path / "k.h5", "data/truth"), labels)


@pytest.mark.parametrize("version", ["5", "7.3"])
def test_mat_round_trip(tmp_path, cube, labels, version):
    p = cubes.write_mat(tmp_path / f"c{version}.mat", {"img": cube, "img_gt": labels}, version=version)
    np.testing.assert_array_equal(cubes.read_cube(p, "img"), cube)
    np.testing.assert_array_equal(cubes.read_labels(p, "img_gt"), labels)
    # without keys the single 3-D / 2-D array is chosen
    np.testing.assert_array_equal(cubes.read_cube(p), cube)
    np.testing.assert_array_equal(cubes.read_labels(p), labels)


def test_mat_v73_is_stored_column_major(tmp_path, cube):
    import h5py

    p = cubes.write_mat(tmp_path / "c.mat", {"img": cube}, version="7.3")
    with h5py.File(p, "r") as f:
        assert f["img"].shape == (4, 5, 7)  # what MATLAB writes for a 7 x 5 x 4 array
    with open(p, "rb") as fh:
        assert fh.read(10) == b"MATLAB 7.3"


@pytest.mark.parametrize("interleave", ["bsq", "bil", "bip"])
def test_envi_round_trip(tmp_path, cube, labels, interleave):
    hdr = cubes.write_envi(tmp_path / "c.hdr", cube, interleave=interleave, wavelengths=np.array([400, 500, 600, 700.0]))
    np.testing.assert_array_equal(cubes.read_cube(hdr), cube)
    np.testing.assert_array_equal(cubes.read_cube(tmp_path / "c.img"), cube)  # the data file works too
    assert cubes.envi_wavelengths(hdr) == [400.0, 500.0, 600.0, 700.0]
    gt = cubes.write_envi(tmp_path / "gt.hdr", labels[..., None])
    np.testing.assert_array_equal(cubes.read_labels(gt), labels)


def test_npy_and_tif_labels(tmp_path, cube, labels):
    from PIL import Image

    np.save(tmp_path / "c.npy", cube)
    np.testing.assert_array_equal(cubes.read_cube(tmp_path / "c.npy"), cube)
    Image.fromarray(labels).save(tmp_path / "gt.tif")
    np.testing.assert_array_equal(cubes.read_labels(tmp_path / "gt.tif"), labels)


def test_same_cube_through_all_formats(tmp_path, cube):
    paths = [
        cubes.write_h5(tmp_path / "a.h5", cube),
        cubes.write_mat(tmp_path / "a.mat", {"x": cube}),
        cubes.write_mat(tmp_path / "b.mat", {"x": cube}, version="7.3"),
        cubes.write_envi(tmp_path / "a.hdr", cube),
    ]
    np.save(tmp_path / "a.npy", cube)
    paths.append(tmp_path / "a.npy")
    arrays = [cubes.read_cube(p) for p in paths]
    for a in arrays:
        assert a.shape == (7, 5, 4)
        np.testing.assert_array_equal(a, arrays[0])


def test_missing_file_and_unknown_format(tmp_path):
    with pytest.raises(ZskError, match="not found"):
        cubes.read_cube(tmp_path / "none.h5")
    (tmp_path / "x.xyz").write_text("?")
    with pytest.raises(ZskError, match="unknown cube format"):
        cubes.read_cube(tmp_path / "x.xyz")


def test_missing_key_names_the_keys(tmp_path, cube, labels):
    p = cubes.write_mat(tmp_path / "c.mat", {"img": cube, "gt": labels})
    with pytest.raises(ZskError, match=r"no variable 'nope'.*\['gt', 'img'\]"):
        cubes.read_cube(p, "nope")
    h = cubes.write_h5(tmp_path / "c.h5", cube)
    with pytest.raises(ZskError, match="no dataset 'gt'"):
        cubes.read_labels(h, "gt")


def test_ambiguous_arrays_need_a_key(tmp_path, cube):
    p = cubes.write_mat(tmp_path / "two.mat", {"a": cube, "b": cube})
    with pytest.raises(ZskError, match="cannot tell which array.*image_key"):
        cubes.read_cube(p)


def test_wrong_shapes(tmp_path, cube, labels):
    np.save(tmp_path / "flat.npy", labels)
    with pytest.raises(ZskError, match="2-D"):
        cubes.read_cube(tmp_path / "flat.npy")
    np.save(tmp_path / "cube.npy", cube)
    with pytest.raises(ZskError, match="label map of shape"):
        cubes.read_labels(tmp_path / "cube.npy")
    with pytest.raises(ZskError, match=r"does not match the cube"):
        cubes.check_labels_match(cube, labels[:-1], "c.npy", "gt.npy")


def test_bad_label_values(tmp_path):
    np.save(tmp_path / "neg.npy", np.array([[0, -1], [1, 2]]))
    with pytest.raises(ZskError, match="negative"):
        cubes.read_labels(tmp_path / "neg.npy")
    np.save(tmp_path / "frac.npy", np.array([[0.5, 1.0], [1.0, 2.0]]))
    with pytest.raises(ZskError, match="non-integer"):
        cubes.read_labels(tmp_path / "frac.npy")
    np.save(tmp_path / "ok.npy", np.array([[0.0, 1.0], [1.0, 2.0]]))
    assert cubes.read_labels(tmp_path / "ok.npy").dtype == np.int64


@pytest.mark.parametrize("name", ["bad.mat", "bad.h5", "bad.npy"])
def test_corrupt_files(tmp_path, name):
    (tmp_path / name).write_bytes(b"\x00garbage" * 50)
    with pytest.raises(ZskError, match=name.replace(".", r"\.")):
        cubes.read_cube(tmp_path / name)


def test_corrupt_envi(tmp_path, cube):
    hdr = cubes.write_envi(tmp_path / "c.hdr", cube)
    (tmp_path / "c.img").write_bytes(b"\x00" * 10)  # truncated data file
    with pytest.raises(ZskError, match=r"c\.hdr"):
        cubes.read_cube(hdr)
    (tmp_path / "h.hdr").write_text("not an envi header\n")
    with pytest.raises(ZskError, match=r"h\.hdr"):
        cubes.read_cube(tmp_path / "h.hdr")


def test_a_v73_header_without_an_hdf5_body_is_named(tmp_path) -> None:
    """A .mat file whose 128-byte header says v7.3 (version 0x0200) but whose body is not HDF5 (a cut or
    damaged download): exit 2 naming the file and the version, not scipy's NotImplementedError."""
    header = b"MATLAB 7.3 MAT-file, Platform: GLNXA64, Created on: Mon Jan  1 00:00:00 2024 HDF5 schema 1.00 ."
    p = tmp_path / "cut.mat"
    p.write_bytes(header.ljust(116, b" ") + b"\x00" * 8 + b"\x00\x02" + b"IM" + b"\x00" * 64)
    with pytest.raises(ZskError, match=r"cut.mat: a MATLAB v7.3 header without a readable HDF5 body"):
        cubes.read_cube(p)
