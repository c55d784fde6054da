"""Readers of the benchmarks' real layouts (CIFAR pickles, STL-10 binaries, Tiny ImageNet, image folders), the
Lab conversion and MetAug's network shapes."""

from __future__ import annotations

import pickle

import numpy as np
import pytest
import torch
from PIL import Image

from zsk.core.errors import ZskError
from zsk.data.classification import (
    cifar_split,
    folder_split,
    safe_unpickle,
    stl10_split,
    tiny_imagenet_split,
    write_cifar,
    write_stl10,
)
from zsk.data.colorspace import rgb_to_lab
from zsk.tasks.contrast.model import AlexNetHalf, MetAugNet


def test_cifar10_and_100_pickles_round_trip(tmp_path) -> None:  # noqa: ANN001
    rng = np.random.default_rng(0)
    imgs = rng.integers(0, 256, (7, 32, 32, 3), dtype=np.uint8)
    labels = np.array([0, 1, 2, 1, 0, 2, 1])
    write_cifar(tmp_path, imgs, labels, ["a", "b", "c"], "cifar10", "train")
    got = cifar_split(tmp_path, "train", "cifar10")
    assert got.classes == ["a", "b", "c"] and got.labels.tolist() == labels.tolist()
    assert np.array_equal(got.image(3), imgs[3])
    write_cifar(tmp_path, imgs[:4], labels[:4], ["a", "b", "c"], "cifar100", "test")
    got = cifar_split(tmp_path / "cifar-100-python", "test", "cifar100")
    assert len(got) == 4 and np.array_equal(got.image(0), imgs[0])


class _Evil:
    def __reduce__(self):  # noqa: ANN204
        return (print, ("pwned",))


def test_cifar_reader_refuses_arbitrary_objects(tmp_path) -> None:  # noqa: ANN001
    path = tmp_path / "data_batch_1"
    path.write_bytes(pickle.dumps({b"data": _Evil()}, protocol=2))
    with pytest.raises(ZskError, match="not a CIFAR python pickle"):
        safe_unpickle(path, "cifar10 batch")


def test_stl10_binaries_round_trip(tmp_path) -> None:  # noqa: ANN001
    rng = np.random.default_rng(1)
    imgs = rng.integers(0, 256, (3, 96, 96, 3), dtype=np.uint8)
    write_stl10(tmp_path, "train", imgs, np.array([0, 9, 4]))
    write_stl10(tmp_path, "unlabeled", imgs[:2], None)
    got = stl10_split(tmp_path, "train", unlabeled=True)
    assert got.labels.tolist() == [0, 9, 4, -1, -1]
    assert np.array_equal(got.image(1), imgs[1]) and np.array_equal(got.image(4), imgs[1])
    from zsk.tasks.contrast.data import LabImages, labelled, to_lab_tensor

    lab = labelled(got)
    assert lab.labels.tolist() == [0, 9, 4] and np.array_equal(lab.image(2), imgs[2])
    x, y, i = LabImages(got, lambda im: im)[3]  # an unlabelled image through the dataset (memory-mapped file)
    assert (y, i) == (-1, 3) and torch.equal(x, to_lab_tensor(imgs[0]))


def _png(path, value: int = 100) -> None:  # noqa: ANN001
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(np.full((8, 8, 3), value, np.uint8)).save(path)


def test_tiny_imagenet_val_annotations(tmp_path) -> None:  # noqa: ANN001
    for w in ("n01", "n02"):
        _png(tmp_path / "train" / w / "images" / f"{w}_0.JPEG")
    (tmp_path / "wnids.txt").write_text("n01\nn02\n")
    _png(tmp_path / "val" / "images" / "val_0.JPEG")
    _png(tmp_path / "val" / "images" / "val_1.JPEG")
    (tmp_path / "val" / "val_annotations.txt").write_text("val_0.JPEG\tn02\t0\t0\t8\t8\nval_1.JPEG\tn01\t0\t0\t8\t8\n")
    assert tiny_imagenet_split(tmp_path, "train").labels.tolist() == [0, 1]
    val = tiny_imagenet_split(tmp_path, "val")
    assert val.classes == ["n01", "n02"] and val.labels.tolist() == [1, 0]


def test_folder_split_with_class_subset(tmp_path) -> None:  # noqa: ANN001
    for c in ("cat", "dog", "eel"):
        _png(tmp_path / "train" / c / "x.png")
    assert folder_split(tmp_path, "train").classes == ["cat", "dog", "eel"]
    sub = folder_split(tmp_path, "train", ["eel", "cat"])
    assert sub.classes == ["eel", "cat"] and sub.labels.tolist() == [0, 1]


def test_rgb_to_lab_hand_worked() -> None:
    rgb = np.array([[[255, 255, 255], [0, 0, 0], [255, 0, 0], [128, 128, 128]]], np.uint8)
    lab = rgb_to_lab(rgb)[0]
    assert lab[0] == pytest.approx([100.0, 0.0, 0.0], abs=1e-2)
    assert lab[1] == pytest.approx([0.0, 0.0, 0.0], abs=1e-6)
    assert lab[2] == pytest.approx([53.24, 80.09, 67.20], abs=0.02)  # sRGB red (CIE D65)
    assert lab[3][0] == pytest.approx(53.59, abs=0.02) and abs(lab[3][1]) < 1e-2


def test_alexnet_half_shapes_at_224() -> None:
    net = AlexNetHalf(2).eval()
    x = torch.zeros(1, 2, 224, 224)
    with torch.no_grad():
        assert net(x, 5).shape == (1, 128, 6, 6)  # conv5 after its pool
        assert net(x, 6).shape == (1, 2048)
        emb = net(torch.randn(1, 2, 224, 224), 8)
    assert emb.shape == (1, 128) and float(emb.norm()) == pytest.approx(1.0, abs=1e-5)
    assert net.fc6[0].in_features == 4608  # 128 * 6 * 6: CMC's fc6 4608 -> 2048


def test_probe_input_widths() -> None:
    net = MetAugNet("alexnet", [4, 4, 4, 4, 8], 16, 8, 12, 64, 10, 3, layer="conv5")
    assert net.probe_dim("conv5", "encoder") == 3 * 8 * 36
    assert net.probe_dim("fc6", "encoder") == 48 and net.probe_dim("fc7", "encoder+generator") == 48 + 36
    x = torch.randn(2, 3, 64, 64)
    net.eval()
    assert net.probe_features(x).shape == (2, 3 * 8 * 36) and net(x).shape == (2, 3)


def test_resnet_views_train_one_step() -> None:
    from zsk.core.recipe import load_recipe, parse_config
    from zsk.tasks.contrast.config import Config
    from zsk.tasks.contrast.train import MetAugStep, build_model

    cfg = parse_config(Config, load_recipe("contrast/demo", ["data.root=.", "model.backbone=resnet18",
                                                             "eval.layer=pool", "model.nce_k=4"]))
    net = build_model(cfg, 8, 2)
    assert net.probe.classifier.in_features == 3 * 512
    x = torch.randn(2, 3, 64, 64)
    out = MetAugStep(net, cfg, cfg.train)(net, (x, torch.tensor([0, 1]), torch.tensor([3, 5])), 0)
    out["loss"].backward()
    assert net.encoder.ori.trunk.conv1.weight.grad is not None
    net.eval()
    assert net(x).shape == (2, 2)
