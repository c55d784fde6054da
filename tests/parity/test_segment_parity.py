"""ZegCLIP (segment) replayed against the official figures of ZiqinZhou66/ZegCLIP (tools/parity/segment.py
--save): the same seeded inputs and weights through zsk alone; every output within 1e-5 of the official code's
(official backbone, head, losses with the segmentor's label maps, slide_inference; metrics by mmseg's rule)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
from common import assert_close as close  # noqa: E402  (tools/parity, see conftest.py)
from common import load_figures  # noqa: E402

from zsk.models.inferers import sliding_window_inference
from zsk.tasks.segment import splits
from zsk.tasks.segment.evaluate import segmentation_metrics
from zsk.tasks.segment.losses import NonMutuallyExclusiveLoss, transductive_pseudo_labels
from zsk.tasks.segment.model import PromptedVisionTransformer, ZegCLIP

OFFICIAL_COMMIT = "9ba4bb5c9b621c04005fb9cef7254e79bb9c9991"  # ZiqinZhou66/ZegCLIP
FIG = Path(__file__).parent / "segment"
TOL = 1e-5


@pytest.fixture(scope="module")
def figures():
    return load_figures(FIG, "segment")


@pytest.fixture(scope="module")
def model(figures) -> ZegCLIP:
    """zsk's ZegCLIP with the figures' weights (the official model: class embedding added twice, no
    drop-path), dropout 0, in train mode as the harness compares it."""
    from open_clip.model import CLIP

    f, meta = figures
    cfg = meta["clip_cfg"]
    visual = CLIP(**cfg).visual
    grid = cfg["vision_cfg"]["image_size"] // cfg["vision_cfg"]["patch_size"]
    enc = PromptedVisionTransformer(visual, meta["prompts"], (grid, grid), 0.0, 0.0, True)
    m = ZegCLIP(enc, None, cfg["embed_dim"], meta["decoder_layers"], meta["decoder_heads"], 4, 0.0)
    state, offset, flat = m.state_dict(), 0, f["weights"]
    for name, value in state.items():
        if value.dtype.is_floating_point:
            state[name] = torch.from_numpy(flat[offset:offset + value.numel()].copy()).reshape(value.shape)
            offset += value.numel()
    assert offset == flat.size
    m.load_state_dict(state)
    return m.train()


def test_figures_name_the_official_commit(figures) -> None:
    _, meta = figures
    assert meta["official_commit"] == OFFICIAL_COMMIT
    assert all(r["verdict"] != "DIFFERENT" for r in meta["rows"])


def test_forward_every_head_losses_and_grads_match_official(figures, model) -> None:
    f, meta = figures
    seen, unseen = meta["seen"], meta["unseen"]
    images, text = torch.from_numpy(f["input/images"]), torch.from_numpy(f["input/text"])
    labels = torch.from_numpy(f["input/labels"].astype(np.int64))
    model.zero_grad()
    dense, g = model.image_encoder(images)
    close(dense, f["vit/dense embeddings (deep prompts)"])
    close(g, f["vit/global embedding g"])
    q = model.relationship_descriptor(text[seen], g)
    close(q, f["relationship descriptor queries"])
    memory = dense.flatten(2).transpose(1, 2)
    for i, layer in enumerate(model.decoder.layers):
        q, m = layer(q, memory)
        close(q, f[f"decoder/layer {i} queries"])
        close(m, f[f"decoder/layer {i} mask logits"])
    logits = model(images, text[seen])
    close(logits, f["head/train output pred_masks"])
    crit = NonMutuallyExclusiveLoss(100.0, 1.0, 0.25, 2.0, "negative")
    lut = torch.from_numpy(splits.inductive_label_lut(len(seen) + len(unseen), seen).astype(np.int64))
    out = crit(logits, lut[labels])
    close(100 * out["loss_focal"], f["loss/inductive focal x 100"])
    close(out["loss_dice"], f["loss/inductive dice"])
    close(out["loss"], f["loss/inductive total"])
    out["loss"].backward()
    enc = model.image_encoder
    close(enc.prompt_embeddings.grad, f["grad/prompt_embeddings"])
    close(enc.deep_prompt_embeddings.grad, f["grad/deep_prompt_embeddings"])
    close(enc.prompt_proj.weight.grad, f["grad/prompt_proj.weight"])
    close(enc.prompt_norm.weight.grad, f["grad/prompt_norm.weight"])
    close(model.relationship_descriptor.proj.weight.grad, f["grad/q_proj.weight"])
    close(model.decoder.layers[0].cross_attn.q.weight.grad, f["grad/decoder layer 0 q.weight"])
    close(model.decoder.layers[1].linear2.weight.grad, f["grad/decoder layer 1 linear2.weight"])
    model.zero_grad()
    # self-training: all class queries, online pseudo-labels for non-seen pixels
    with torch.no_grad():
        logits_all = model(images, text)
        st = crit(logits_all, transductive_pseudo_labels(logits_all, labels, seen))
    close(100 * st["loss_focal"], f["loss/self-training focal x 100 (pseudo-labels)"])
    close(st["loss_dice"], f["loss/self-training dice"])


def test_test_output_sliding_window_and_metrics_match_official(figures, model) -> None:
    f, meta = figures
    seen, unseen = meta["seen"], meta["unseen"]
    text = torch.from_numpy(f["input/text"])
    model.eval()
    try:
        offset = torch.zeros(text.shape[0], 1, 1)
        offset[seen] = 0.1
        with torch.no_grad():
            close(model(torch.from_numpy(f["input/images"]), text).sigmoid() - offset,
                  f["head/test output (sigmoid - 0.1 on seen)"])
            big = torch.from_numpy(f["input/slide image"])
            slide = sliding_window_inference(big[0], (64, 64), (40, 40), lambda b: model(b, text).sigmoid() - offset,
                                             blend="mean", pad="none")
        close(slide, f["inference/sliding window 64, stride 40 on 80x104"])
    finally:
        model.train()
    from zsk.metrics.confusion import ConfusionMatrix

    cm = ConfusionMatrix(text.shape[0], ignore_index=255)
    cm.update(torch.from_numpy(f["inference/sliding window 64, stride 40 on 80x104"]).argmax(0),
              torch.from_numpy(f["input/metric gt"].astype(np.int64)))
    ours = segmentation_metrics(cm.matrix, [str(i) for i in range(text.shape[0])], seen, unseen)
    for k in ("mIoU", "mIoU_seen", "mIoU_unseen", "hIoU", "pAcc"):
        close(ours[k], f[f"metric/{k}"])


def test_measured_rows_bf16_effect_and_crop_order_share(figures, model) -> None:
    """The harness's 'measured' rows: bf16 autocast on the compared training step (CPU) keeps the prompt
    gradients' direction (cosine > 0.999) and moves the losses by < 0.1 %; the seen-pixel share of crops
    under both label orders (tools/parity/segment_crops.py, zsk's resize + crop) is a share in (0, 1)."""
    import sys

    sys.path.insert(0, str(Path(__file__).resolve().parents[2] / "tools" / "parity"))
    import segment_crops

    f, meta = figures
    rows = {r["component"]: r for r in meta["rows"]}
    assert rows["precision: bf16 autocast, prompt gradients"]["verdict"].startswith("measured: cosine 0.99")
    assert rows["crops/seen-pixel share, remap-then-crop -> crop-then-remap"]["verdict"].startswith("measured: ")
    crop_rows = [r for c, r in rows.items() if c.startswith("transforms/RandomCrop")]  # --mmseg (the 0.24.1 wheel)
    assert len(crop_rows) == 1 and crop_rows[0]["verdict"] == "equal" and crop_rows[0]["max_abs_diff"] == 0
    seen = meta["seen"]
    lut = torch.from_numpy(splits.inductive_label_lut(6, seen).astype(np.int64))
    labels = lut[torch.from_numpy(f["input/labels"].astype(np.int64))]
    text = torch.from_numpy(f["input/text"])[seen]
    images = torch.from_numpy(f["input/images"])
    crit = NonMutuallyExclusiveLoss(100.0, 1.0, 0.25, 2.0, "negative")
    runs = []
    for bf16 in (False, True):
        model.zero_grad()
        with torch.autocast("cpu", dtype=torch.bfloat16, enabled=bf16):
            logits = model(images, text)
        loss = crit(logits.float(), labels)["loss"]
        loss.backward()
        runs.append((float(loss), model.image_encoder.deep_prompt_embeddings.grad.flatten().clone()))
    model.zero_grad()
    assert abs(runs[1][0] - runs[0][0]) < 1e-3 * abs(runs[0][0])
    assert float(torch.nn.functional.cosine_similarity(runs[0][1], runs[1][1], dim=0)) > 0.999
    shares = segment_crops.measure(images=8, seed=0)
    for res in shares.values():
        assert all(0.0 < v < 1.0 for v in res.values())
