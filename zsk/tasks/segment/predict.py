"""``zsk segment predict``: open-vocabulary segmentation of images with the checkpoint's classes or any
class names (ZegCLIP's queries come from CLIP text embeddings): a palette PNG mask, an overlay PNG
and a JSON legend per image."""

from __future__ import annotations

import json
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
from PIL import Image

from zsk.core.device import autocast_dtype
from zsk.core.errors import ZskError
from zsk.core.io import StdinInput
from zsk.core.progress import progress
from zsk.core.task import Loaded
from zsk.data import images as img_io
from zsk.tasks.segment.config import Config
from zsk.tasks.segment.evaluate import calibration_for, segment_scores
from zsk.tasks.segment.train import text_embeddings_for


def parse_classes(classes: str | None, classes_file: str | Path | None) -> list[str] | None:
    """Class names from ``--classes "a,b,c"`` or ``--classes-file`` (one a line); None when neither is given."""
    if classes is not None and classes_file is not None:
        raise ZskError("give either --classes or --classes-file, not both")
    if classes_file is not None:
        return img_io.read_class_names(classes_file)
    if classes is not None:
        names = [c.strip() for c in classes.split(",") if c.strip()]
        if not names:
            raise ZskError("--classes is empty; give comma-separated class names, e.g. --classes 'cat,dog,grass'")
        if len(set(names)) != len(names):
            raise ZskError(f"--classes repeats a name: {classes}")
        return names
    return None


def overlay(image: np.ndarray, pred: np.ndarray, palette: np.ndarray, alpha: float = 0.5) -> np.ndarray:
    """The image blended with the palette colours of a prediction."""
    colours = palette[pred].astype(np.float32)
    return (image.astype(np.float32) * (1 - alpha) + colours * alpha).clip(0, 255).astype(np.uint8)


def predict(loaded: Loaded, inputs: Sequence[Path | StdinInput], out: Path, *, classes: str | None = None,
            classes_file: Path | None = None) -> Iterator[dict[str, Any]]:
    """Segment each image with the checkpoint's classes, or with ``classes`` ("a,b,c") / ``classes_file``
    (one a line) as the open vocabulary; writes ``<stem>.png`` (palette mask), ``<stem>_overlay.png`` and
    ``<stem>.json`` (legend: class ids, names, colours, pixel counts) under ``out``."""
    names = parse_classes(classes, classes_file)
    cfg: Config = loaded.cfg
    dev, extra = loaded.device, loaded.extra
    trained_names = list(extra.get("class_names") or [])
    if names is None:
        names = trained_names
        text = extra["text_embeddings"].float()
    else:
        text = text_embeddings_for(loaded.model, loaded.parts["clip"], cfg, names)
    if not names:
        raise ZskError(f"{loaded.checkpoint} stores no class names; pass --classes or --classes-file")
    trained_seen = {trained_names[i] for i in extra.get("seen", [])}
    seen = [i for i, n in enumerate(names) if n in trained_seen]
    calibration = calibration_for(extra.get("setting", cfg.train.setting), cfg.eval)
    amp = autocast_dtype(dev, cfg.runtime.precision)
    palette = img_io.voc_palette()
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    text = text.to(dev)
    for path in progress(list(inputs), total=len(inputs), desc="predict"):
        if isinstance(path, StdinInput):
            raise ZskError("segment predict reads image files; '-' gives their paths on stdin")
        path = Path(path)
        image = img_io.read_image(path)
        scores = segment_scores(loaded.model, torch.from_numpy(image.copy()), text, cfg.eval, cfg.data.normalize, seen,
                                calibration, dev, amp)
        pred = scores.argmax(0).cpu().numpy().astype(np.uint8)
        mask_path, overlay_path, legend_path = out / f"{path.stem}.png", out / f"{path.stem}_overlay.png", out / f"{path.stem}.json"
        img_io.write_label(mask_path, pred, palette)
        Image.fromarray(overlay(image, pred, palette)).save(overlay_path)
        counts = np.bincount(pred.reshape(-1), minlength=len(names))
        legend = {"image": str(path), "mask": str(mask_path), "overlay": str(overlay_path),
                  "classes": [{"id": i, "name": n, "color": palette[i].tolist(), "pixels": int(counts[i]),
                               "fraction": float(counts[i] / pred.size)} for i, n in enumerate(names)]}
        legend_path.write_text(json.dumps(legend, indent=2))
        present = [n for i, n in enumerate(names) if counts[i] > 0]
        yield {"input": str(path), "image": str(path), "mask": str(mask_path), "overlay": str(overlay_path),
               "legend": str(legend_path), "classes_present": present}
