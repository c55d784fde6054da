"""``zsk css predict``: segment images with every class the checkpoint has learned so far: a palette PNG
mask in the dataset's own ids (the PASCAL VOC colour map, for ADE20K ids too), an overlay with a legend of
every learned class, and a JSON legend per image."""

from __future__ import annotations

import json
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image

from zsk.core.device import autocast, autocast_dtype
from zsk.core.errors import ZskError
from zsk.core.io import StdinInput, atomic_open, output_folder, output_names
from zsk.core.progress import progress
from zsk.core.task import Loaded
from zsk.data import images as img_io
from zsk.data.overlay import overlay, with_legend
from zsk.tasks.css import increments
from zsk.tasks.css.config import Config
from zsk.tasks.css.data import eval_transform
from zsk.tasks.css.evaluate import slide_logits


@torch.no_grad()
def segment_image(loaded: Loaded, image: np.ndarray) -> np.ndarray:
    """Class index (model order) per pixel of an RGB image: the short side resized to ``eval.crop_size``
    (no crop), one forward pass (or sliding windows with ``eval.mode: slide``), logits resized back to the
    image's size."""
    cfg: Config = loaded.cfg
    x, _ = eval_transform(image, None, cfg.eval.crop_size, center_crop=False)
    amp = autocast_dtype(loaded.device, cfg.runtime.precision)
    if cfg.eval.mode == "slide":
        logits = slide_logits(loaded.model, x.to(loaded.device), cfg, amp)[None]
    else:
        with autocast(loaded.device, amp):
            logits = loaded.model(x[None].to(loaded.device))
    logits = F.interpolate(logits.float(), size=image.shape[:2], mode="bilinear", align_corners=False)
    return logits[0].argmax(0).cpu().numpy()


def predict(loaded: Loaded, inputs: Sequence[Path | StdinInput], out: Path) -> Iterator[dict[str, Any]]:
    """Per input ``<name>.png`` (mask in dataset ids, VOC palette), ``<name>_overlay.png`` (blend + legend of
    every class learned so far, with its share of the image) and ``<name>.json``; names from
    :func:`zsk.core.io.output_names` so inputs sharing a stem never overwrite each other."""
    out = output_folder(out)
    cfg: Config = loaded.cfg
    steps = increments.task_steps(cfg.data.dataset, cfg.data.task, cfg.data.steps)
    n = loaded.model.num_classes()
    ids = np.array(increments.model_order(steps)[:n], dtype=np.uint8)  # model index -> dataset id
    names = loaded.parts["class_names"][:n]
    palette = img_io.voc_palette()
    colours = palette[ids]
    loaded.model.eval()
    for path, stem in progress(list(zip(inputs, output_names(inputs), strict=True)), desc="predict"):
        if isinstance(path, StdinInput):
            raise ZskError("css predict reads image paths; give files, folders or '-' with one path a line")
        image = img_io.read_image(path)
        if min(image.shape[:2]) < 8:
            raise ZskError(f"image {path} is {image.shape[1]}x{image.shape[0]} px; css needs at least 8 px a side")
        pred = segment_image(loaded, image)
        counts = np.bincount(pred.reshape(-1), minlength=n)
        mask_path, overlay_path, legend_path = out / f"{stem}.png", out / f"{stem}_overlay.png", out / f"{stem}.json"
        mask = Image.fromarray(ids[pred], mode="P")
        mask.putpalette(palette.reshape(-1).tolist())
        with atomic_open(mask_path) as f:
            mask.save(f, format="PNG")
        entries = [(f"{ids[i]} {names[i]} ({100 * counts[i] / pred.size:.1f}%)", colours[i]) for i in range(n)]
        with atomic_open(overlay_path) as f:
            with_legend(overlay(image, pred, colours), entries).save(f, format="PNG")
        legend = {"image": str(path), "mask": str(mask_path), "overlay": str(overlay_path), "step": loaded.model.active_step,
                  "classes": [{"id": int(ids[i]), "name": names[i], "color": colours[i].tolist(),
                               "pixels": int(counts[i]), "fraction": float(counts[i] / pred.size)} for i in range(n)]}
        with atomic_open(legend_path, "w") as f:
            f.write(json.dumps(legend, indent=2))
        yield {"input": str(path), "mask": str(mask_path), "overlay": str(overlay_path), "legend": str(legend_path),
               "classes_present": [names[i] for i in range(n) if counts[i] > 0]}
