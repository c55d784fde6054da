"""contrast (MetAug) replayed against the figures of tools/parity/contrast.py (jiangmengli/metaug at the commit
below): the seeded inputs through zsk alone, every output within the harness's tolerance of the official one
(full-size AlexNet-half forward and fast-weight forward, OUCL, L_MI, memory bank, one whole training iteration
with the second-order meta step, the lr schedules, the linear classifier and the Lab transform)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
from common import assert_close as close  # noqa: E402  (tools/parity, see conftest.py)
from common import load_figures  # noqa: E402
from contrast import (  # noqa: E402
    CASE_TOL,
    ITERATION_CASES,
    forward_input,
    full_encoder,
    iteration_inputs,
    tiny_config,
    zsk_iteration,
)
from torch.func import functional_call

from zsk.tasks.contrast.data import to_lab_tensor
from zsk.tasks.contrast.losses import margin_injection_loss, oucl_loss
from zsk.tasks.contrast.model import VIEWS

OFFICIAL_COMMIT = "33a9fd04e6d8caaf13aa54bb92d0639ee1e45e67"  # jiangmengli/metaug
FIG = Path(__file__).parent / "contrast"


@pytest.fixture(scope="module")
def figures():  # noqa: ANN201
    return load_figures(FIG, "contrast")


def test_figures_name_the_official_commit(figures) -> None:  # noqa: ANN001
    _, meta = figures
    assert meta["official_commit"] == OFFICIAL_COMMIT
    assert all(r["verdict"] != "DIFFERENT" for r in meta["rows"])


def test_full_size_encoder_and_virtual_encoder(figures) -> None:  # noqa: ANN001
    f, meta = figures
    seed = meta["seed"]
    ours = full_encoder(seed)
    x = forward_input(seed)
    for train, tag in ((True, "train-mode BN"), (False, "eval-mode BN")):
        ours.train(train)
        with torch.no_grad():
            for layer in (5, 6, 8):  # the order of the harness (train-mode passes update the BN statistics)
                for v, out in zip(VIEWS, ours(x, layer), strict=True):
                    close(out, f[f"encoder {v} layer {layer} ({tag})"])
    ours.train()
    g = torch.Generator().manual_seed(seed + 2)
    fast = {k: p.detach() + 0.01 * torch.randn(p.shape, generator=g) for k, p in ours.named_parameters()}
    with torch.no_grad():
        out = functional_call(ours, {**fast, **{k: b.clone() for k, b in ours.named_buffers()}}, (x, 8))
    for v, o in zip(VIEWS, out, strict=True):
        close(o, f[f"virtual encoder {v} (fast weights)"])


def test_oucl_and_margin_injection(figures) -> None:  # noqa: ANN001
    f, _ = figures
    scores = [torch.from_numpy(s).squeeze(2) for s in f["in/scores"]]
    aug = [torch.from_numpy(s).squeeze(2) for s in f["in/aug_scores"]]
    close(oucl_loss(scores), f["OUCL (defaults)"])
    close(oucl_loss(scores, margins=True), f["OUCL (margins m=0.25)"])
    close(oucl_loss(scores, gamma=8.0), f["OUCL (gamma 8)"])
    for mode in ("large", "small", "mean"):
        close(margin_injection_loss(aug, scores, mode), f[f"margin injection L_MI ({mode})"])


@pytest.mark.parametrize("case", list(ITERATION_CASES))
def test_one_training_iteration_with_the_meta_step(figures, case: str) -> None:  # noqa: ANN001
    f, meta = figures
    seed = meta["seed"]
    x, y, index, draws = iteration_inputs(seed)
    assert float(x.double().sum()) == pytest.approx(float(f[f"in/{case}/x_sum"]), abs=1e-6)
    assert np.array_equal(torch.stack(draws).numpy(), f[f"in/{case}/draws"])
    loss, net = zsk_iteration(tiny_config(ITERATION_CASES[case]), seed, x, y, index, draws)
    close(loss, f[f"iteration [{case}]: encoder-step loss"])
    state = net.state_dict()
    prefix = f"out/{case}/"
    keys = [k[len(prefix):] for k in f if k.startswith(prefix)]
    assert any(k.startswith("generators.") for k in keys) and any(k.startswith("memory.") for k in keys)
    for k in keys:
        close(state[k].double(), f[prefix + k], tol=CASE_TOL[case])


def test_lab_transform(figures) -> None:  # noqa: ANN001
    f, _ = figures
    close(to_lab_tensor(f["in/lab_rgb"]), f["RGB -> normalised Lab (skimage rgb2lab)"])
