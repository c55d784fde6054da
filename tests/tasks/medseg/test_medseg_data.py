"""Level-set targets, augmentation, case lists, the two-stream sampler and the sample writer."""

from __future__ import annotations

import collections

import numpy as np
import pytest
from scipy.spatial.distance import cdist

from zsk.core.errors import ZskError
from zsk.data.volumes import read_h5_volume, read_nifti_volume, write_h5_volume
from zsk.tasks.medseg.config import DataConfig
from zsk.tasks.medseg.data import (
    TwoStreamBatchSampler,
    TwoStreamTrainSet,
    level_set_targets,
    random_crop,
    random_rot_flip,
    signed_distance_map,
    split_cases,
    write_sample,
)


def test_sdf_on_a_cube_known_distances():
    m = np.zeros((9, 9, 9), dtype=bool)
    m[3:6, 3:6, 3:6] = True
    sdf = signed_distance_map(m)
    # inside: the centre is 2 voxels from the background (the largest inside distance) -> −1
    assert sdf[4, 4, 4] == pytest.approx(-1.0)
    # the 26 other cube voxels form the inner boundary -> 0
    assert np.count_nonzero(sdf[m]) == 1
    # outside: distance to the cube over the largest outside distance (a corner: √(3²+3²+3²))
    far = np.sqrt(27.0)
    assert sdf[0, 0, 0] == pytest.approx(1.0)
    assert sdf[0, 4, 4] == pytest.approx(3 / far)
    assert sdf[4, 4, 7] == pytest.approx(2 / far)
    assert sdf.min() >= -1 and sdf.max() <= 1


def test_sdf_matches_brute_force_formula():
    rng = np.random.default_rng(0)
    grid = np.indices((10, 9, 8)).reshape(3, -1).T
    m = (((grid - [4.5, 4, 3.5]) / [3.2, 2.5, 2.2]) ** 2).sum(1) <= 1
    m = m.reshape(10, 9, 8)
    m[rng.random(m.shape) < 0.03] = True
    fg, bg = grid[m.ravel()], grid[~m.ravel()]
    inside = np.zeros(m.size)
    outside = np.zeros(m.size)
    inside[m.ravel()] = cdist(fg, bg).min(1)
    outside[~m.ravel()] = cdist(bg, fg).min(1)
    expected = outside / outside.max() - inside / inside.max()
    # inner boundary: foreground voxels with a face neighbour in the background inside the patch
    nb = np.zeros(m.size, dtype=bool)
    for axis in range(3):
        for d in (-1, 1):
            q = grid.copy()
            q[:, axis] += d
            ok = (q[:, axis] >= 0) & (q[:, axis] < m.shape[axis])
            nb[ok] |= ~m[tuple(q[ok].T)]
    expected[m.ravel() & nb] = 0
    np.testing.assert_allclose(signed_distance_map(m).ravel(), expected, atol=1e-6)


def test_sdf_edge_cases_and_multiclass():
    assert not signed_distance_map(np.zeros((4, 4, 4))).any()
    assert (signed_distance_map(np.ones((4, 4, 4))) == -1).all()
    label = np.zeros((8, 8, 8), dtype=np.int64)
    label[1:3, 1:3, 1:3] = 1
    label[5:8, 5:8, 5:8] = 2
    t = level_set_targets(label, 3)
    assert t.shape == (2, 8, 8, 8)
    np.testing.assert_array_equal(t[0], signed_distance_map(label == 1))
    np.testing.assert_array_equal(t[1], signed_distance_map(label == 2))


def test_rot_flip_and_crop_keep_image_and_label_aligned():
    rng = np.random.default_rng(0)
    label = (rng.random((12, 10, 6)) > 0.5).astype(np.int64)
    image = label * 2.0 + np.arange(label.size).reshape(label.shape) * 1e-3
    seen_shapes = set()
    for _ in range(20):
        im, lb = random_rot_flip(image, label, rng)
        seen_shapes.add(im.shape)
        np.testing.assert_array_equal(im >= 2, lb == 1)
        ci, cl = random_crop(im, lb, (8, 8, 4), rng)
        assert ci.shape == (8, 8, 4) and cl.shape == (8, 8, 4)
        np.testing.assert_array_equal(ci >= 2, cl == 1)
    assert seen_shapes == {(12, 10, 6), (10, 12, 6)}  # in-plane quarter turns swap x and y


def test_crop_pads_small_volumes_and_reaches_every_position():
    rng = np.random.default_rng(0)
    image = np.arange(6 * 5 * 4, dtype=np.float32).reshape(6, 5, 4) + 1
    ci, _ = random_crop(image, np.zeros(image.shape, np.int64), (8, 8, 4), rng)
    assert ci.shape == (8, 8, 4)
    starts = collections.Counter()
    vol = np.arange(10, dtype=np.float32)[:, None, None] * np.ones((10, 20, 20), np.float32)
    for _ in range(300):
        c, _ = random_crop(vol, np.zeros(vol.shape, np.int64), (7, 8, 8), rng)
        starts[int(c[0, 0, 0])] += 1
    assert set(starts) == {0, 1, 2, 3}  # 10 − 7 + 1 positions, the last one included


def test_two_stream_sampler_composition():
    labeled, unlabeled = list(range(6)), list(range(6, 16))
    s = TwoStreamBatchSampler(labeled, unlabeled, batch_size=4, labeled_bs=2, seed=3, epoch=0)
    batches = list(s)
    assert len(batches) == len(s) == 3  # an epoch is #labelled / labeled_bs batches
    for b in batches:
        idx = [i for i, _ in b]
        assert len(idx) == 4 and all(i in labeled for i in idx[:2]) and all(i in unlabeled for i in idx[2:])
    assert sorted(i for b in batches for i, _ in b[:2]) == labeled  # each labelled case once per epoch
    # the unlabelled stream continues across epochs and visits every case before repeating
    stream = [i for e in range(4) for b in TwoStreamBatchSampler(labeled, unlabeled, 4, 2, seed=3, epoch=e)
              for i, _ in b[2:]]
    assert sorted(stream[:10]) == unlabeled and sorted(stream[10:20]) == unlabeled
    # deterministic in (seed, epoch), different across epochs, fresh augmentation seeds
    assert batches == list(TwoStreamBatchSampler(labeled, unlabeled, 4, 2, seed=3, epoch=0))
    assert batches != list(TwoStreamBatchSampler(labeled, unlabeled, 4, 2, seed=3, epoch=1))
    seeds = [sd for b in batches for _, sd in b]
    assert len(set(seeds)) == len(seeds)


def test_two_stream_sampler_ranks_and_errors():
    labeled, unlabeled = list(range(8)), list(range(8, 12))
    r0 = list(TwoStreamBatchSampler(labeled, unlabeled, 4, 2, seed=0, epoch=0, rank=0, world_size=2))
    r1 = list(TwoStreamBatchSampler(labeled, unlabeled, 4, 2, seed=0, epoch=0, rank=1, world_size=2))
    assert len(r0) == len(r1) == 2
    assert not {i for b in r0 for i, _ in b[:2]} & {i for b in r1 for i, _ in b[:2]}
    supervised = list(TwoStreamBatchSampler(labeled, [], 2, 2, seed=0, epoch=0))
    assert all(len(b) == 2 for b in supervised)
    with pytest.raises(ZskError, match="no unlabelled cases"):
        TwoStreamBatchSampler(labeled, [], 4, 2)


def test_write_sample_and_read_both_layouts(tmp_path):
    paths = write_sample(tmp_path, num_train=3, num_test=2, shape=(32, 32, 16), seed=5)
    assert (paths["la"] / "train.list").read_text().split() == ["SAMPLE000", "SAMPLE001", "SAMPLE002"]
    h5 = read_h5_volume(paths["la"] / "SAMPLE003" / "mri_norm2.h5", require_label=True)
    nii = read_nifti_volume(paths["nifti"] / "images" / "SAMPLE003.nii.gz", paths["nifti"] / "labels" / "SAMPLE003.nii.gz")
    np.testing.assert_allclose(h5.image, nii.image, rtol=1e-6)
    np.testing.assert_array_equal(h5.label, nii.label)
    assert 0.01 < h5.label.mean() < 0.5  # a structure, not the whole volume
    assert h5.image[h5.label == 1].mean() > h5.image[h5.label == 0].mean() + 1.0
    assert nii.spacing == pytest.approx((0.625, 0.625, 1.25)) and nii.affine[0, 3] == pytest.approx(-15.0)
    again = write_sample(tmp_path / "again", num_train=3, num_test=2, shape=(32, 32, 16), seed=5)
    np.testing.assert_array_equal(read_h5_volume(again["la"] / "SAMPLE003" / "mri_norm2.h5").image, h5.image)


def test_split_cases_layouts_and_dataset_items(tmp_path):
    paths = write_sample(tmp_path, num_train=4, num_test=1, shape=(32, 32, 16), seed=0)
    h5_cfg = DataConfig(root=str(paths["la"]), labeled_num=2, patch_size=(16, 16, 16))
    nii_cfg = DataConfig(root=str(paths["nifti"]), format="nifti", train_list="{root}/train.csv",
                         test_list="{root}/test.csv", labeled_num=2, patch_size=(16, 16, 16))
    folder_cfg = DataConfig(root=str(paths["nifti"]), format="nifti", train_list="{root}", labeled_num=2)
    assert [c.name for c in split_cases(h5_cfg, "train")] == [c.name for c in split_cases(nii_cfg, "train")]
    assert len(split_cases(folder_cfg, "train")) == 5
    ds = TwoStreamTrainSet(split_cases(nii_cfg, "train"), nii_cfg)
    lab, unl = ds[(0, 11)], ds[(3, 11)]
    assert lab["image"].shape == (1, 16, 16, 16) and lab["sdf"].shape == (1, 16, 16, 16)
    assert bool(lab["labeled"]) and not bool(unl["labeled"])
    np.testing.assert_allclose(lab["sdf"][0].numpy(), signed_distance_map(lab["label"].numpy() == 1))
    assert not unl["sdf"].any() and not unl["label"].any()
    assert (ds[(0, 11)]["image"] == lab["image"]).all()  # same seed, same patch
    (paths["la"] / "empty.list").write_text("")
    with pytest.raises(ZskError, match=r"empty\.list"):
        split_cases(h5_cfg, "empty")
    (paths["la"] / "ghost.list").write_text("NOPE\n")
    with pytest.raises(ZskError, match=r"NOPE.*does not exist"):
        split_cases(h5_cfg, "ghost")
    write_h5_volume(paths["la"] / "SAMPLE000" / "mri_norm2.h5", np.zeros((32, 32, 16)), np.full((32, 32, 16), 3))
    with pytest.raises(ZskError, match=r"SAMPLE000.*label value 3"):
        ds_h5 = TwoStreamTrainSet(split_cases(h5_cfg, "train"), h5_cfg)
        ds_h5[(0, 1)]
