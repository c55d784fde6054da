"""ZegCLIP inference and evaluation (Zhou et al., CVPR 2023): keep-ratio resize, mmseg ``slide_inference``
(windows clamped to the border, scores averaged) or whole-image scoring, seen-class calibration, then
mIoU, mIoU over seen / unseen classes, hIoU and pixel accuracy from one confusion matrix."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor

from zsk.core import dist
from zsk.core.device import autocast, autocast_dtype
from zsk.core.errors import ZskError
from zsk.core.progress import progress
from zsk.core.task import Loaded, load_trained
from zsk.core.trainer import make_eval_loader
from zsk.data import images as img_io
from zsk.data.overlay import preview_panel
from zsk.data.seg_transforms import SegTestTransform, keep_ratio_test_size
from zsk.metrics.confusion import ConfusionMatrix
from zsk.metrics.segmentation import harmonic_mean, iou_per_class, mean_iou, pixel_accuracy
from zsk.models.inferers import sliding_window_inference
from zsk.tasks.segment.config import Config, EvalConfig
from zsk.tasks.segment.data import Benchmark, SegEvalDataset, first_item, load_benchmark
from zsk.tasks.segment.model import ZegCLIP
from zsk.tasks.segment.train import PRETRAINED_PREFIXES, build_model, text_embeddings_for

INDUCTIVE_CALIBRATION = 0.1  # subtracted from seen-class scores of inductive models at test time
LONG_SIDE_LIMIT = 8  # with eval.min_size: the resized long side may reach 8 x max(eval.img_scale, short side)


def calibration_for(setting: str, ecfg: EvalConfig) -> float:
    """Seen-score calibration: the recipe's value, else 0.1 for inductive models and 0 otherwise."""
    if ecfg.seen_calibration is not None:
        return ecfg.seen_calibration
    return INDUCTIVE_CALIBRATION if setting == "inductive" else 0.0


def check_image_size(h: int, w: int, img_scale: Sequence[int], patch: int, source: str = "the image",
                     min_size: int | None = None) -> None:
    """Refuse an image the test-time resize cannot segment: a ``ZskError`` naming ``source``, its size and
    the limit.

    Without ``min_size`` mmcv's keep-ratio rescale bounds the long side by ``max(img_scale)``, so the short
    side shrinks with the aspect ratio: images up to ``max(img_scale) / patch`` : 1 are segmented (32:1
    for the demo's (256, 96) and 8-px patches, 128:1 for (2048, 512) and 16-px patches). With mmseg's
    ``min_size`` rule (the paper recipes: 512) the short side is fixed and the long side grows with the
    aspect ratio; it may reach ``LONG_SIDE_LIMIT`` x the larger of max(img_scale) and that short side
    (16,384 px, 32:1, for the paper).
    """
    if min(h, w) < 1:
        raise ZskError(f"{source} is empty ({w}x{h} px)")
    rh, rw = keep_ratio_test_size(h, w, tuple(img_scale), min_size)
    if min_size is not None:
        short = max(min(img_scale), min_size)
        longest = LONG_SIDE_LIMIT * max(max(img_scale), short)
        if max(rh, rw) > longest:
            limit = longest / short
            raise ZskError(f"{source} is {w}x{h} px (aspect ratio {max(h, w) / min(h, w):.0f}:1): the test-time "
                           f"resize (short side {short}, eval.min_size={min_size}) makes it "
                           f"{rw}x{rh}, longer than {longest} px; segment takes images up to {limit:.0f}:1 (crop "
                           "it into pieces)")
        return
    if min(rh, rw) < patch:
        limit = max(img_scale) / patch
        raise ZskError(f"{source} is {w}x{h} px (aspect ratio {max(h, w) / min(h, w):.0f}:1): the keep-ratio resize "
                       f"into eval.img_scale={list(img_scale)} makes it {rw}x{rh}, less than one {patch}-px patch "
                       f"across; segment takes images up to {limit:.0f}:1 (crop it into pieces or pad it)")


@torch.no_grad()
def segment_scores(model: ZegCLIP, image: Tensor, text: Tensor, ecfg: EvalConfig, normalization: str,
                   seen: Sequence[int], calibration: float, device: torch.device,
                   amp: torch.dtype | None = None, window_batch: int = 8, source: str = "the image") -> Tensor:
    """Calibrated sigmoid scores (C, H, W) at the image's original size.

    The image (H, W, 3 uint8) is resized by mmseg's keep-ratio rule with ``min_size`` (short side 512),
    scored by sliding windows (crop, stride; mmseg ``slide_inference``: no padding, the last window shifted to end at
    the border, a window clipped to a shorter image) whose scores are averaged, or whole; seen classes
    get ``-calibration``; the averaged map is resized back to (H, W). An image too thin for the model
    (:func:`check_image_size`) is a ``ZskError`` naming ``source``.
    """
    h0, w0 = image.shape[:2]
    check_image_size(h0, w0, ecfg.img_scale, model.image_encoder.patch_size, source, ecfg.min_size)
    x = SegTestTransform(tuple(ecfg.img_scale), normalization, ecfg.min_size)(image.cpu().numpy()).to(device)
    h, w = x.shape[-2:]
    c = text.shape[0]
    offset = torch.zeros(c, 1, 1, device=device)
    if seen and calibration:
        offset[torch.as_tensor(list(seen), device=device)] = calibration

    def run(batch: Tensor) -> Tensor:
        with autocast(device, amp):
            logits = model(batch, text)
        return logits.float().sigmoid() - offset

    if ecfg.mode == "whole":
        scores = run(x[None])[0]
    else:
        crop = (ecfg.crop_size, ecfg.crop_size)
        scores = sliding_window_inference(x, crop, (ecfg.stride, ecfg.stride), run, window_batch=window_batch,
                                          blend="mean", pad="none")
    if (h, w) != (h0, w0):
        scores = F.interpolate(scores[None], size=(h0, w0), mode="bilinear", align_corners=False)[0]
    return scores


def segmentation_metrics(cm: Tensor, class_names: Sequence[str], seen: Sequence[int], unseen: Sequence[int]) -> dict:
    """mIoU, mIoU over seen / unseen classes, hIoU = 2SU/(S+U), pixel accuracy and per-class IoU."""
    ious = iou_per_class(cm)
    s = mean_iou(cm, list(seen))
    out: dict = {"mIoU": mean_iou(cm), "mIoU_seen": s}
    if unseen:
        u = mean_iou(cm, list(unseen))
        out.update({"mIoU_unseen": u, "hIoU": harmonic_mean(s, u)})
    else:
        out.update({"mIoU_unseen": None, "hIoU": None})
    out["pAcc"] = pixel_accuracy(cm)
    out["per_class"] = {n: (None if v != v else v) for n, v in zip(class_names, ious, strict=True)}
    return out


@torch.no_grad()
def evaluate_model(model: ZegCLIP, dataset: SegEvalDataset, text: Tensor, bench: Benchmark, cfg: Config,
                   calibration: float, device: torch.device, workers: int = 0,
                   panels: dict[str, np.ndarray] | None = None) -> dict:
    """Run inference over an evaluation split and compute :func:`segmentation_metrics` (reduced over ranks);
    with ``panels``, the ``image | ground truth | prediction`` pictures of this rank's first
    ``runtime.preview_images`` images are put there from the predictions already made."""
    was_training = model.training
    model.eval()
    amp = autocast_dtype(device, cfg.runtime.precision)
    cm = ConfusionMatrix(bench.num_classes, ignore_index=img_io.IGNORE_INDEX, device=device)
    text = text.to(device)
    loader = make_eval_loader(dataset, 1, workers=workers, collate_fn=first_item)
    for i, sample in enumerate(progress(loader, total=len(loader), desc="eval")):
        scores = segment_scores(model, sample["image"], text, cfg.eval, cfg.data.normalize, bench.seen, calibration,
                                device, amp, source=f"image {sample['path']}")
        pred = scores.argmax(0)
        cm.update(pred, sample["label"].to(device))
        if panels is not None and i < cfg.runtime.preview_images:
            panels[f"{i}_{sample['name']}"] = preview_panel(sample["image"].numpy(), sample["label"].numpy(),
                                                            pred.cpu().numpy(), img_io.voc_palette(256),
                                                            img_io.IGNORE_INDEX)
    cm.reduce()
    model.train(was_training)
    return segmentation_metrics(cm.matrix.cpu(), bench.class_names, bench.seen, bench.unseen)


def load(checkpoint: Path, sets: list[str] | None = None, device: str | None = None,
         recipe: Path | None = None) -> Loaded:
    """A trained ZegCLIP in eval mode with the config it was trained with; ``parts["clip"]`` is the CLIP
    it was built around (to embed other class names). The frozen CLIP comes from its pretrained
    weights, or from the checkpoint when it was trained from random weights."""
    built: dict[str, Any] = {}

    def build(cfg: Config) -> ZegCLIP:
        model, built["clip"] = build_model(cfg)
        return model

    loaded, state = load_trained("segment", checkpoint, Config, build, sets, device, recipe, PRETRAINED_PREFIXES)
    clip = built["clip"]
    if clip.random_init:  # random-weight CLIP: the checkpoint must carry the frozen towers too
        missing = [k for k in loaded.model.state_dict() if k.startswith(PRETRAINED_PREFIXES) and k not in state["model"]]
        if missing:
            raise ZskError(f"{checkpoint} does not match the model built from its recipe: the CLIP has random "
                           f"weights but the checkpoint lacks {missing[:5]}")
    loaded.parts["clip"] = clip
    return loaded


def evaluate(loaded: Loaded, split: str | None = None, out: Path | None = None) -> dict[str, Any]:
    """Evaluate on a split (default: the recipe's ``data.val_split``): mIoU, mIoU(seen), mIoU(unseen),
    hIoU, pAcc and per-class IoU, with the seen-score calibration of the model's setting. Writes
    nothing (``zsk segment eval --out DIR`` saves the result)."""
    cfg: Config = loaded.cfg
    dist.init_distributed(loaded.device)
    extra = loaded.extra
    bench = load_benchmark(cfg.data)
    if list(extra.get("class_names", bench.class_names)) != list(bench.class_names):
        text = text_embeddings_for(loaded.model, loaded.parts["clip"], cfg, bench.class_names,
                                   cfg.model.text.embeddings_file)
    else:
        text = extra["text_embeddings"].float()
    ds = SegEvalDataset(bench, split or cfg.data.val_split, cfg.eval.max_images)
    calibration = calibration_for(extra.get("setting", cfg.train.setting), cfg.eval)
    return evaluate_model(loaded.model, ds, text, bench, cfg, calibration, loaded.device, cfg.runtime.workers)
