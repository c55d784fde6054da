"""refer (AlignFormer) replayed against the official figures of LGFormer (mqchen1993/LGFormer, tools/parity/refer.py
--save): the same seeded weights and inputs through zsk alone; every output equal to the official code's."""

from __future__ import annotations

import tempfile
from pathlib import Path

import numpy as np
import pytest
import torch
from common import assert_close as close  # noqa: E402  (tools/parity, see conftest.py)
from common import load_figures  # noqa: E402

OFFICIAL_COMMIT = "ea4800e103383f34730c672c38d47ac27b1b4476"  # mqchen1993/LGFormer
FIG = Path(__file__).parent / "refer"
TOL = 1e-9  # fp64 on both sides


@pytest.fixture(scope="module")
def harness():
    import importlib.util

    spec = importlib.util.spec_from_file_location("refer_parity_harness",
                                                  Path(__file__).parents[2] / "tools" / "parity" / "refer.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.fixture(scope="module")
def figures():
    return load_figures(FIG, "refer")


def test_figures_name_the_official_commit(figures):
    _, meta = figures
    assert meta["official_commit"] == OFFICIAL_COMMIT
    assert all(r["verdict"] != "DIFFERENT" for r in meta["rows"])
    compared = {r["component"] for r in meta["rows"] if r["max_abs_diff"] is not None}
    assert {"VLBA mm_l (language branch)", "multi-modal Swin stage 4 output", "mask logits, query state 6",
            "REFER getMask (== 1) vs mask_parts=official", "test.py oIoU (printed, 2 decimals)"} <= compared


def test_deformable_attention_and_vlba(figures, harness):
    from zsk.models.deformable_attention import MSDeformAttn, ms_deform_attn
    from zsk.tasks.refer.model import VLBA

    f, meta = figures
    seed = meta["seed"]
    torch.set_grad_enabled(False)
    try:
        shapes, value, loc, weights = harness.deform_inputs(seed)
        close(ms_deform_attn(value, shapes, loc, weights), f["ms_deform_attn (grid_sample sampling)"], TOL)
        attn = MSDeformAttn(32, 3, 4, 4)
        close(attn.sampling_offsets.bias, f["MSDeformAttn init (offset ring)"], 1e-6)
        attn = attn.double()
        harness.fill(attn, seed + 4)
        q = harness.seeded(2, 9, 32, seed=seed + 5).double()
        src = harness.seeded(2, int(shapes.prod(1).sum()), 32, seed=seed + 6).double()
        refs = torch.rand(2, 9, 3, 2, generator=torch.Generator().manual_seed(seed + 7), dtype=torch.float64)
        close(attn(q, refs, src, shapes), f["MSDeformAttn forward"], TOL)
        vlba = VLBA(32, 768, num_heads=2).double().eval()
        harness.fill(vlba, seed + 8)
        mv, ml = vlba(*harness.vlba_inputs(seed))
        close(mv, f["VLBA mm_v (vision branch)"], TOL)
        close(ml, f["VLBA mm_l (language branch)"], TOL)
    finally:
        torch.set_grad_enabled(True)


def test_multimodal_swin_and_decoders(figures, harness):
    f, meta = figures
    seed = meta["seed"]
    with torch.no_grad():
        outs, words, _ = harness.build_swin(seed)(*harness.swin_inputs(seed))
        for i in range(4):
            close(outs[i], f[f"multi-modal Swin stage {i + 1} output"], TOL)
        close(words, f["multi-modal Swin words to the decoder (last mm_l)"], TOL)
        model = harness.build_decoder(seed)
        with harness.fp64_float():
            logits = model.decode(*harness.decoder_inputs(seed))["logits"]
        for k, lg in enumerate(logits):
            close(lg, f[f"mask logits, query state {k}"], 1e-8)


def test_tokenizer_and_metrics(figures, harness):
    from zsk.tasks.refer.data import Tokenizer, write_sample

    f, meta = figures
    seed = meta["seed"]
    with tempfile.TemporaryDirectory() as tmp:
        vocab = harness.parity_vocab(write_sample(Path(tmp), num_images=12, size=48, seed=seed))
    ids, att = Tokenizer.from_vocab(vocab, 20).batch(meta["sentences"])
    for j in range(len(meta["sentences"])):
        close(torch.cat([ids[j], att[j]]), f[f"token ids + mask, sentence {j}"], 0)
    ours = harness.zsk_metrics(*harness.metric_batches(seed))
    printed = f["metrics/official_printed"]
    for k, v in zip(sorted(["mIoU", "oIoU", *(f"prec@{t}" for t in ("0.5", "0.6", "0.7", "0.8", "0.9"))]), printed,
                    strict=True):
        assert abs(round(ours[k], 2) - float(v)) < 0.0051, k
    assert np.ptp(printed) > 0  # the stand-in predictions are not all alike


def test_whole_model_and_loss_end_to_end(figures, harness):
    """zsk's AlignFormer (transformers BERT, timm Swin + VLBA, decoders) against the whole official LGFormer."""
    from zsk.tasks.refer.losses import mask_loss

    f, meta = figures
    seed = meta["seed"]
    with torch.no_grad():
        model = harness.build_e2e(seed)
        image, ids, att, target = harness.e2e_inputs(seed)
        logits = harness.e2e_logits(model, image, ids, att)
    official_last = f["LGFormer end to end (BERT + Swin + VLBA + decoders), logits 6"]
    close(logits[-1], official_last, 1e-8)
    assert float(np.ptp(official_last)) > 1.0  # not a degenerate map
    compared = {r["component"]: r for r in meta["rows"]}
    assert compared["train.py criterion (BCE pos_weight 1.1, summed over 7 outputs)"]["verdict"] == "equal"
    assert mask_loss([lg.float() for lg in logits], target, 1.1).item() > 0
