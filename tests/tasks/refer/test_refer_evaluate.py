"""evaluate_refs against a hand computation with a stand-in model: every sentence of every ref, the chosen query
state, logits upsampled bilinearly to the input size (LGFormer test.py) or to the image's own size (CRIS)."""

from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as F

from zsk.core.recipe import load_recipe, parse_config
from zsk.data.refer import decode_mask, load_refer
from zsk.metrics.referring import ReferringIoU
from zsk.tasks.refer.config import Config
from zsk.tasks.refer.data import Tokenizer, image_tensor, load_pair, mask_tensor, write_sample
from zsk.tasks.refer.evaluate import evaluate_refs


class StandIn(torch.nn.Module):
    """Logits at stride 4 that depend on the image and on the first word, one map per query state."""

    def forward(self, image, input_ids, attention_mask):  # noqa: ANN001, ANN201
        base = F.avg_pool2d(image.mean(1, keepdim=True), 4) * 3
        shift = (input_ids[:, 1].float() % 5 - 2)[:, None, None, None]
        return {"logits": [base + shift - 1.0, base + shift]}


def test_evaluate_refs_equals_a_hand_computation(tmp_path) -> None:
    root = write_sample(tmp_path, num_images=8, size=40, seed=5)
    for resolution in ("input", "original"):
        cfg = parse_config(Config, load_recipe("refer/demo", [f"data.root={root}", f"eval.resolution={resolution}",
                                                             "eval.output=0"]))
        items = load_refer(root, "refcoco", "unc", "val", root / "images/mscoco/images/train2014")
        tok = Tokenizer.from_spec("{root}/vocab.txt", str(root), cfg.data.max_tokens)
        got = evaluate_refs(StandIn(), cfg, items, tok, torch.device("cpu"))
        acc = ReferringIoU()
        for it in items:
            rgb, mask = load_pair(it, cfg.data)
            img = image_tensor(rgb, 64, cfg.data.mean, cfg.data.std)[None]
            target = mask_tensor(mask, 64) if resolution == "input" else torch.from_numpy(mask)
            for s in it.sentences:
                ids, att = tok.batch([s])
                lg = StandIn()(img, ids, att)["logits"][0]  # eval.output = 0
                lg = F.interpolate(lg, size=tuple(target.shape), mode="bilinear", align_corners=False)[0, 0]
                acc.update((lg.sigmoid() > 0.5).numpy(), target.numpy().astype(bool))
        want = acc.result()
        assert got["expressions"] == sum(len(it.sentences) for it in items) == want["expressions"]
        for k in ("oIoU", "mIoU", "prec@0.5", "prec@0.9"):
            assert np.isclose(got[k], want[k]), (resolution, k, got[k], want[k])
        assert 0 < got["oIoU"] < 100
        assert decode_mask(items[0]).shape == (40, 40)


def test_overlay_wraps_a_long_expression_to_the_image_width() -> None:
    """A long expression is written on several lines inside the image instead of running off its edge."""
    from zsk.tasks.refer.predict import overlay

    rgb = np.full((200, 160, 3), 128, dtype=np.uint8)
    mask = np.zeros((200, 160), dtype=bool)

    def text_rows(text: str) -> int:
        out = overlay(rgb, mask, text)
        return int((out[:, :4] == 0).all(axis=(1, 2)).sum())  # rows of the black band at the left edge

    short = text_rows("man")
    long = text_rows("the man in the blue shirt standing on the left next to the small white dog")
    assert long >= 3 * short
