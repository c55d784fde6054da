"""SATS (css) replayed against the official figures of QIU023/SATS_Continual_Semantic_Seg (tools/parity/css.py
--save): the same weights and seeded 512 x 512 batch through zsk alone; logits, attention maps, PLOP
thresholds, one incremental step's CE / UNKD / L_SATS / total and gradients (with the official reshape and
median quirks selected), and MiB's classifier initialisation within 1e-5 of the official code's."""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import pytest
import torch
from common import assert_close as close  # noqa: E402  (tools/parity, see conftest.py)
from common import load_figures  # noqa: E402
from css import CLASSES, DECODER, MIT, seeded_batch  # noqa: E402  (the harness's own seeded inputs)

from zsk.core.recipe import parse_config
from zsk.tasks.css import increments
from zsk.tasks.css.config import Config
from zsk.tasks.css.data import TrainTransform, eval_transform
from zsk.tasks.css.losses import (
    entropy_histogram,
    entropy_pseudo_labels,
    median_thresholds,
    sats_feature_loss,
    sats_loss,
)
from zsk.tasks.css.model import IncrementalSegFormer, frozen_copy
from zsk.tasks.css.train import OldModelState, make_step_fn

OFFICIAL_COMMIT = "369c10caabb2f47ffa24ee95494d1378afff9613"  # QIU023/SATS_Continual_Semantic_Seg
FIG = Path(__file__).parent / "css"


def _model(flat: np.ndarray) -> IncrementalSegFormer:
    m = IncrementalSegFormer(MIT, CLASSES, drop_path_rate=0.0, decoder_dim=DECODER)
    state, offset = m.state_dict(), 0
    for name, value in state.items():
        state[name] = torch.from_numpy(flat[offset:offset + value.numel()].copy()).reshape(value.shape)
        offset += value.numel()
    assert offset == flat.size
    m.load_state_dict(state)
    return m


@pytest.fixture(scope="module")
def figures():
    return load_figures(FIG, "css")


def test_figures_name_the_official_commit(figures) -> None:  # noqa: ANN001
    _, meta = figures
    assert meta["official_commit"] == OFFICIAL_COMMIT
    assert all(r["verdict"] != "DIFFERENT" for r in meta["rows"])


def test_transform_labels_match_official(figures) -> None:  # noqa: ANN001
    """MiB's validation Resize + CenterCrop and the training RandomResizedCrop (same box) on a 101 x 75 image:
    label maps identical (PIL NEAREST pixel centres, torchvision's center-crop rounding)."""
    f, meta = figures
    rng = np.random.default_rng(meta["seed"])
    img = rng.integers(0, 256, (75, 101, 3), dtype=np.uint8)
    lab = rng.integers(0, 6, (15, 21), dtype=np.uint8).repeat(5, 0).repeat(5, 1)[:75, :101]
    close(eval_transform(img, lab, 32)[1], f["val transform: labels (resize 32 + center crop)"])
    out = TrainTransform(32, (0.5, 2.0), flip_prob=0.0)(img, lab, torch.Generator().manual_seed(meta["seed"]))
    close(out[1], f["train RandomResizedCrop: labels (same box)"])


def test_forward_thresholds_step_and_init_match_official(figures) -> None:  # noqa: ANN001
    f, meta = figures
    images, labels = seeded_batch(meta["seed"])
    new = _model(f["weights_new"])
    new.active_step = 1
    old = frozen_copy(_model(f["weights_old"]), 0)
    new.eval()
    with torch.no_grad():
        logits, attn = new(images, return_attn=True)
    close(logits[:, :, ::16, ::16], f["logits[:, :, ::16, ::16]"])
    for i, a in enumerate(attn):
        close(a[:, :, :: max(1, a.shape[2] // 16)], f[f"attention stage {i + 1} rows"])
    with torch.no_grad():
        hist = entropy_histogram(old(images), labels == 0, math.log(5), 5, 100)
    close(hist, f["histogram"])
    thr = median_thresholds(hist, 0.001, "official_code")
    close(thr.nan_to_num(-1.0), f["PLOP thresholds (median_rule official_code)"])

    cfg = parse_config(Config, {"train": {"sats": {"head_layout": "official_code"}, "pseudo_label": {"median": "official_code"}}})
    masked = torch.from_numpy(increments.train_lut([[0, 1, 2, 3], [4]], 1)[labels.numpy()]).long()
    new.train()
    out = make_step_fn(cfg, OldModelState(old, 4, thr, math.log(5)))(new, {"image": images, "label": masked}, 0)
    out["loss"].backward()
    close(out["ce"], f["train step: CE on pseudo-labels"])
    close(out["unkd"], f["train step: 20 x UNKD"])
    close(out["sats"], f["train step: 20 x L_SATS (official reshape)"])
    close(out["loss"], f["train step: total loss"])
    grads = dict(new.named_parameters())
    for name in ("cls.1.weight", "cls.0.bias", "head.to_segmentation.weight", "body.block1.0.attn.q.weight"):
        close(grads[name].grad, f[f"grad {name}"])

    # the ablations (their official loss carries no factor 20): the same maps, pooled globally, per position,
    # or by class on the encoder's feature maps
    with torch.no_grad():
        new_feats, new_attn = new.body(images)
        old_feats, old_attn = old.body(images)
        pseudo = entropy_pseudo_labels(masked, old(images), thr, math.log(5), 4)[0]
    for obj, pooling in (("sats-selfattn-GP", "global"), ("sats-selfattn-NP", "none")):
        close(sats_loss(new_attn, old_attn, pseudo, pooling, "official_code"),
              f[f"ablation {obj} (sats.pooling {pooling}, source attention, weight 1)"])
    close(sats_feature_loss(new_feats, old_feats, pseudo),
          f["ablation sats-feature-CNN (sats.pooling class, source features, weight 1)"])

    init = _model(f["weights_new"])
    init.init_new_classifier(1)
    for name in ("cls.0.bias", "cls.1.weight", "cls.1.bias"):
        close(init.state_dict()[name], f[f"MiB init {name}"])
