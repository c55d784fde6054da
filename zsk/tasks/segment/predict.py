"""``zsk segment predict``: open-vocabulary segmentation of images with the checkpoint's classes or any
class names (ZegCLIP's queries come from CLIP text embeddings): a palette PNG mask in the dataset's own
ids, an overlay PNG with a legend of class names and colours, and a JSON legend per image."""

from __future__ import annotations

import json
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

from zsk.core.device import autocast_dtype
from zsk.core.errors import ZskError
from zsk.core.io import StdinInput, output_folder, output_names
from zsk.core.progress import progress
from zsk.core.task import Loaded
from zsk.data import images as img_io
from zsk.data.overlay import overlay, with_legend
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


BACKGROUND_NAMES = frozenset({"background", "_background_", "bg", "backdrop"})


@dataclass(frozen=True)
class MaskCoding:
    """How predicted classes are stored and drawn: class ``i`` is written as id ``offset + i`` in the mask
    PNG (the dataset's own ids: VOC and PASCAL Context store class k as k + 1, 0 being background) and
    drawn in ``colours[i]``; ``palette`` is the PNG's 256-entry palette (VOC's for VOC)."""

    offset: int
    colours: np.ndarray  # (C, 3) uint8
    palette: np.ndarray  # (256, 3) uint8, palette[offset + i] == colours[i]


def mask_coding(names: Sequence[str], offset: int, source: str) -> MaskCoding:
    """Ids and colours of ``names``: ids ``offset + i``; colours from the PASCAL VOC colour map, where
    entry 0 is black (VOC's background), so class 0 is drawn black only when it is a background class;
    otherwise class i takes VOC colour ``i + 1`` (with ``offset`` 1 these are exactly VOC's colours)."""
    if offset + len(names) > img_io.IGNORE_INDEX:
        raise ZskError(f"{source} gives {len(names)} classes; masks are 8-bit PNGs with ids up to "
                       f"{img_io.IGNORE_INDEX - 1} (255 = ignore), so at most {img_io.IGNORE_INDEX - offset} classes")
    shift = offset if offset else (0 if names and names[0].strip().lower() in BACKGROUND_NAMES else 1)
    voc = img_io.voc_palette(256 + shift)
    colours = voc[np.arange(len(names)) + shift]
    palette = voc[:256].copy()
    palette[offset : offset + len(names)] = colours
    return MaskCoding(offset, colours, palette)


def predict(loaded: Loaded, inputs: Sequence[Path | StdinInput], out: Path, *, classes: str | None = None,
            classes_file: Path | None = None) -> Iterator[dict[str, Any]]:
    """Segment each image with the checkpoint's classes, or with ``classes`` ("a,b,c") / ``classes_file``
    (one a line) as the open vocabulary. Per input, named by :func:`zsk.core.io.output_names` (unique and
    stable, so inputs sharing a stem never overwrite each other), it writes under ``out``:
    ``<name>.png``, the mask as a palette PNG in the dataset's own ids (VOC and Context: class k as k + 1,
    as in their label PNGs; other datasets and ``--classes``: the class's position), ``<name>_overlay.png``,
    the image blended with the class colours and a legend of the classes present, and ``<name>.json``,
    the legend (mask id, name, colour and pixel count of every class)."""
    names = parse_classes(classes, classes_file)
    cfg: Config = loaded.cfg
    dev, extra = loaded.device, loaded.extra
    trained_names = list(extra.get("class_names") or [])
    if names is None:
        names = trained_names
        if not names:
            raise ZskError(f"{loaded.checkpoint} stores no class names; pass --classes or --classes-file")
        rzl = img_io.FORMATS.get(cfg.data.dataset, (None, None, False))[2]
        offset = int(cfg.data.reduce_zero_label if cfg.data.reduce_zero_label is not None else rzl)
        coding = mask_coding(names, offset, f"{loaded.checkpoint}")
        text = extra["text_embeddings"].float()
    else:
        coding = mask_coding(names, 0, "--classes-file" if classes_file is not None else "--classes")
        text = text_embeddings_for(loaded.model, loaded.parts["clip"], cfg, names)
    trained_seen = {trained_names[i] for i in extra.get("seen", [])}
    seen = [i for i, n in enumerate(names) if n in trained_seen]
    calibration = calibration_for(extra.get("setting", cfg.train.setting), cfg.eval)
    amp = autocast_dtype(dev, cfg.runtime.precision)
    paths = []
    for path in inputs:
        if isinstance(path, StdinInput):
            raise ZskError("segment predict reads image files; '-' gives their paths on stdin")
        paths.append(Path(path))
    stems = output_names(paths)
    out = output_folder(out)
    text = text.to(dev)
    id_rule = (f"mask value = class index + {coding.offset} (the dataset's own ids; 0 = background, never "
               "predicted)" if coding.offset else "mask value = class index")
    for path, stem in progress(list(zip(paths, stems, strict=True)), total=len(paths), desc="predict"):
        image = img_io.read_image(path)
        scores = segment_scores(loaded.model, torch.from_numpy(image.copy()), text, cfg.eval, cfg.data.normalize, seen,
                                calibration, dev, amp, source=f"image {path}")
        pred = scores.argmax(0).cpu().numpy()
        mask_path, overlay_path, legend_path = out / f"{stem}.png", out / f"{stem}_overlay.png", out / f"{stem}.json"
        img_io.write_label(mask_path, (pred + coding.offset).astype(np.uint8), coding.palette)
        counts = np.bincount(pred.reshape(-1), minlength=len(names))
        present = [i for i in np.argsort(-counts, kind="stable") if counts[i] > 0]
        entries = [(f"{i + coding.offset} {names[i]} ({100 * counts[i] / pred.size:.1f}%)", coding.colours[i])
                   for i in present]
        with_legend(overlay(image, pred, coding.colours), entries).save(overlay_path)
        legend = {"image": str(path), "mask": str(mask_path), "overlay": str(overlay_path), "mask_ids": id_rule,
                  "classes": [{"id": i + coding.offset, "class_index": i, "name": n, "color": coding.colours[i].tolist(),
                               "pixels": int(counts[i]), "fraction": float(counts[i] / pred.size)}
                              for i, n in enumerate(names)]}
        legend_path.write_text(json.dumps(legend, indent=2))
        yield {"input": str(path), "image": str(path), "mask": str(mask_path), "overlay": str(overlay_path),
               "legend": str(legend_path), "classes_present": [names[i] for i in sorted(present)]}
