"""``zsk adapt predict``: segment images with the teacher by the sliding-window protocol; writes the trainId
map (palette PNG in the Cityscapes colours) and a colour overlay per input, named by
:func:`zsk.core.io.output_names`; and the selection montage of ``zsk adapt select``."""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
from PIL import Image

from zsk.core.io import StdinInput, atomic_path, output_folder, output_names
from zsk.core.task import Loaded
from zsk.data.images import read_image
from zsk.tasks.adapt.data import to_tensor
from zsk.tasks.adapt.evaluate import segment_logits

# Cityscapes colours of the 19 trainIds (cityscapesscripts labels.py)
CITYSCAPES_PALETTE = np.array([
    (128, 64, 128), (244, 35, 232), (70, 70, 70), (102, 102, 156), (190, 153, 153), (153, 153, 153), (250, 170, 30),
    (220, 220, 0), (107, 142, 35), (152, 251, 152), (70, 130, 180), (220, 20, 60), (255, 0, 0), (0, 0, 142),
    (0, 0, 70), (0, 60, 100), (0, 80, 100), (0, 0, 230), (119, 11, 32)], dtype=np.uint8)


def palette(num_classes: int) -> np.ndarray:
    """(256, 3) colours: Cityscapes for the 19 trainIds, grey ramps for others, black for 255."""
    pal = np.zeros((256, 3), dtype=np.uint8)
    n = min(num_classes, 19)
    pal[:n] = CITYSCAPES_PALETTE[:n]
    for c in range(19, num_classes):
        pal[c] = (c * 37 % 256, c * 91 % 256, c * 53 % 256)
    return pal


def colorize(pred: np.ndarray, num_classes: int) -> np.ndarray:
    return palette(num_classes)[pred]


def predict(loaded: Loaded, inputs: Sequence[Path | StdinInput], out: Path) -> Iterator[dict[str, Any]]:
    """For each image: ``<name>_pred.png`` (trainIds, palette PNG) and ``<name>_overlay.png``; a row with
    the files and the share of pixels per predicted class."""
    cfg = loaded.cfg
    out = output_folder(out)
    names = output_names(inputs)
    net = loaded.model.teacher
    classes = list(loaded.extra.get("class_names") or [str(i) for i in range(cfg.data.num_classes)])
    for path, name in zip(inputs, names, strict=True):
        image = read_image(Path(str(path)))
        logits = segment_logits(net, to_tensor(image, cfg.data)[0], cfg)
        pred = logits.argmax(0).cpu().numpy().astype(np.uint8)
        pred_path, overlay_path = out / f"{name}_pred.png", out / f"{name}_overlay.png"
        with atomic_path(pred_path) as tmp:
            im = Image.fromarray(pred, mode="P")
            im.putpalette(palette(cfg.data.num_classes).reshape(-1).tolist())
            im.save(tmp, format="PNG")
        blend = (0.5 * image + 0.5 * colorize(pred, cfg.data.num_classes)).astype(np.uint8)
        with atomic_path(overlay_path) as tmp:
            Image.fromarray(blend).save(tmp, format="PNG")
        counts = np.bincount(pred.ravel(), minlength=len(classes))
        share = {classes[c]: round(float(counts[c]) / pred.size, 4) for c in np.flatnonzero(counts)}
        yield {"input": str(path), "input_name": name, "prediction": str(pred_path), "overlay": str(overlay_path),
               "class_share": share}


def selection_montage(path: Path, items: Sequence[tuple[str, np.ndarray, torch.Tensor, float]],
                      tile_width: int = 256) -> None:
    """A PNG with one row per selected image: the image beside its score map (hot = uncertain)."""
    rows = []
    for _, image, smap, _ in items:
        h, w = image.shape[:2]
        th = max(1, round(h * tile_width / w))
        img = np.array(Image.fromarray(image).resize((tile_width, th), Image.BILINEAR))
        m = smap.float().numpy()
        m = (m - m.min()) / (m.max() - m.min() + 1e-12)
        heat = np.stack([m, m ** 2, 1 - m], -1) * 255
        heat = np.array(Image.fromarray(heat.astype(np.uint8)).resize((tile_width, th), Image.BILINEAR))
        rows.append(np.concatenate([img, heat], 1))
    width = max(r.shape[1] for r in rows)
    canvas = np.concatenate([np.pad(r, ((0, 2), (0, width - r.shape[1]), (0, 0))) for r in rows], 0)
    with atomic_path(path) as tmp:
        Image.fromarray(canvas).save(tmp, format="PNG")
