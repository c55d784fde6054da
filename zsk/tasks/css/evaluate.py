"""Evaluation of a continual segmentation model after a step: one confusion matrix over the step's test
images (val images holding a seen class, MiB's resize + center crop), mIoU over the base classes
("old", background included as the papers report), the classes added later ("new") and all seen classes,
and the IoU of every class.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from zsk.core import dist
from zsk.core.device import autocast, autocast_dtype
from zsk.core.progress import progress
from zsk.core.task import Loaded, load_trained
from zsk.core.trainer import make_eval_loader
from zsk.data import images as img_io
from zsk.data.overlay import preview_panel, to_uint8_image
from zsk.data.seg_transforms import IMAGENET_MEAN, IMAGENET_STD
from zsk.metrics.confusion import ConfusionMatrix
from zsk.metrics.segmentation import iou_per_class, mean_iou
from zsk.models.inferers import sliding_window_inference
from zsk.tasks.css.config import Config
from zsk.tasks.css.data import StepTestDataset
from zsk.tasks.css.increments import IGNORE
from zsk.tasks.css.train import average_over_steps, build_model, class_names, load_continual_data


def slide_logits(model: nn.Module, image: torch.Tensor, cfg: Config, amp: torch.dtype | None) -> torch.Tensor:
    """Logits (K, H, W) of a normalised image by ``eval.crop_size`` windows every ``eval.stride`` pixels (the
    shared :func:`zsk.models.inferers.sliding_window_inference`, mmseg's clamped windows, scores averaged)."""
    crop = cfg.eval.crop_size
    stride = cfg.eval.stride or max(1, crop * 2 // 3)

    def run(x: torch.Tensor) -> torch.Tensor:
        with autocast(x.device, amp):
            return model(x).float()

    return sliding_window_inference(image, (crop, crop), (stride, stride), run, window_batch=4)


def continual_metrics(cm: torch.Tensor, names: Sequence[str], num_base: int) -> dict[str, Any]:
    """old = mIoU over outputs 0..num_base-1 (the first step's classes, background included), new = over
    the later ones (None after step 0), all = over every seen class; per-class IoU (None: no pixel)."""
    n = cm.shape[0]
    ious = iou_per_class(cm)
    return {"old": mean_iou(cm, list(range(num_base))),
            "new": mean_iou(cm, list(range(num_base, n))) if n > num_base else None,
            "all": mean_iou(cm),
            "per_class": {names[i]: (None if v != v else v) for i, v in enumerate(ious)}}


@torch.no_grad()
def evaluate_step(model: nn.Module, dataset: StepTestDataset, cfg: Config, step: int, names: Sequence[str],
                  device: torch.device, batch_size: int = 1) -> dict[str, Any]:
    """The metrics of :func:`continual_metrics` for the model at ``step`` on ``dataset`` (reduced over ranks)."""
    was = model.training
    model.eval()
    model.active_step = step
    n = model.num_classes(step)
    amp = autocast_dtype(device, cfg.runtime.precision)
    cm = ConfusionMatrix(n, ignore_index=IGNORE, device=device)
    loader = make_eval_loader(dataset, batch_size if cfg.eval.mode == "center_crop" else 1, workers=cfg.runtime.workers)
    for batch in progress(loader, total=len(loader), desc=f"eval step {step}"):
        if cfg.eval.mode == "slide":
            logits = slide_logits(model, batch["image"][0].to(device), cfg, amp)[None]
        else:
            with autocast(device, amp):
                logits = model(batch["image"].to(device))
        cm.update(logits.float().argmax(1), batch["label"].to(device))
    cm.reduce()
    model.train(was)
    num_base = model.classes_per_step[0]
    return continual_metrics(cm.matrix.cpu(), list(names)[:n], num_base)


@torch.no_grad()
def preview_step(model: nn.Module, dataset: StepTestDataset, cfg: Config, step: int,
                 device: torch.device) -> dict[str, np.ndarray]:
    """``image | ground truth | prediction`` panels of the first ``runtime.preview_images`` test images of
    ``step`` (VOC palette by output index; classes not learned yet are unlabelled), for the trackers."""
    was = model.training
    model.eval()
    model.active_step = step
    amp = autocast_dtype(device, cfg.runtime.precision)
    palette = img_io.voc_palette()
    out = {}
    for i in range(min(cfg.runtime.preview_images, len(dataset))):
        sample = dataset[i]
        image = sample["image"].to(device)
        if cfg.eval.mode == "slide":
            logits = slide_logits(model, image, cfg, amp)
        else:
            with autocast(device, amp):
                logits = model(image[None])[0]
        out[f"{i}_{Path(sample['path']).stem}"] = preview_panel(
            to_uint8_image(sample["image"], IMAGENET_MEAN, IMAGENET_STD), sample["label"].numpy(),
            logits.float().argmax(0).cpu().numpy(), palette, IGNORE)
    model.train(was)
    return out


def load(checkpoint: Path, sets: list[str] | None = None, device: str | None = None,
         recipe: Path | None = None) -> Loaded:
    """A trained incremental SegFormer in eval mode at the last step it learned (random-init encoders are
    saved whole in the checkpoint; ImageNet ones too, as every weight is fine-tuned)."""
    loaded, state = load_trained("css", checkpoint, Config, lambda cfg: build_model(cfg, pretrained=False), sets,
                                 device, recipe)
    extra = loaded.extra
    loaded.model.active_step = int(extra.get("step", len(loaded.model.classes_per_step) - 1))
    loaded.parts["class_names"] = list(extra.get("class_names") or class_names(loaded.cfg))
    return loaded


def evaluate(loaded: Loaded, split: str | None = None, out: Path | None = None) -> dict[str, Any]:
    """old / new / all mIoU and per-class IoU on the test set of the checkpoint's last step (default split:
    the recipe's ``data.val_split``), plus ``per_step``: the metrics recorded after every step of training,
    and ``avg``, PLOP's mean of the all-class mIoU over the steps."""
    cfg: Config = loaded.cfg
    dist.init_distributed(loaded.device)
    if split is not None:
        cfg.data.val_split = split
    data = load_continual_data(cfg, train=False)
    step = loaded.model.active_step
    metrics = evaluate_step(loaded.model, data.test_dataset(cfg, step), cfg, step, loaded.parts["class_names"],
                            loaded.device)
    per_step = list(loaded.extra.get("per_step") or []) or _folder_history(loaded, step, metrics)
    return {**metrics, "avg": average_over_steps(per_step, step + 1), "step": step, "per_step": per_step}


def _folder_history(loaded: Loaded, step: int, metrics: dict[str, Any]) -> list[dict[str, Any]]:
    """``per_step`` of a checkpoint saved mid-sequence (``RUN/last-step<t>.pt`` holds none): the
    ``eval-step<k>.json`` records of the earlier steps in its run folder that scored the same classes, then
    this evaluation as step ``t``."""
    names, sizes = loaded.parts["class_names"], loaded.model.classes_per_step
    keys = ("old", "new", "all", "per_class")
    rows = []
    for k in range(step):
        try:
            row = json.loads((Path(loaded.checkpoint).parent / f"eval-step{k}.json").read_text(encoding="utf-8"))
        except (OSError, ValueError):
            continue
        if isinstance(row, dict) and list(row.get("per_class") or {}) == list(names[: sum(sizes[: k + 1])]):
            rows.append({"step": k, **{key: row.get(key) for key in keys}})
    return rows + [{"step": step, **{key: metrics[key] for key in keys}}]
