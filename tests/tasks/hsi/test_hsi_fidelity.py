"""Issue 11 (hsi): an untrained pairwise head is not used at inference, the ENVI reader checks the data file
against its header and honours `data ignore value`, the piecewise loss sums (Alam et al. 2019 / Lin et al.
2016) and mean field carries the messages of both directions of every ordered pair."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from zsk.core.errors import ZskError
from zsk.data import cubes
from zsk.tasks.hsi import data as hsi_data
from zsk.tasks.hsi import evaluate as hsi_eval
from zsk.tasks.hsi import losses
from zsk.tasks.hsi import train as hsi_train
from zsk.tasks.hsi.config import Config, ModelConfig, TrainConfig
from zsk.tasks.hsi.model import CRFGrid, HSINet, PairwiseHead, mean_field


@pytest.fixture
def warned(monkeypatch) -> list[str]:
    """The messages passed to `warn` by the modules under test."""
    seen: list[str] = []
    for module in (hsi_eval, cubes, hsi_data):
        monkeypatch.setattr(module, "warn", seen.append, raising=False)
    return seen

# ----------------------------------------------------------------------------------------------
# An untrained pairwise head never reaches inference
# ----------------------------------------------------------------------------------------------


def _crf(**kw) -> HSINet:
    torch.manual_seed(0)
    return HSINet("crf", 6, 3, patch=3, band_groups=2, branch_channels=(2,), branch_spectral_kernels=(3,),
                  feature_dim=4, pairwise_hidden=5, refine=False, **kw).eval()


def test_untrained_pairwise_head_is_not_used_at_inference(warned):
    net = _crf()
    features = torch.randn(5, 6, 4)
    with torch.no_grad():
        net.potentials.pairwise.out.bias.add_(torch.randn(9) * 5)  # a random head changes the map
    used = hsi_eval.crf_marginals(net, features, 1, 5, 64)
    assert not torch.allclose(used["crf"], used["cnn"])
    net.potentials.mark_pairwise_untrained()
    skipped = hsi_eval.crf_marginals(net, features, 1, 5, 64)
    assert any("pairwise head was never trained" in m for m in warned)
    torch.testing.assert_close(skipped["crf"], skipped["cnn"])  # the unary marginals


def test_pairwise_trained_flag_travels_in_the_state_dict_and_old_checkpoints_load():
    net = _crf()
    net.potentials.mark_pairwise_untrained()
    state = net.state_dict()
    assert "potentials.pairwise_trained" in state and not bool(state["potentials.pairwise_trained"])
    fresh = _crf()
    fresh.load_state_dict(state)
    assert not fresh.potentials.is_pairwise_trained
    old = {k: v for k, v in state.items() if k != "potentials.pairwise_trained"}  # written before the flag
    again = _crf()
    again.load_state_dict(old)
    assert again.potentials.is_pairwise_trained


# ----------------------------------------------------------------------------------------------
# Mean field: both directions of each ordered pair (the paper's energy E = Σ U + Σ_(p,q) V_pq)
# ----------------------------------------------------------------------------------------------


def _naive_mean_field(unary, pair_energy, height, width, radius, iters, incoming: bool):
    """Q_p(k) ∝ exp(-U_p(k) - Σ_q Σ_l V_pq(k, l) Q_q(l) [- Σ_q Σ_l V_qp(l, k) Q_q(l)]) with explicit loops."""
    k = unary.shape[-1]
    q = torch.softmax(-unary, -1)
    for _ in range(iters):
        new = torch.empty_like(q)
        for y in range(height):
            for x in range(width):
                energy = unary[y, x].clone()
                for dy in range(-radius, radius + 1):
                    for dx in range(-radius, radius + 1):
                        ny, nx = y + dy, x + dx
                        if (dy, dx) == (0, 0) or not (0 <= ny < height and 0 <= nx < width):
                            continue
                        v_pq = pair_energy(y, x, ny, nx)
                        v_qp = pair_energy(ny, nx, y, x)
                        for a in range(k):
                            energy[a] += sum(v_pq[a, b] * q[ny, nx, b] for b in range(k))
                            if incoming:
                                energy[a] += sum(v_qp[b, a] * q[ny, nx, b] for b in range(k))
                new[y, x] = torch.softmax(-energy, -1)
        q = new
    return q


@pytest.mark.parametrize("update,radius", [("full", 1), ("full", 2), ("outgoing", 1)])
def test_mean_field_update_matches_naive_loops(update, radius):
    torch.manual_seed(0)
    h, w, k, d = 4, 5, 3, 6
    head = PairwiseHead(d, k, hidden=7)
    features, unary = torch.randn(h, w, d), torch.randn(h, w, k)
    grid = CRFGrid(head, features, radius, chunk_pixels=w * 2, update=update)  # 2 rows per chunk

    def pair_energy(y, x, ny, nx):
        return head(features[y, x][None], features[ny, nx][None])[0]

    with torch.no_grad():
        fast = mean_field(unary, grid.message, iters=2)
        slow = _naive_mean_field(unary, pair_energy, h, w, radius, iters=2, incoming=update == "full")
    torch.testing.assert_close(fast, slow, atol=1e-5, rtol=1e-5)


def test_mean_field_full_is_the_default_and_differs_from_outgoing():
    assert ModelConfig().mean_field_update == "full"
    torch.manual_seed(1)
    head = PairwiseHead(4, 3, hidden=5)
    features, unary = torch.randn(3, 3, 4), torch.randn(3, 3, 3)
    with torch.no_grad():
        full = mean_field(unary, CRFGrid(head, features, 1).message, 1)
        out = mean_field(unary, CRFGrid(head, features, 1, update="outgoing").message, 1)
    assert not torch.allclose(full, out)


# ----------------------------------------------------------------------------------------------
# Piecewise loss: a sum over nodes and pairs (Σ CE(unary) + Σ CE(pairwise))
# ----------------------------------------------------------------------------------------------


def test_piecewise_losses_sum_by_default():
    assert TrainConfig().loss_reduction == "sum"
    u = torch.tensor([[1.0, 2.0, 0.0], [0.0, 0.0, 0.0]])
    y = torch.tensor([2, 1])
    z = math.exp(-1) + math.exp(-2) + 1.0
    expected = -math.log(1.0 / z) + math.log(3.0)
    torch.testing.assert_close(losses.unary_loss(u, y, reduction="sum"), torch.tensor(expected))
    torch.testing.assert_close(losses.unary_loss(u, y, reduction="mean"), torch.tensor(expected / 2))
    v = torch.zeros(3, 2, 2)
    yp, yq = torch.tensor([0, 1, 1]), torch.tensor([0, 0, 1])
    torch.testing.assert_close(losses.pairwise_loss(v, yp, yq, reduction="sum"), torch.tensor(3 * math.log(4.0)))


def test_piecewise_step_sums_over_nodes_and_pairs():
    cfg = Config(model=ModelConfig(name="crf", patch=3, band_groups=2, branch_channels=[2],
                                   branch_spectral_kernels=[3], feature_dim=4, pairwise_hidden=5, refine=False))
    torch.manual_seed(0)
    net = hsi_train.build_model(cfg, 6, 3).eval()
    train_map = torch.full((5, 5), -1)
    train_map[1:3, 1:4] = torch.tensor([[0, 1, 2], [2, 1, 0]])
    padded = hsi_train.padded_cube(torch.rand(6, 5, 5), cfg)
    summed = hsi_train.PiecewiseStep(padded, train_map, 3, 0, 1)(net.potentials, torch.arange(6), 0)
    meaned = hsi_train.PiecewiseStep(padded, train_map, 3, 0, 1, reduction="mean")(net.potentials, torch.arange(6), 0)
    n_pairs = hsi_train.PiecewiseStep(padded, train_map, 3, 0, 1).count_pairs()
    torch.testing.assert_close(summed["unary"], meaned["unary"] * 6)
    torch.testing.assert_close(summed["pairwise"], meaned["pairwise"] * n_pairs)
    torch.testing.assert_close(summed["loss"], summed["unary"] + summed["pairwise"])


# ----------------------------------------------------------------------------------------------
# ENVI: data file size against the header, `data ignore value`
# ----------------------------------------------------------------------------------------------


def _envi(tmp_path, cube: np.ndarray, name: str = "c", **header: str):
    hdr = cubes.write_envi(tmp_path / f"{name}.hdr", cube, interleave="bsq")
    text = hdr.read_text()
    for key, value in header.items():
        key = key.replace("_", " ")
        lines = [ln for ln in text.splitlines() if not ln.lower().startswith(key)]
        text = "\n".join([*lines, f"{key} = {value}"]) + "\n"
    hdr.write_text(text)
    return hdr


@pytest.mark.parametrize("field,value", [("lines", 5), ("samples", 3), ("lines", 7), ("bands", 2)])
def test_envi_header_that_does_not_fit_the_data_file_is_refused(tmp_path, field, value):
    cube = np.arange(6 * 4 * 3, dtype=np.float32).reshape(6, 4, 3)
    hdr = _envi(tmp_path, cube, **{field: str(value)})
    with pytest.raises(ZskError, match=r"c\.hdr.*bytes"):
        cubes.read_cube(hdr)


def test_envi_header_offset_counts(tmp_path):
    cube = np.arange(6 * 4 * 3, dtype=np.int16).reshape(6, 4, 3)
    hdr = _envi(tmp_path, cube)
    img = tmp_path / "c.img"
    img.write_bytes(b"\0" * 16 + img.read_bytes())
    text = hdr.read_text() + "header offset = 16\n"
    hdr.write_text(text)
    np.testing.assert_array_equal(cubes.read_cube(hdr), cube)


def test_envi_data_ignore_value_is_no_data(tmp_path, warned):
    cube = np.ones((4, 5, 3), dtype=np.float32)
    cube[1, 2] = -9999.0
    cube[3, 0, 1] = -9999.0
    hdr = _envi(tmp_path, cube, data_ignore_value="-9999")
    read = cubes.read_cube(hdr)
    assert any("data ignore value" in m for m in warned)
    assert np.isnan(read[1, 2]).all() and np.isnan(read[3, 0, 1]) and np.isfinite(read[3, 0, [0, 2]]).all()
    assert np.isfinite(read).sum() == cube.size - 4
    # integer cubes become float so the no-data pixels can be NaN
    ints = np.full((3, 3, 2), 7, dtype=np.uint16)
    ints[0, 0] = 0
    hdr = _envi(tmp_path, ints, name="i", data_ignore_value="0")
    read = cubes.read_cube(hdr)
    assert np.isnan(read[0, 0]).all() and read[1, 1, 0] == 7.0
    # in a label map the ignore value means unlabelled (0)
    gt = np.array([[1, 2], [255, 3]], dtype=np.uint8)
    hdr = _envi(tmp_path, gt[..., None], name="g", data_ignore_value="255")
    np.testing.assert_array_equal(cubes.read_labels(hdr), [[1, 2], [0, 3]])


def test_envi_ignore_value_pixels_follow_data_non_finite(tmp_path, warned):
    from zsk.tasks.hsi.config import DataConfig

    cube, labels, _ = hsi_data.synthetic_scene(8, 8, 6, 2, seed=0)
    cube[2, 3] = -9999.0
    _envi(tmp_path, cube, name="scene", data_ignore_value="-9999")
    np.save(tmp_path / "gt.npy", labels)
    cfg = DataConfig(root=str(tmp_path), image="scene.hdr", labels="gt.npy")
    with pytest.raises(ZskError, match="non_finite=zero"):
        hsi_data.load_scene(cfg)
    cfg = DataConfig(root=str(tmp_path), image="scene.hdr", labels="gt.npy", non_finite="zero")
    scene = hsi_data.load_scene(cfg)
    assert scene.labels[2, 3] == 0 and (scene.image[2, 3] == 0).all()
    cube[2, 3] = 0.0
    np.testing.assert_array_equal(scene.image, cube)  # no -9999 left to squash the min-max normalisation
