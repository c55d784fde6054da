"""AlignFormer evaluation as LGFormer's / LAVT's ``test.py``: every sentence of every ref, the last query
state's logits upsampled (bilinear) to the input size, sigmoid > 0.5, IoU against the ground truth resized to
the input size with nearest neighbour (480x480); oIoU, mIoU and prec@0.5:0.9 (IoU >= X). The CRIS protocol
(predictions warped to the image's own size, its threshold 0.35, prec with ">") is available by options."""

from __future__ import annotations

import dataclasses
import json
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from zsk.core import dist
from zsk.core.checkpoint import load_model_state
from zsk.core.device import autocast, autocast_dtype
from zsk.core.errors import ZskError
from zsk.core.io import atomic_open
from zsk.core.progress import progress
from zsk.core.task import Loaded, loaded_model, read_trained
from zsk.core.trainer import make_eval_loader
from zsk.data.refer import RefItem
from zsk.metrics.referring import PREC_THRESHOLDS, ReferringIoU
from zsk.tasks.refer.config import Config
from zsk.tasks.refer.data import EvalSet, Tokenizer, first_item, image_tensor, load_pair, refs_of
from zsk.tasks.refer.train import build_model

METRICS = ("oIoU", "mIoU", *(f"prec@{t:g}" for t in PREC_THRESHOLDS))


@torch.no_grad()
def mask_logits(model: nn.Module, image: torch.Tensor, input_ids: torch.Tensor, attention_mask: torch.Tensor,
                device: torch.device, precision: str = "fp32", output: int = -1, chunk: int = 8,
                size: tuple[int, int] | None = None) -> torch.Tensor:
    """(n, h, w) float logits of one image (3, S, S) for n expressions, the ``output``-th query state upsampled
    bilinearly to ``size`` (default the input size), ``chunk`` expressions per forward pass."""
    was_training = model.training
    model.eval()
    size = size or tuple(image.shape[-2:])
    outs = []
    image = image.to(device)[None]
    with autocast(device, autocast_dtype(device, precision)):
        for s in range(0, input_ids.shape[0], chunk):
            ids, att = input_ids[s:s + chunk].to(device), attention_mask[s:s + chunk].to(device)
            logits = model(image.expand(ids.shape[0], -1, -1, -1), ids, att)["logits"][output]
            outs.append(F.interpolate(logits.float(), size=size, mode="bilinear", align_corners=False)[:, 0])
    model.train(was_training)
    return torch.cat(outs)


def evaluate_refs(model: nn.Module, cfg: Config, items: Sequence[RefItem], tokenizer: Tokenizer,
                  device: torch.device, keep_rows: bool = False) -> dict[str, Any]:
    """Metrics over every expression of ``items`` (refs split across ranks, counts gathered)."""
    e = cfg.eval
    original = e.resolution == "original"
    loader = make_eval_loader(EvalSet(items, tokenizer, cfg.data, original=original), 1, collate_fn=first_item)
    inter, union, rows = [], [], []
    for item in progress(loader, desc="evaluating"):
        target = item["mask_original"] if original else item["mask"]
        logits = mask_logits(model, item["image"], item["input_ids"], item["attention_mask"], device,
                             cfg.runtime.precision, e.output, e.expressions_per_batch, tuple(target.shape))
        target = target.to(logits.device).bool()
        for j, lg in enumerate(logits):
            pred = lg.sigmoid() > e.threshold
            i, u = int((pred & target).sum()), int((pred | target).sum())
            inter.append(i)
            union.append(u)
            if keep_rows:
                rows.append({"ref_id": item["ref_id"], "sentence": j, "I": i, "U": u, "IoU": i / u if u else 0.0})
    if dist.get_dist().enabled:
        parts = dist.all_gather_object((inter, union, rows))
        inter = [v for p in parts for v in p[0]]
        union = [v for p in parts for v in p[1]]
        rows = [v for p in parts for v in p[2]]
    if not inter:
        raise ZskError("the evaluation split has no expressions")
    acc = ReferringIoU(strict=e.prec_rule == ">")
    acc.extend(inter, union)
    result: dict[str, Any] = acc.result()
    result.update(refs=len(items), protocol={"resolution": e.resolution, "threshold": e.threshold,
                                             "prec_rule": e.prec_rule, "output": e.output})
    if keep_rows:
        result["per_expression"] = rows
    return result


@torch.no_grad()
def preview_refs(model: nn.Module, cfg: Config, items: Sequence[RefItem], tokenizer: Tokenizer,
                 device: torch.device) -> dict[str, np.ndarray]:
    """For the first ``runtime.preview_images`` refs, their first expression: ``ground truth | prediction``
    overlays with the expression written on them (what training sends to the trackers)."""
    from zsk.tasks.refer.predict import overlay

    out = {}
    for item in list(items)[: cfg.runtime.preview_images]:
        rgb, mask = load_pair(item, cfg.data)
        ids, att = tokenizer.batch(item.sentences[:1])
        image = image_tensor(rgb, cfg.data.image_size, cfg.data.mean, cfg.data.std)
        logits = mask_logits(model, image, ids, att, device, cfg.runtime.precision, cfg.eval.output, 1, mask.shape)
        pred = (logits[0].sigmoid() > cfg.eval.threshold).cpu().numpy()
        gap = np.full((rgb.shape[0], 4, 3), 255, dtype=np.uint8)
        out[f"ref{item.ref_id}"] = np.concatenate(
            [overlay(rgb, mask, item.sentences[0], (40, 200, 60)), gap, overlay(rgb, pred, item.sentences[0])], axis=1)
    return out


def load(checkpoint: Path, sets: list[str] | None = None, device: str | None = None,
         recipe: Path | None = None) -> Loaded:
    """A trained AlignFormer in eval mode with its config and the tokenizer rebuilt from the checkpoint's
    vocabulary (no download: the architecture comes from the recipe, the weights from the file)."""
    cfg, state = read_trained("refer", checkpoint, Config, sets, recipe)
    extra = state.get("extra") or {}
    if not isinstance(extra.get("vocab"), list):
        raise ZskError(f"{checkpoint}: no tokenizer vocabulary in the checkpoint; pass a checkpoint written by "
                       "`zsk refer train`")
    model = build_model(cfg, pretrained=False)
    load_model_state(model, state["model"], source=str(checkpoint))
    tokenizer = Tokenizer.from_vocab(extra["vocab"], cfg.data.max_tokens, bool(extra.get("lowercase", True)))
    return loaded_model(model, cfg, state, checkpoint, device, parts={"tokenizer": tokenizer})


def evaluate(loaded: Loaded, split: str | None = None, out: Path | None = None, *, resolution: str | None = None,
             threshold: float | None = None, strict_prec: bool = False) -> dict[str, Any]:
    """oIoU (cumulative I / cumulative U), mIoU (mean per-expression IoU) and prec@X on a split (default the
    recipe's ``eval.split``). ``resolution``: ``input`` (480x480, LAVT/LGFormer) or ``original`` (the image's
    size, CRIS); ``threshold`` on the sigmoid; ``strict_prec``: prec@X counts IoU > X (CRIS). With ``out``,
    every expression's I, U and IoU go to ``out/per_expression.json``."""
    cfg: Config = loaded.cfg
    changes: dict[str, Any] = {}
    if resolution is not None:
        if resolution not in ("input", "original"):
            raise ZskError(f"--resolution {resolution!r}: choose input (network size) or original (image size)")
        changes["resolution"] = resolution
    if threshold is not None:
        if not 0.0 < threshold < 1.0:
            raise ZskError(f"--threshold {threshold}: a probability in (0, 1)")
        changes["threshold"] = threshold
    if strict_prec:
        changes["prec_rule"] = ">"
    cfg = dataclasses.replace(cfg, eval=dataclasses.replace(cfg.eval, **changes))
    split = split or cfg.eval.split or "val"
    items = refs_of(cfg, split, cfg.eval.max_refs)
    result = evaluate_refs(loaded.model, cfg, items, loaded.parts["tokenizer"], loaded.device, keep_rows=out is not None)
    result = {"split": split, "dataset": f"{cfg.data.dataset} ({cfg.data.split_by})", **result}
    rows = result.pop("per_expression", None)
    if out is not None and rows is not None and dist.is_main():
        with atomic_open(Path(out) / "per_expression.json", "w") as f:
            f.write(json.dumps(rows))
    return result
