"""Evaluation, prediction and hook pieces without training: multi-class case metrics, the bench hook, the montage."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from zsk.core.bench import trainer_step
from zsk.core.errors import ZskError
from zsk.core.recipe import parse_config
from zsk.data.volumes import Volume
from zsk.metrics.medical import binary_case_metrics
from zsk.tasks.medseg import evaluate, hooks, predict
from zsk.tasks.medseg.config import Config


def _cfg(**data) -> Config:
    return parse_config(Config, {"data": {"patch_size": [16, 16, 16], **data}, "model": {"n_filters": 2},
                                 "eval": {"stride": [16, 16, 16], "window_batch": 2}, "train": {"batch_size": 2}})


def test_multiclass_case_metrics_average_foreground_classes():
    cfg = _cfg(num_classes=3, class_names=["bg", "a", "b"])
    label = np.zeros((12, 12, 12), np.int64)
    label[1:5, 1:5, 1:5] = 1
    label[6:11, 6:11, 6:11] = 2
    pred = label.copy()
    pred[1:5, 1:5, 1] = 0  # class a loses a slice
    vol = Volume(image=np.zeros(label.shape, np.float32), label=label, spacing=(1.0, 1.0, 2.0), name="c")
    m = evaluate.case_metrics(pred.astype(np.uint8), vol, cfg)
    a = binary_case_metrics(pred == 1, label == 1)
    assert m["per_class"]["a"] == a and m["per_class"]["b"]["dice"] == 1.0
    assert m["dice"] == pytest.approx((a["dice"] + 1.0) / 2)
    cfg.eval.spacing = "header"
    mm = evaluate.case_metrics(pred.astype(np.uint8), vol, cfg)
    assert mm["per_class"]["a"]["hd95"] == pytest.approx(binary_case_metrics(pred == 1, label == 1, (1, 1, 2))["hd95"])


def test_bench_spec_trains_and_batched_inference_matches():
    cfg = _cfg()
    spec = hooks.bench_spec(cfg, torch.device("cpu"), 2, volume_shape=(40, 20, 20))
    step, trainer = trainer_step(spec, cfg, torch.device("cpu"))
    step()
    assert trainer.step == 1 and isinstance(trainer.optimizer, torch.optim.SGD)  # the recipe's optimizer
    spec.infer_step()
    extra = spec.extra()
    assert spec.train_samples == 2 and spec.infer_unit == "volumes"
    assert extra["window_batch"] == 2 and extra["window_batch_setting"] == 2  # _cfg sets 2
    assert extra["batched_vs_single_max_abs_diff"] < 1e-5
    assert extra["s_per_volume_one_window"] > 0 and extra["s_per_volume_batched_8"] > 0
    assert extra["batched_8_speedup_wall"] == pytest.approx(extra["s_per_volume_one_window"] / extra["s_per_volume_batched_8"])


def test_window_batch_auto_is_measured_on_the_first_volume(monkeypatch):
    from zsk.models.inferers import MeasuredBatch

    cfg = parse_config(Config, {})
    assert cfg.eval.window_batch == "auto"  # the default and the recipes' value
    for name in ("la_16", "la_8", "pancreas_12", "demo"):
        from zsk.core.recipe import load_recipe

        assert parse_config(Config, load_recipe(f"medseg/{name}")).eval.window_batch == "auto"
    assert evaluate.window_batch_for(3, torch.device("cpu")) == 3
    monkeypatch.setattr(evaluate, "_measured_window_batches", {})
    cfg = _cfg()
    cfg.eval.window_batch = "auto"
    model = hooks.build_model(cfg).eval()
    volume = np.random.default_rng(0).normal(size=(40, 20, 20)).astype(np.float32)  # 9 windows of 16^3
    choice = evaluate.window_batch_for("auto", torch.device("cpu"), model, cfg.eval_patch)
    assert isinstance(choice, MeasuredBatch) and choice.chosen is None
    _, auto = evaluate.infer_volume(model, volume, cfg, torch.device("cpu"))
    chosen = evaluate.window_batch_for("auto", torch.device("cpu"), model, cfg.eval_patch).chosen
    assert chosen in (1, 8)  # measured on this volume's windows and remembered
    _, fixed = evaluate.infer_volume(model, volume, cfg, torch.device("cpu"), 1)
    torch.testing.assert_close(auto, fixed, atol=1e-6, rtol=1e-5)


def test_montage_outlines_the_mask():
    image = np.random.default_rng(0).normal(size=(20, 16, 10)).astype(np.float32)
    mask = np.zeros(image.shape, np.uint8)
    mask[5:15, 4:12, 3:7] = 1
    rgb = predict.montage(image, mask, num_slices=4, columns=2)
    assert rgb.dtype == np.uint8 and rgb.ndim == 3 and rgb.shape[2] == 3
    red = (rgb[..., 0] == 255) & (rgb[..., 1] == 0) & (rgb[..., 2] == 0)
    assert red.any()


def test_mm_distances_use_file_spacing_or_data_spacing():
    cfg = _cfg()
    cfg.eval.spacing = "header"
    label = np.zeros((12, 12, 12), np.int64)
    label[2:8, 2:8, 2:8] = 1
    pred = np.roll(label, 2, axis=0).astype(np.uint8)
    vol = Volume(image=np.zeros(label.shape, np.float32), label=label, name="c", spacing_from_file=False)
    with pytest.raises(ZskError, match="data.spacing"):
        evaluate.case_metrics(pred, vol, cfg)
    cfg.data.spacing = (2.0, 1.0, 1.0)
    assert evaluate.case_metrics(pred, vol, cfg)["hd95"] == pytest.approx(
        binary_case_metrics(pred, label, (2.0, 1.0, 1.0))["hd95"])
    vol.spacing, vol.spacing_from_file = (0.5, 0.5, 0.5), True  # a spacing stored in the file wins
    assert evaluate.case_metrics(pred, vol, cfg)["hd95"] == pytest.approx(
        binary_case_metrics(pred, label, (0.5, 0.5, 0.5))["hd95"])


def test_montage_names_its_slices_and_axis(tmp_path):
    """Issue 12: every tile carries its slice index z (drawn top left) and the PNG says which axis; the
    montage is deterministic."""
    from PIL import Image

    image = np.random.default_rng(0).normal(size=(20, 16, 10)).astype(np.float32)
    mask = np.zeros(image.shape, np.uint8)
    mask[5:15, 4:12, 3:8] = 1
    named = predict.montage(image, mask, num_slices=4, columns=2)
    plain = predict.montage(image, mask, num_slices=4, columns=2, label_slices=False)
    assert np.array_equal(named, predict.montage(image, mask, num_slices=4, columns=2))  # deterministic
    zs = predict.montage_slices(mask, image.shape[2], 4)
    assert zs == [3, 4, 6, 7]
    th, tw = named.shape[0] // 2, named.shape[1] // 2
    corners = []
    for k in range(4):
        r, c = divmod(k, 2)
        a = named[r * th:(r + 1) * th, c * tw:(c + 1) * tw]
        b = plain[r * th:(r + 1) * th, c * tw:(c + 1) * tw]
        rows, cols = np.nonzero((a != b).any(-1))
        assert rows.size and rows.max() < th // 3 and cols.max() < tw * 0.6  # a label in the top-left corner
        corners.append(a[: th // 4, : tw // 2])
    assert not np.array_equal(corners[0], corners[1])  # z=3 and z=4 read differently
    png = tmp_path / "m.png"
    assert predict.save_montage(png, image, mask, "case.nii.gz") == [3, 4, 5, 6, 7]  # 8 slices asked, 5 exist
    with Image.open(png) as im:
        assert im.text["zsk:axis"] == "z" and im.text["zsk:slices"] == "3,4,5,6,7"
        assert "axis z" in im.text["Description"]
        assert np.array_equal(np.asarray(im.convert("RGB")), predict.montage(image, mask))
