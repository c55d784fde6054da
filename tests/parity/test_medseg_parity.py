"""DTC (medseg) replayed against the official figures of Luoxd1996/DTC (tools/parity/medseg.py --save):
the same seeded inputs and weights through zsk alone; every output within 1e-5 of the official code's."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
from common import assert_close as close  # noqa: E402  (tools/parity, see conftest.py)
from common import load_figures  # noqa: E402

from zsk.core.trainer import build_optimizer, lr_factor
from zsk.metrics.medical import binary_case_metrics
from zsk.tasks.medseg.config import TrainConfig
from zsk.tasks.medseg.data import level_set_targets
from zsk.tasks.medseg.evaluate import sliding_window_scores
from zsk.tasks.medseg.losses import LossConfig, consistency_weight, dtc_loss
from zsk.tasks.medseg.model import DualTaskVNet

OFFICIAL_COMMIT = "2525b9ccba84d7872fe22328b8b3298e7eafdc12"  # Luoxd1996/DTC
FIG = Path(__file__).parent / "medseg"
TOL = 1e-5


@pytest.fixture(scope="module")
def figures():
    return load_figures(FIG, "medseg")


def model_from(weights: np.ndarray, width: int) -> DualTaskVNet:
    model = DualTaskVNet(num_classes=2, n_filters=width)
    state, offset = model.state_dict(), 0
    for name, value in state.items():
        if value.dtype.is_floating_point:
            state[name] = torch.from_numpy(weights[offset:offset + value.numel()].copy()).reshape(value.shape)
            offset += value.numel()
    assert offset == weights.size
    model.load_state_dict(state)
    return model


def test_figures_name_the_official_commit(figures):
    _, meta = figures
    assert meta["official_commit"] == OFFICIAL_COMMIT
    assert all(r["verdict"] != "DIFFERENT" for r in meta["rows"])


def test_training_step_matches_official(figures):
    f, meta = figures
    seed = meta["seed"]
    model = model_from(f["train/weights"], meta["width"]).train()
    x, label = torch.from_numpy(f["train/input"]), torch.from_numpy(f["train/label"].astype(np.int64))
    torch.manual_seed(seed + 3)  # the dropout masks of the official forward
    level_set, seg = model(x)
    close(level_set, f["forward level-set head (train, dropout)"])
    close(seg, f["forward seg head (train, dropout)"])
    sdf = np.zeros((4, 1, *x.shape[2:]), np.float32)
    for b in range(2):
        sdf[b] = level_set_targets(label[b].numpy(), 2)
    close(sdf[:2, 0], f["SDF targets (compute_sdf)"])
    terms = dtc_loss(level_set, seg, label, torch.from_numpy(sdf), torch.tensor([True, True, False, False]),
                     meta["iteration"], 2, LossConfig())
    for key, name in [("loss_dice", "loss: Dice (labelled)"), ("loss_lsf", "loss: level-set MSE"),
                      ("loss_ce", "loss: BCE (logged, not added)"), ("loss_dtc", "loss: dual-task consistency"),
                      ("dtc_weight", f"consistency weight at iteration {meta['iteration']}"), ("loss", "loss: total")]:
        close(terms[key], f[name])
    opt = build_optimizer([{"params": list(model.parameters())}],
                          TrainConfig(optimizer="sgd", lr=0.01, momentum=0.9, weight_decay=1e-4))
    opt.zero_grad()
    terms["loss"].backward()
    close(torch.cat([p.grad.flatten() for p in model.parameters()]), f["SGD step: gradients (all parameters)"])
    opt.step()
    close(torch.cat([p.detach().flatten() for p in model.parameters()])[::8],
          f["SGD step: weights after the step (every 8th)"])


def test_schedule_and_ramp_match_official(figures):
    f, _ = figures
    cfg = TrainConfig(lr=0.01, schedule="step", milestones=[2500, 5000], gamma=0.1, steps=6000)
    close([cfg.lr * lr_factor(s, 6000, cfg) for s in range(6000)], f["LR schedule, 6,000 iterations"])
    close([consistency_weight(i, LossConfig()) for i in range(6000)], f["consistency ramp, 6,000 iterations"])


def test_sliding_window_matches_test_single_case(figures):
    f, meta = figures
    model = model_from(f["train/weights"], meta["width"]).eval()
    scores = sliding_window_scores(model, torch.from_numpy(f["window/image"]), meta["window"], meta["stride"], 2)
    close(scores, f["sliding window: averaged scores"])
    np.testing.assert_array_equal((scores[0] > 0.5).numpy(), f["sliding window: label map (> 0.5)"].astype(bool))


def test_metrics_match_medpy(figures):
    f, _ = figures
    m = f["metrics/masks"]
    rows = [binary_case_metrics(p, g) for p, g in [(m[0], m[1]), (m[2], m[3]), (m[4], m[5]), (m[1], m[1])]]
    for key, name in [("dice", "Dice (medpy dc)"), ("jaccard", "Jaccard (medpy jc)"), ("hd95", "HD95 (medpy hd95)"),
                      ("asd", "ASD (medpy asd)")]:
        close([r[key] for r in rows], f[f"metric: {name}"])
