"""Sliding-window inference: window placement, stitching, equality with a single pass, batching, LCC."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from torch import nn

from zsk.models.inferers import window_starts
from zsk.tasks.medseg.evaluate import largest_connected_component, scores_to_labels, sliding_window_scores
from zsk.tasks.medseg.model import DualTaskVNet


def assert_close(a, b, atol=1e-6, rtol=1e-5):
    """Element-wise closeness via numpy (torch.testing.assert_close imports torch.distributed, slow)."""
    np.testing.assert_allclose(np.asarray(a.detach()), np.asarray(b.detach()), atol=atol, rtol=rtol)

def test_window_starts_la_geometry():
    # LA: 180 voxels, window 112, stride 18 -> ceil(68/18) + 1 = 5 windows, the last clamped to 68
    assert window_starts(180, 112, 18) == [0, 18, 36, 54, 68]
    assert window_starts(88, 80, 4) == [0, 4, 8]
    assert window_starts(112, 112, 18) == [0]
    assert window_starts(50, 112, 18) == [0]


class PointwiseModel(nn.Module):
    """seg logit = a·x + b per voxel: the stitched result must equal the pointwise map everywhere."""

    def __init__(self) -> None:
        super().__init__()
        self.conv = nn.Conv3d(1, 1, 1)
        nn.init.constant_(self.conv.weight, 2.0)
        nn.init.constant_(self.conv.bias, -0.5)

    def forward(self, x):
        y = self.conv(x)
        return torch.tanh(y), y


def test_overlapping_windows_average_to_the_pointwise_map():
    torch.manual_seed(0)
    image = torch.randn(37, 29, 21)
    scores = sliding_window_scores(PointwiseModel(), image, (16, 16, 16), (5, 7, 3), num_classes=2, window_batch=3)
    assert_close(scores[0], torch.sigmoid(2.0 * image - 0.5))


def test_single_window_equals_single_pass():
    torch.manual_seed(0)
    model = DualTaskVNet(2, n_filters=2).eval()
    image = torch.randn(32, 16, 16)
    scores = sliding_window_scores(model, image, (32, 16, 16), (18, 18, 4), 2)
    with torch.no_grad():
        direct = torch.sigmoid(model(image[None, None])[1][0])
    assert_close(scores, direct)
    # a volume smaller than the window is zero-padded symmetrically, predicted once, and cropped back
    small = torch.randn(28, 13, 16)
    scores = sliding_window_scores(model, small, (32, 16, 16), (18, 18, 4), 2)
    padded = torch.nn.functional.pad(small, (0, 0, 1, 2, 2, 2))
    with torch.no_grad():
        direct = torch.sigmoid(model(padded[None, None])[1][0])[:, 2:30, 1:14, :]
    assert scores.shape == (1, 28, 13, 16)
    assert_close(scores, direct)


def test_batched_windows_match_one_at_a_time_multiclass():
    torch.manual_seed(0)
    model = DualTaskVNet(3, n_filters=2).eval()
    image = torch.randn(40, 24, 20)
    one = sliding_window_scores(model, image, (16, 16, 16), (8, 8, 4), 3, window_batch=1)
    many = sliding_window_scores(model, image, (16, 16, 16), (8, 8, 4), 3, window_batch=7)
    assert one.shape == (3, 40, 24, 20)
    assert_close(one, many, atol=1e-5, rtol=1e-5)
    assert_close(one.sum(0), torch.ones(40, 24, 20))


def test_largest_component_and_thresholding():
    m = np.zeros((10, 10, 10), dtype=bool)
    m[0:4, 0:4, 0:4] = True  # 64 voxels
    m[7:9, 7:9, 7:9] = True  # 8 voxels
    m[4, 4, 4] = True  # touches the big block only through a corner: 26-connected
    out = largest_connected_component(m)
    assert out.sum() == 65 and not out[7:9, 7:9, 7:9].any()
    assert not largest_connected_component(np.zeros((3, 3, 3), bool)).any()
    scores = torch.from_numpy(m.astype(np.float32) * 0.9)[None]
    assert scores_to_labels(scores, 2, 0.5, largest_component=False).sum() == 73
    assert scores_to_labels(scores, 2, 0.5, largest_component=True).sum() == 65
    assert scores_to_labels(scores, 2, 0.95, largest_component=False).sum() == 0
    multi = torch.zeros(3, 10, 10, 10)
    multi[0] = 0.5
    multi[1][torch.from_numpy(m)] = 0.9
    multi[2, 9, 0, 0] = 0.9
    lab = scores_to_labels(multi, 3, largest_component=True)
    assert (lab == 1).sum() == 65 and (lab == 2).sum() == 1


@pytest.mark.parametrize("window_batch", [1, 4])
def test_stitched_scores_are_probabilities(window_batch):
    model = DualTaskVNet(2, n_filters=2).eval()
    scores = sliding_window_scores(model, torch.randn(20, 20, 20), (16, 16, 16), (4, 4, 4), 2, window_batch)
    assert scores.shape == (1, 20, 20, 20) and 0 <= scores.min() and scores.max() <= 1
