"""Shapes and formulas of the hsi model: band groups, branches, pairwise head, mean field, refinement."""

from __future__ import annotations

import math

import pytest
import torch
from test_hsi_fidelity import _naive_mean_field  # the loop reference, with the paper's incoming term optional

from zsk.tasks.hsi import losses
from zsk.tasks.hsi.model import (
    CRFGrid,
    DeconvRefinement,
    HSINet,
    PairwiseHead,
    SpectralGroupFeatures,
    band_groups,
    mean_field,
    neighbour_offsets,
)


def test_band_groups_contiguous_near_equal():
    assert band_groups(200, 4) == [(0, 50), (50, 100), (100, 150), (150, 200)]
    assert [b - a for a, b in band_groups(103, 4)] == [26, 26, 26, 25]  # spec: Pavia University
    with pytest.raises(ValueError):
        band_groups(3, 4)


def test_neighbour_offsets():
    assert len(neighbour_offsets(1)) == 8
    assert len(neighbour_offsets(2)) == 24
    assert (0, 0) not in neighbour_offsets(1)
    assert set(neighbour_offsets(1)) == {(dy, dx) for dy in (-1, 0, 1) for dx in (-1, 0, 1)} - {(0, 0)}


def test_features_shape_and_groups_see_only_their_bands():
    torch.manual_seed(0)
    feats = SpectralGroupFeatures(12, patch=5, groups=3, channels=(2, 3), spectral_kernels=(3, 3), feature_dim=8).eval()
    x = torch.randn(4, 12, 5, 5)
    assert feats(x).shape == (4, 8)
    # changing bands of group 2 must not change group 1's branch output
    branch0 = feats.branches[0]
    y = x.clone()
    y[:, 8:] += 1.0
    torch.testing.assert_close(branch0(x[:, None, 0:4]), branch0(y[:, None, 0:4]))
    assert not torch.allclose(feats(x), feats(y))


def test_valid_branches_are_fully_convolutional():
    """forward_dense on a tile equals the per-patch forward at every pixel."""
    torch.manual_seed(0)
    feats = SpectralGroupFeatures(6, patch=7, groups=2, channels=(2, 3, 4), spectral_kernels=(3, 3, 3),
                                  feature_dim=5, spatial_padding="valid").eval()
    tile = torch.randn(6, 9 + 6, 8 + 6)
    dense = feats.forward_dense(tile)  # (9, 8, 5)
    assert dense.shape == (9, 8, 5)
    for y, x in [(0, 0), (4, 3), (8, 7), (2, 6)]:
        single = feats(tile[None, :, y : y + 7, x : x + 7])[0]
        torch.testing.assert_close(dense[y, x], single, atol=1e-5, rtol=1e-5)


def test_valid_padding_needs_a_large_enough_patch():
    with pytest.raises(ValueError, match="too small"):
        SpectralGroupFeatures(6, patch=5, groups=2, channels=(2, 3, 4), spectral_kernels=(3, 3, 3),
                              spatial_padding="valid")


def test_pairwise_head_is_an_mlp_on_the_concatenated_pair_feature():
    torch.manual_seed(0)
    head = PairwiseHead(feature_dim=4, num_classes=3, hidden=6)
    fp, fq = torch.randn(5, 4), torch.randn(5, 4)
    # independent formula: Linear(cat) -> ReLU -> Linear, reshaped to K x K (row = y_p, column = y_q)
    h = torch.relu(torch.cat([fp, fq], 1) @ head.hidden.weight.T + head.hidden.bias)
    expected = (h @ head.out.weight.T + head.out.bias).reshape(5, 3, 3)
    torch.testing.assert_close(head(fp, fq), expected)
    # order matters: V_pq != V_qp in general
    assert not torch.allclose(head(fp, fq), head(fq, fp))


@pytest.mark.parametrize("radius", [1, 2])
def test_mean_field_matches_naive_loops(radius):
    torch.manual_seed(0)
    h, w, k, d = 4, 5, 3, 6
    head = PairwiseHead(d, k, hidden=7)
    features = torch.randn(h, w, d)
    unary = torch.randn(h, w, k)
    # these loops carry V_pq Q_q only (model.mean_field_update: outgoing); the default "full" update, which adds
    # V_qp^T Q_q, is checked against its own loops in test_hsi_fidelity.py
    grid = CRFGrid(head, features, radius, chunk_pixels=w * 2, update="outgoing")  # 2 rows per chunk: exercises chunking

    def pair_energy(y, x, ny, nx):
        return head(features[y, x][None], features[ny, nx][None])[0]

    with torch.no_grad():
        fast = mean_field(unary, grid.message, iters=3)
        slow = _naive_mean_field(unary, pair_energy, h, w, radius, iters=3, incoming=False)
    torch.testing.assert_close(fast, slow, atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(fast.sum(-1), torch.ones(h, w))


def test_mean_field_hand_example():
    """Two pixels, two labels, a Potts-like pairwise energy: Q by hand after one update."""
    unary = torch.tensor([[[0.0, 1.0], [1.0, 0.0]]])  # (1, 2, K=2): pixel 0 prefers 0, pixel 1 prefers 1
    v = torch.tensor([[0.0, 2.0], [2.0, 0.0]])  # disagreeing costs 2

    def message(q):
        out = torch.zeros_like(q)
        out[0, 0] = v @ q[0, 1]
        out[0, 1] = v @ q[0, 0]
        return out

    q0 = torch.softmax(-unary, -1)
    p = 1 / (1 + math.e**-1)  # softmax([0, -1])[0]
    torch.testing.assert_close(q0[0, 0], torch.tensor([p, 1 - p]))
    q1 = mean_field(unary, message, iters=1)
    # pixel 0: energies 0 + 2 * Q_1(1) and 1 + 2 * Q_1(0), with Q_1 = (1 - p, p)
    e = torch.tensor([0 + 2 * p, 1 + 2 * (1 - p)])
    torch.testing.assert_close(q1[0, 0], torch.softmax(-e, -1))
    assert mean_field(unary, message, iters=0).equal(q0)


@pytest.mark.parametrize("size", [(8, 8), (9, 13), (5, 6)])
@pytest.mark.parametrize("residual", [True, False])
def test_refinement_shapes(size, residual):
    torch.manual_seed(0)
    net = DeconvRefinement(num_classes=4, feature_dim=6, reduced_dim=3, widths=(5, 7), residual=residual)
    q = torch.softmax(torch.randn(1, 4, *size), 1)
    out = net(q, torch.randn(1, 6, *size))
    assert out.shape == (1, 4, *size)
    out.sum().backward()
    assert net.enc2[0].weight.grad is not None


def test_refinement_residual_starts_from_log_q():
    net = DeconvRefinement(num_classes=3, feature_dim=2, reduced_dim=0, widths=(4, 4), residual=True)
    torch.nn.init.zeros_(net.classifier.weight)
    torch.nn.init.zeros_(net.classifier.bias)
    q = torch.softmax(torch.randn(1, 3, 6, 6), 1)
    torch.testing.assert_close(net(q, torch.zeros(1, 2, 6, 6)), torch.log(q))


def test_hsinet_parts():
    cnn = HSINet("cnn", 8, 3, patch=3, band_groups=2, branch_channels=(2,), branch_spectral_kernels=(3,),
                 feature_dim=4, refine=False)
    crf = HSINet("crf", 8, 3, patch=3, band_groups=2, branch_channels=(2,), branch_spectral_kernels=(3,),
                 feature_dim=4, pairwise_hidden=5)
    assert cnn.potentials.pairwise is None and cnn.refine is None
    assert crf.potentials.pairwise is not None and crf.refine is not None
    x = torch.randn(6, 8, 3, 3)
    assert cnn(x).shape == (6, 3)
    unary, pairwise = crf.potentials(x, torch.tensor([0, 1]), torch.tensor([0, 0, 1]), torch.tensor([2, 3, 4]))
    assert unary.shape == (2, 3) and pairwise.shape == (3, 3, 3)
    with pytest.raises(ValueError):
        HSINet("svm", 8, 3)


def test_losses_by_hand():
    unary = torch.tensor([[1.0, 2.0, 0.0]])  # energies: softmax(-U) = softmax([-1, -2, 0])
    z = math.exp(-1) + math.exp(-2) + 1.0
    torch.testing.assert_close(losses.unary_loss(unary, torch.tensor([2])), torch.tensor(-math.log(1.0 / z)))
    v = torch.zeros(1, 2, 2)
    v[0, 1, 0] = -math.log(3.0)  # joint (y_p=1, y_q=0) three times as likely as each other pair
    expected = -math.log(3.0 / 6.0)
    torch.testing.assert_close(losses.pairwise_loss(v, torch.tensor([1]), torch.tensor([0])), torch.tensor(expected))
    logits = torch.zeros(1, 2, 2, 2)
    logits[0, 0, 0, 0] = 5.0
    labels = torch.tensor([[[0, 1], [1, 1]]])
    mask = torch.tensor([[[True, False], [False, False]]])
    torch.testing.assert_close(losses.refinement_loss(logits, labels, mask),
                               torch.tensor(-math.log(math.exp(5) / (math.exp(5) + 1))))
