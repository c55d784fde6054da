"""hsi data: sampling guarantees, preprocessing, scene validation, patches, sample writer, benchmarks table."""

from __future__ import annotations

import dataclasses

import numpy as np
import pytest
import torch

from zsk.core.errors import ZskError
from zsk.data import cubes
from zsk.tasks.hsi import data as hd
from zsk.tasks.hsi.config import DataConfig, SplitConfig


@pytest.fixture(scope="module")
def gt() -> np.ndarray:
    """40 x 30 label map: 3 horizontal-ish bands of classes with unlabelled pixels sprinkled in."""
    rng = np.random.default_rng(0)
    labels = np.zeros((40, 30), dtype=np.int64)
    labels[:, :10] = 1
    labels[:, 10:20] = 2
    labels[:, 20:] = 3
    labels[rng.random(labels.shape) < 0.2] = 0
    return labels


def _sets_are_disjoint(split: hd.Split) -> bool:
    tr, va, te = split.train > 0, split.val > 0, split.test > 0
    return not (tr & va).any() and not (tr & te).any() and not (va & te).any()


def _labels_kept(split: hd.Split, gt: np.ndarray) -> bool:
    return all(np.array_equal(m[m > 0], gt[m > 0]) for m in (split.train, split.val, split.test))


def test_random_fraction_is_stratified(gt):
    split = hd.split_labels(gt, SplitConfig(mode="random", fraction=0.25, val_share=0.0), seed=0)
    assert _sets_are_disjoint(split) and _labels_kept(split, gt)
    for c in (1, 2, 3):
        n = int((gt == c).sum())
        assert int((split.train == c).sum()) == round(0.25 * n)
    # train + test cover every labelled pixel
    assert np.array_equal((split.train > 0) | (split.test > 0), gt > 0)


def test_random_count_is_spread_in_proportion(gt):
    split = hd.split_labels(gt, SplitConfig(mode="random", count=60, val_share=0.0), seed=1)
    total = (gt > 0).sum()
    for c in (1, 2, 3):
        assert int((split.train == c).sum()) == round(60 * (gt == c).sum() / total)


def test_fixed_count_per_class_and_val_share(gt):
    split = hd.split_labels(gt, SplitConfig(mode="fixed", count=40, val_share=0.1), seed=0)
    assert _sets_are_disjoint(split) and _labels_kept(split, gt)
    for c in (1, 2, 3):
        assert int((split.train == c).sum()) + int((split.val == c).sum()) == 40
        assert int((split.val == c).sum()) == 4  # 10 % of each class's training pixels
    # a class smaller than the count keeps one test pixel
    tiny = gt.copy()
    tiny[tiny == 3] = 0
    tiny[0, 25] = tiny[1, 25] = 3
    split = hd.split_labels(tiny, SplitConfig(mode="fixed", count=40, val_share=0.0), seed=0)
    assert int((split.train == 3).sum()) == 1 and int((split.test == 3).sum()) == 1
    assert split.notes and "class 3" in split.notes[0]


def test_seed_changes_random_split_but_is_reproducible(gt):
    cfg = SplitConfig(mode="random", fraction=0.3)
    a, b, c = (hd.split_labels(gt, cfg, seed=s) for s in (0, 0, 1))
    assert np.array_equal(a.train, b.train) and np.array_equal(a.val, b.val)
    assert not np.array_equal(a.train, c.train)


def test_disjoint_split_is_spatially_separated(gt):
    split = hd.split_labels(gt, SplitConfig(mode="disjoint", fraction=0.3, val_share=0.0), seed=0)
    assert _sets_are_disjoint(split) and _labels_kept(split, gt)
    for c in (1, 2, 3):
        train_rows = np.nonzero(split.train == c)[0]
        test_rows = np.nonzero(split.test == c)[0]
        assert train_rows.max() < test_rows.min()
        # the cut: first row where the share above exceeds 0.9 * 0.3
        n = (gt == c).sum()
        share = len(train_rows) / n
        assert share > 0.27
        share_one_row_less = (split.train[: train_rows.max()] == c).sum() / n
        assert share_one_row_less <= 0.27


def test_disjoint_cut_by_hand():
    rows = np.array([0, 0, 1, 1, 2, 2, 3, 3, 4, 4])  # 2 pixels per row
    # fraction 0.5: need share > 0.45 -> 3 rows (6/10) above the cut
    assert hd.disjoint_cut(rows, 5, 0.5) == 3
    assert hd.disjoint_cut(rows, 5, 0.2) == 1  # 2/10 > 0.18


def test_masks_mode(gt):
    train = np.where((gt > 0) & (np.arange(30)[None, :] % 3 == 0), gt, 0)
    split = hd.split_labels(gt, SplitConfig(mode="masks", val_share=0.0), 0, train_mask=train)
    assert np.array_equal(split.train, train)
    assert np.array_equal(split.test > 0, (gt > 0) & (train == 0))
    with pytest.raises(ZskError, match="both"):
        hd.split_labels(gt, SplitConfig(mode="masks", test_mask="t.npy", val_share=0.0), 0, train_mask=train,
                        test_mask=train)


def test_masks_from_files_through_make_split(tmp_path, gt):
    cube = np.random.default_rng(0).random((40, 30, 4)).astype(np.float32)
    cubes.write_h5(tmp_path / "scene.h5", cube, gt)
    train = np.where((gt > 0) & (np.arange(40)[:, None] < 10), gt, 0)
    test = np.where((gt > 0) & (np.arange(40)[:, None] >= 30), gt, 0)
    np.save(tmp_path / "train.npy", train)
    cubes.write_mat(tmp_path / "test.mat", {"test_gt": test})
    cfg = DataConfig(root=str(tmp_path), image="scene.h5",
                     split=SplitConfig(mode="masks", train_mask="train.npy", test_mask="test.mat", val_share=0.0))
    split = hd.make_split(hd.load_scene(cfg), cfg, seed=0, margin=1)
    assert np.array_equal(split.train, train) and np.array_equal(split.test, test)
    np.save(tmp_path / "small.npy", train[:-1])
    cfg.split.train_mask = "small.npy"
    with pytest.raises(ZskError, match=r"small\.npy.*does not match"):
        hd.make_split(hd.load_scene(cfg), cfg, seed=0, margin=1)
    # a class without any training pixel is refused, naming the mask file
    np.save(tmp_path / "no3.npy", np.where(train == 3, 0, train))
    cfg.split.train_mask = "no3.npy"
    with pytest.raises(ZskError, match=r"no3\.npy: class 3 \(class_3\) gets no training pixel"):
        hd.make_split(hd.load_scene(cfg), cfg, seed=0, margin=1)


def test_usable_mask_excludes_border(gt):
    usable = hd.border_mask(gt.shape, 3)
    split = hd.split_labels(gt, SplitConfig(mode="random", fraction=0.5), 0, usable=usable)
    for m in (split.train, split.val, split.test):
        assert not (m[~usable] > 0).any()


def test_split_size_is_unambiguous():
    with pytest.raises(ZskError, match="either fraction or count"):
        hd.split_size(SplitConfig(fraction=0.1, count=10))
    with pytest.raises(ZskError, match="between 0 and 1"):
        hd.split_size(SplitConfig(fraction=10))
    assert hd.split_size(SplitConfig()) == ("fraction", 0.1)
    assert hd.split_size(SplitConfig(count=10)) == ("count", 10.0)


def test_preprocess_global_band_pca():
    rng = np.random.default_rng(0)
    img = rng.random((6, 5, 4)).astype(np.float32) * np.array([1, 10, 100, 1000], dtype=np.float32)
    g = hd.apply_preprocess(img, hd.fit_preprocess(img, "global", None))
    assert g.min() == pytest.approx(0.0, abs=1e-6) and g.max() == pytest.approx(1.0, abs=1e-6)
    np.testing.assert_allclose(g, (img - img.min()) / (img.max() - img.min()), rtol=1e-5, atol=1e-6)
    b = hd.apply_preprocess(img, hd.fit_preprocess(img, "band", None))
    np.testing.assert_allclose(b.reshape(-1, 4).min(0), 0.0, atol=1e-6)
    np.testing.assert_allclose(b.reshape(-1, 4).max(0), 1.0, atol=1e-5)
    s = hd.apply_preprocess(img, hd.fit_preprocess(img, "standard", None))
    np.testing.assert_allclose(s.reshape(-1, 4).mean(0), 0.0, atol=1e-5)
    stats = hd.fit_preprocess(img, "band", 2)
    p = hd.apply_preprocess(img, stats)
    assert p.shape == (6, 5, 2) and hd.preprocessed_bands(stats) == 2
    np.testing.assert_allclose(p.reshape(-1, 2).mean(0), 0.0, atol=1e-5)  # centred scores
    var = p.reshape(-1, 2).var(0)
    assert var[0] >= var[1]  # components sorted by variance
    with pytest.raises(ZskError, match="bands"):
        hd.apply_preprocess(img[..., :3], stats, "x.mat")


def _write_scene(tmp_path, cube, labels, name="scene.h5"):
    cubes.write_h5(tmp_path / name, cube, labels)
    return DataConfig(root=str(tmp_path), image=name)


def test_load_scene_nan_pixels_and_names(tmp_path):
    cube = np.ones((6, 6, 3), dtype=np.float32)
    cube[2, 3, 1] = np.nan
    cube[4, 4, :2] = np.inf
    labels = np.ones((6, 6), dtype=np.uint8)
    labels[0, 0] = 2
    cfg = _write_scene(tmp_path, cube, labels)
    # refused by default, naming the file and how many values (issue 12: no silently wrong map)
    with pytest.raises(ZskError, match=r"scene\.h5: the cube holds 1 NaN and 2 inf values in 2 of 36 pixels.*"
                                       r"data\.non_finite=zero"):
        hd.load_scene(cfg)
    # data.non_finite=zero: DeepHyperX's zeroing, those pixels unlabelled
    scene = hd.load_scene(dataclasses.replace(cfg, non_finite="zero"))
    assert scene.labels[2, 3] == 0 and np.all(scene.image[2, 3] == 0)
    assert scene.labels[4, 4] == 0 and np.all(scene.image[4, 4] == 0)
    assert np.isfinite(scene.image).all() and scene.labels[1, 1] == 1
    assert scene.class_names == ["class_1", "class_2"]
    assert scene.palette.shape == (3, 3) and tuple(scene.palette[0]) == (0, 0, 0)


def test_load_scene_errors(tmp_path):
    cube = np.ones((6, 6, 3), dtype=np.float32)
    labels = np.ones((6, 6), dtype=np.uint8)
    labels[0, 0] = 3  # class 2 empty
    with pytest.raises(ZskError, match=r"class 2 \(class_2\) has no labelled pixel"):
        hd.load_scene(_write_scene(tmp_path, cube, labels))
    cubes.write_h5(tmp_path / "bad.h5", cube)
    np.save(tmp_path / "gt.npy", np.ones((5, 6), dtype=np.uint8))
    with pytest.raises(ZskError, match=r"gt\.npy.*does not match"):
        hd.load_scene(DataConfig(root=str(tmp_path), image="bad.h5", labels="gt.npy"))
    with pytest.raises(ZskError, match="cube file not found"):
        hd.load_scene(DataConfig(root=str(tmp_path), image="missing.h5"))
    np.save(tmp_path / "gt3.npy", np.full((6, 6), 2))
    with pytest.raises(ZskError, match="only 1 class names"):
        hd.load_scene(DataConfig(root=str(tmp_path), image="bad.h5", labels="gt3.npy", class_names=["a"]))
    with pytest.raises(ZskError, match="unknown benchmark"):
        hd.load_scene(DataConfig(root=str(tmp_path), dataset="indian_pine"))


def test_benchmark_layouts(tmp_path):
    # DeepHyperX layout <root>/<Folder>/<file> with the benchmark's keys
    folder = tmp_path / "PaviaU"
    folder.mkdir()
    cube = np.random.default_rng(0).random((8, 7, 103)).astype(np.float32)
    labels = (np.arange(56).reshape(8, 7) % 10).astype(np.uint8)
    cubes.write_mat(folder / "PaviaU.mat", {"paviaU": cube})
    cubes.write_mat(folder / "PaviaU_gt.mat", {"paviaU_gt": labels})
    scene = hd.load_scene(DataConfig(root=str(tmp_path), dataset="pavia_u"))
    assert scene.class_names[0] == "Asphalt" and scene.num_classes == 9
    assert scene.rgb_bands == (55, 41, 12)
    for name, b in hd.BENCHMARKS.items():
        assert len(b.class_names) == {"indian_pines": 16, "pavia_u": 9, "pavia_c": 9, "salinas": 16, "ksc": 13,
                                      "botswana": 14, "dfc2018": 20}[name]


def test_extract_patches_matches_slicing():
    cube = torch.arange(2 * 6 * 7, dtype=torch.float32).reshape(2, 6, 7)
    padded = hd.pad_cube(cube, 1, "reflect")
    assert padded.shape == (2, 8, 9)
    ys, xs = torch.tensor([0, 5, 2]), torch.tensor([0, 6, 3])
    patches = hd.extract_patches(padded, ys, xs, 3)
    for i, (y, x) in enumerate(zip(ys.tolist(), xs.tolist(), strict=True)):
        torch.testing.assert_close(patches[i], padded[:, y : y + 3, x : x + 3])
    torch.testing.assert_close(patches[2][:, 1, 1], cube[:, 2, 3])  # centred on the pixel
    # reflect padding mirrors without repeating the edge
    torch.testing.assert_close(padded[:, 0, 1:-1], cube[:, 1])


def test_sample_scene_in_every_format(tmp_path):
    paths = hd.write_sample(tmp_path, height=24, width=20, bands=10)
    ref = cubes.read_cube(paths["h5"])
    assert ref.shape == (24, 20, 10)
    np.testing.assert_array_equal(cubes.read_cube(paths["mat"], "sample"), ref)
    np.testing.assert_array_equal(cubes.read_cube(paths["envi"]), ref)
    np.testing.assert_array_equal(cubes.read_cube(paths["npy"]), ref)
    gt = cubes.read_labels(paths["h5"])
    np.testing.assert_array_equal(cubes.read_labels(paths["envi_gt"]), gt)
    np.testing.assert_array_equal(cubes.read_labels(paths["mat"], "sample_gt"), gt)
    assert set(np.unique(gt)) == set(range(len(hd.SAMPLE_CLASSES) + 1))
    # deterministic
    again = hd.synthetic_scene(24, 20, 10, len(hd.SAMPLE_CLASSES))[0]
    np.testing.assert_array_equal(again, ref)
