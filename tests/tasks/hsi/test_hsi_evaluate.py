"""hsi evaluation and training pieces: metrics on a hand-worked confusion matrix, tile-wise = per-pixel prediction,
training pairs."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from zsk.metrics.summary import summarize_runs
from zsk.tasks.hsi import evaluate as hsi_eval
from zsk.tasks.hsi import train as hsi_train
from zsk.tasks.hsi.cli import TASK
from zsk.tasks.hsi.config import Config, DataConfig, EvalConfig, ModelConfig
from zsk.tasks.hsi.model import HSINet


def test_metrics_hand_worked_confusion():
    # rows true, columns predicted: [[5, 1, 0], [2, 3, 1], [0, 0, 4]]
    pairs = [(0, 0)] * 5 + [(0, 1)] + [(1, 0)] * 2 + [(1, 1)] * 3 + [(1, 2)] + [(2, 2)] * 4
    true = np.array([t for t, _ in pairs]) + 1
    pred = torch.tensor([p for _, p in pairs])
    # unlabelled pixels (0) with any prediction are ignored
    labels = np.concatenate([true, [0, 0, 0]])[None, :]
    pred = torch.cat([pred, torch.tensor([2, 0, 1])])[None, :]
    m = hsi_eval.classification_metrics(pred, labels, ["a", "b", "c"])
    assert m["confusion"] == [[5, 1, 0], [2, 3, 1], [0, 0, 4]]
    assert m["pixels"] == 16
    assert m["OA"] == pytest.approx(12 / 16)
    assert m["AA"] == pytest.approx((5 / 6 + 3 / 6 + 4 / 4) / 3)
    p_e = (6 * 7 + 6 * 4 + 4 * 5) / 16**2
    assert m["kappa"] == pytest.approx((0.75 - p_e) / (1 - p_e))
    assert m["per_class"] == pytest.approx({"a": 5 / 6, "b": 0.5, "c": 1.0})
    assert m["per_class_f1"] == pytest.approx({"a": 10 / 13, "b": 6 / 10, "c": 8 / 9})


def test_summarize_runs_mean_std():
    runs = [{"OA": 0.8, "AA": 0.7, "kappa": 0.6, "per_class": {"a": 1.0}},
            {"OA": 0.9, "AA": 0.9, "kappa": 0.8, "per_class": {"a": None}}]
    s = summarize_runs(runs, TASK.summary_keys)
    assert s["runs"] == 2
    assert s["OA"]["mean"] == pytest.approx(0.85)
    assert s["OA"]["std"] == pytest.approx(np.std([0.8, 0.9], ddof=1))
    assert s["per_class"]["a"] == {"mean": 1.0, "std": 0.0}


def _tiny(padding: str, patch: int, pad: str = "reflect", name: str = "cnn", refine: bool = False) -> tuple[HSINet, Config]:
    channels = [3, 4, 4] if padding == "valid" else [3, 4]
    cfg = Config(
        data=DataConfig(pad=pad),
        model=ModelConfig(name=name, patch=patch, band_groups=2, branch_channels=channels,
                          branch_spectral_kernels=[3] * len(channels), branch_padding=padding, feature_dim=6,
                          pairwise_hidden=5, refine=refine, refine_reduced_dim=2, refine_widths=[4, 4]),
        eval=EvalConfig(chunk_pixels=7, tile_pixels=20),  # chunks/tiles that do not divide the scene
    )
    torch.manual_seed(0)
    net = hsi_train.build_model(cfg, 6, 4)
    # non-trivial BN statistics so eval-mode normalisation matters
    for m in net.modules():
        if isinstance(m, torch.nn.BatchNorm3d):
            m.running_mean.uniform_(-0.5, 0.5)
            m.running_var.uniform_(0.5, 2.0)
    return net.eval(), cfg


def _centre_unary(net: HSINet, padded: torch.Tensor, cfg: Config) -> None:
    """Random-init features barely vary between pixels: centre the unary head on the scene's mean feature
    so different pixels get different classes and the comparison below is not vacuous."""
    f = hsi_eval.node_features(net, padded, cfg.eval)
    with torch.no_grad():
        lin = net.potentials.unary.linear
        lin.weight.copy_(torch.randn(lin.weight.shape, generator=torch.Generator().manual_seed(2)))
        lin.bias.copy_(-lin.weight @ f.mean((0, 1)))


@pytest.mark.parametrize("padding,patch", [("same", 5), ("valid", 7)])
def test_tile_wise_prediction_equals_per_pixel_patch_loop(padding, patch):
    net, cfg = _tiny(padding, patch)
    g = torch.Generator().manual_seed(1)
    cube = torch.randn(6, 9, 11, generator=g) * 2 + torch.linspace(-3, 3, 11)  # structure across the scene
    padded = hsi_train.padded_cube(cube, cfg)
    _centre_unary(net, padded, cfg)
    probs = hsi_eval.scene_probabilities(net, padded, cfg)["final"]
    dense = probs.argmax(-1)
    loop = torch.empty(9, 11, dtype=torch.long)
    with torch.no_grad():
        for y in range(9):
            for x in range(11):
                unary = net(padded[None, :, y : y + patch, x : x + patch])
                loop[y, x] = unary.argmin(-1)[0]
    assert torch.equal(dense, loop)
    assert len(torch.unique(loop)) > 1  # the check is not vacuous


def test_unpadded_grid_leaves_border_unpredicted():
    net, cfg = _tiny("same", 5, pad="none")
    cube = torch.rand(6, 9, 11)
    padded = hsi_train.padded_cube(cube, cfg)
    probs = hsi_eval.scene_probabilities(net, padded, cfg)["final"]
    assert probs.shape[:2] == (5, 7)
    full = hsi_eval.to_image_grid(probs.argmax(-1), (9, 11), hsi_train.grid_offset(cfg))
    assert (full[:2] == -1).all() and (full[:, -2:] == -1).all() and (full[2:-2, 2:-2] >= 0).all()


def test_crf_and_refinement_stages_in_dense_prediction():
    net, cfg = _tiny("same", 3, name="crf", refine=True)
    cube = torch.rand(6, 10, 10)
    out = hsi_eval.scene_probabilities(net, hsi_train.padded_cube(cube, cfg), cfg)
    assert set(out) == {"cnn", "crf", "refined", "final"}
    for v in out.values():
        assert v.shape == (10, 10, 4)
        torch.testing.assert_close(v.sum(-1), torch.ones(10, 10))
    assert not torch.allclose(out["cnn"], out["crf"])


def test_piecewise_step_pairs_by_hand():
    train_map = torch.full((4, 5), -1)
    train_map[1, 1] = 0
    train_map[1, 2] = 1  # right neighbour of (1, 1)
    train_map[2, 2] = 2  # diagonal neighbour of (1, 1), below (1, 2)
    train_map[3, 4] = 1  # isolated
    step = hsi_train.PiecewiseStep(torch.zeros(2, 6, 7), train_map, patch=3, offset=0, radius=1)
    assert len(step) == 4
    n_idx, q = step.pairs(step.coords)
    pairs = {(tuple(step.coords[i].tolist()), tuple(qq.tolist())) for i, qq in zip(n_idx, q, strict=True)}
    assert pairs == {((1, 1), (1, 2)), ((1, 1), (2, 2)), ((1, 2), (1, 1)), ((1, 2), (2, 2)),
                     ((2, 2), (1, 1)), ((2, 2), (1, 2))}
    assert step.count_pairs() == 6


def test_piecewise_step_losses_and_gradients():
    net, cfg = _tiny("same", 3, name="crf")
    net.train()
    train_map = torch.randint(-1, 4, (8, 8))
    cube = torch.rand(6, 8, 8)
    step = hsi_train.PiecewiseStep(hsi_train.padded_cube(cube, cfg), train_map, 3, 0, 1)
    out = step(net.potentials, torch.arange(len(step)), 0)
    assert set(out) == {"unary", "pairwise", "loss"}
    torch.testing.assert_close(out["loss"], out["unary"] + out["pairwise"])
    out["loss"].backward()
    assert net.potentials.pairwise.out.weight.grad.abs().sum() > 0
    assert net.potentials.features.branches[1].layers[0].weight.grad.abs().sum() > 0


def test_refinement_in_row_bands_equals_whole_scene(monkeypatch):
    """Refinement band by band (halo of context, bands on the pooling grid) = the whole scene in one call."""
    net, cfg = _tiny("same", 3, refine=True)  # the CNN map: varied enough for a non-trivial label map
    for m in net.refine.modules():  # non-trivial BN statistics in the refinement too
        if isinstance(m, torch.nn.BatchNorm2d):
            m.running_mean.uniform_(-0.5, 0.5)
            m.running_var.uniform_(0.5, 2.0)
    g = torch.Generator().manual_seed(3)
    h, w = 45, 10  # 45 rows: not a multiple of 4, so the last band is padded like the scene
    q = torch.softmax(torch.randn(h, w, 4, generator=g) * 3, dim=-1)
    f = torch.randn(h, w, 6, generator=g)
    with torch.no_grad():
        whole = net.refine(q.permute(2, 0, 1)[None], f.permute(2, 0, 1)[None])[0]
    tiled = hsi_eval.refine_logits(net.refine, q, f, tile_pixels=4 * w)  # 12 bands of 4 rows
    assert len(hsi_eval.row_bands(h, w, 4 * w, net.refine.stride)) > 1
    torch.testing.assert_close(tiled, whole, rtol=1e-5, atol=1e-5)
    # the halo is what makes it exact: without it the bands' borders differ
    monkeypatch.setattr(type(net.refine), "halo", property(lambda self: 0))
    assert not torch.allclose(hsi_eval.refine_logits(net.refine, q, f, tile_pixels=4 * w), whole, atol=1e-3)
    monkeypatch.undo()

    cube = torch.randn(6, h, w, generator=g) * 2 + torch.linspace(-3, 3, w)
    padded = hsi_train.padded_cube(cube, cfg)
    _centre_unary(net, padded, cfg)
    cfg.eval.tile_pixels = h * w  # one band: the whole scene
    ref = hsi_eval.scene_probabilities(net, padded, cfg)
    with torch.no_grad():  # centre the refinement's correction too, so the final map is not one class
        net.refine.classifier.bias -= (ref["refined"].log() - ref["cnn"].log()).mean((0, 1))
    ref = hsi_eval.scene_probabilities(net, padded, cfg)
    cfg.eval.tile_pixels = 20  # bands of 4 rows
    one = hsi_eval.scene_probabilities(net, padded, cfg)
    torch.testing.assert_close(one["refined"], ref["refined"], rtol=1e-5, atol=1e-5)
    assert torch.equal(one["final"].argmax(-1), ref["final"].argmax(-1))
    assert len(torch.unique(ref["final"].argmax(-1))) > 1  # the check is not vacuous
