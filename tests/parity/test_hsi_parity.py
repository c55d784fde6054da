"""hsi replayed against DeepHyperX's figures (tools/parity/hsi.py --save; Alam et al. publish no code, so the
peer toolbox nshaud/DeepHyperX is the reference for data, patches, sampling, dense inference and metrics): the
seeded inputs through zsk alone, every output within 1e-5 of DeepHyperX's."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import scipy.io
import torch
from common import assert_close as close  # noqa: E402  (tools/parity, see conftest.py)
from common import load_figures  # noqa: E402

from zsk.tasks.hsi import data as hsi_data
from zsk.tasks.hsi.config import DataConfig, EvalConfig, SplitConfig
from zsk.tasks.hsi.evaluate import classification_metrics, node_features, to_image_grid
from zsk.tasks.hsi.model import HSINet
from zsk.tasks.hsi.train import class_weights

OFFICIAL_COMMIT = "176e582e53df92a6b4014b022c7f67034b489889"  # nshaud/DeepHyperX
FIG = Path(__file__).parent / "hsi"
TOL = 1e-5


@pytest.fixture(scope="module")
def figures():
    return load_figures(FIG, "hsi")


def test_figures_name_the_official_commit(figures):
    _, meta = figures
    assert meta["official_commit"] == OFFICIAL_COMMIT
    assert all(r["verdict"] != "DIFFERENT" for r in meta["rows"])


def test_mat_readers_and_get_dataset(figures, tmp_path):
    f, meta = figures
    for name, zname in meta["benchmarks"].items():
        b = hsi_data.BENCHMARKS[zname]
        (tmp_path / name).mkdir()
        scipy.io.savemat(tmp_path / name / b.image, {b.image_key: f[f"in/{name}/cube"]})
        scipy.io.savemat(tmp_path / name / b.labels, {b.labels_key: f[f"in/{name}/gt"]})
        scene = hsi_data.load_scene(DataConfig(root=str(tmp_path), dataset=zname, non_finite="zero"))
        img = hsi_data.apply_preprocess(scene.image, hsi_data.fit_preprocess(scene.image, "global", None))
        close(img, f[f"get_dataset {name}: normalised cube"])
        close(scene.labels, f[f"get_dataset {name}: labels (NaN pixels 0)"])


def _net(f, meta) -> HSINet:
    k = meta["scene"][3]
    net = HSINet("cnn", meta["scene"][2], k, patch=meta["patch"], band_groups=2, branch_channels=(2, 3),
                 branch_spectral_kernels=(3, 3), feature_dim=6, refine=False)
    state, offset, weights = net.state_dict(), 0, f["in/net_weights"]
    for name, value in state.items():
        if value.dtype.is_floating_point:
            state[name] = torch.from_numpy(weights[offset : offset + value.numel()].copy()).reshape(value.shape)
            offset += value.numel()
    assert offset == weights.size
    net.load_state_dict(state)
    return net.eval()


def test_patches_padding_and_dense_inference(figures):
    f, meta = figures
    img, labels, p, w = f["in/img"], f["in/labels"], meta["patch"] // 2, meta["patch"]
    chw = torch.from_numpy(img).permute(2, 0, 1).contiguous()
    idx = torch.from_numpy(f["in/patch_centres"])
    close(hsi_data.extract_patches(chw, idx[:, 0] - p, idx[:, 1] - p, w), f["patch extraction (HyperX, data.pad: none)"])
    close(labels[idx[:, 0], idx[:, 1]], f["patch centre label (HyperX center_pixel)"])
    close(hsi_data.pad_cube(chw, p, "reflect").permute(1, 2, 0), f["padding (padding_image mode=reflect)"])
    net = _net(f, meta)
    with torch.no_grad():
        unary = net.potentials.unary(node_features(net, chw, EvalConfig(chunk_pixels=53)))
    close(-unary, f["dense inference scores (models.test, stride 1)"])
    close(to_image_grid(unary.argmin(-1), labels.shape, p, fill=-1) + 1, f["dense prediction map (border 0)"])


def test_sampling_and_class_weights(figures):
    f, meta = figures
    labels, k, seed = f["in/labels"], meta["scene"][3], meta["seed"]

    def counts(m):
        return np.bincount(m.ravel(), minlength=k + 1)[1:]

    for frac in (0.3, 0.5):
        split = hsi_data.split_labels(labels, SplitConfig(mode="disjoint", fraction=frac, val_share=0.0), seed)
        close(split.train, f[f"sample_gt disjoint {frac}: train"])
        close(split.test, f[f"sample_gt disjoint {frac}: test"])
    split = hsi_data.split_labels(labels, SplitConfig(mode="random", fraction=0.1, val_share=0.0), seed)
    close(counts(split.train), f["sample_gt random 0.1: train pixels per class"])
    close(counts(split.test), f["sample_gt random 0.1: test pixels per class"])
    split = hsi_data.split_labels(labels, SplitConfig(mode="fixed", count=5, val_share=0.0), seed)
    close(counts(split.train), f["sample_gt fixed 5: train pixels per class"])
    split = hsi_data.split_labels(labels, SplitConfig(mode="random", count=10, val_share=0.0), seed)
    close(counts(split.train), f["sample_gt random count 10: train pixels per class"])
    close(class_weights(split.train, k, "inverse_median"), f["compute_imf_weights (inverse median frequency)"])


def test_metrics(figures):
    f, meta = figures
    k = meta["scene"][3]
    m = classification_metrics(torch.from_numpy(f["in/pred"] - 1), f["in/labels"], [f"c{i}" for i in range(1, k + 1)])
    close(m["confusion"], f["metrics: confusion matrix"])
    close(m["OA"], f["metrics: OA"])
    close(m["kappa"], f["metrics: kappa"])
    close(list(m["per_class_f1"].values()), f["metrics: per-class F1"])
    close(list(m["per_class"].values()), f["metrics: per-class accuracy (from its confusion matrix)"])
    close(m["AA"], f["metrics: AA (from its confusion matrix)"])
