"""``zsk refer predict``: segment what each expression refers to in each image. Per image and expression
it writes the binary mask at the image's own size (PNG, 0/255) and an overlay with the mask tinted and the
expression written on it (the single-image demo that LGFormer's ``inference.py`` gives)."""

from __future__ import annotations

import sys
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch

from zsk.core.errors import ZskError
from zsk.core.io import StdinInput, atomic_path, output_folder, output_names
from zsk.core.task import Loaded
from zsk.data.images import read_image
from zsk.tasks.refer.config import Config
from zsk.tasks.refer.data import image_tensor
from zsk.tasks.refer.evaluate import mask_logits


def read_texts(texts: Sequence[str] | None, texts_file: Path | None) -> list[str]:
    """Expressions from ``--text`` (repeatable) and ``--texts-file`` (one per line; ``-`` reads stdin)."""
    out = [t for t in (texts or []) if t.strip()]
    if texts_file is not None:
        if str(texts_file) == "-":
            lines = sys.stdin.read().splitlines()
            if not out and not any(ln.strip() for ln in lines):
                raise ZskError("--texts-file -: standard input held no expressions (if '-' also gave the image "
                               "paths, stdin is used up: pass the expressions with --text or --texts-file FILE)")
        else:
            try:
                lines = Path(texts_file).read_text(encoding="utf-8").splitlines()
            except (OSError, UnicodeDecodeError) as e:
                raise ZskError(f"--texts-file {texts_file}: cannot read it ({e}); give a UTF-8 text file, one "
                               "expression per line") from None
        out += [ln.strip() for ln in lines if ln.strip()]
    if not out:
        raise ZskError("predict needs an expression: --text \"the man on the left\" (repeatable) or --texts-file FILE")
    return out


def _font(size: int) -> Any:
    from PIL import ImageFont

    try:
        return ImageFont.load_default(size=size)
    except (TypeError, OSError, ImportError):
        return ImageFont.load_default()


def overlay(rgb: np.ndarray, mask: np.ndarray, text: str, colour: tuple[int, int, int] = (255, 40, 40)) -> np.ndarray:
    """The image with the mask tinted (50 %) and outlined, and ``text`` in a black band along the top,
    wrapped at word boundaries to the image's width (long G-Ref expressions stay readable)."""
    from PIL import Image, ImageDraw
    from scipy import ndimage

    out = rgb.astype(np.float32).copy()
    m = mask.astype(bool)
    out[m] = 0.5 * out[m] + 0.5 * np.asarray(colour, np.float32)
    edge = m & ~ndimage.binary_erosion(m)
    out[edge] = colour
    canvas = Image.fromarray(out.clip(0, 255).astype(np.uint8))
    draw = ImageDraw.Draw(canvas)
    size = int(min(max(rgb.shape[0] // 20, 10), 28))
    font = _font(size)
    pad = max(size // 4, 2)
    lines: list[str] = []
    for word in text.split():
        if lines and draw.textlength(f"{lines[-1]} {word}", font=font) <= rgb.shape[1] - 2 * pad:
            lines[-1] = f"{lines[-1]} {word}"
        else:
            lines.append(word)
    body = "\n".join(lines)
    left, top, right, bottom = draw.multiline_textbbox((0, 0), body, font=font)
    draw.rectangle([0, 0, min(right - left + 2 * pad, rgb.shape[1] - 1), min(bottom - top + 2 * pad,
                                                                             rgb.shape[0] - 1)], fill=(0, 0, 0))
    draw.multiline_text((pad - left, pad - top), body, fill=(255, 255, 255), font=font)
    return np.asarray(canvas)


def predict(loaded: Loaded, inputs: Sequence[Path | StdinInput], out: Path, *, text: list[str] | None = None,
            texts_file: Path | None = None) -> Iterator[dict[str, Any]]:
    """For every image and expression: ``<name>_<k>_mask.png`` (0/255 at the image's size) and
    ``<name>_<k>_overlay.png`` (k = the expression's index), names from :func:`zsk.core.io.output_names`."""
    from PIL import Image
    from PIL.PngImagePlugin import PngInfo

    cfg: Config = loaded.cfg
    texts = read_texts(text, texts_file)
    paths = []
    for item in inputs:
        if isinstance(item, StdinInput):
            raise ZskError("refer predict reads image files; give expressions with --texts-file - to read stdin")
        paths.append(Path(item))
    names = output_names(paths)
    out = output_folder(out)
    ids, att = loaded.parts["tokenizer"].batch(texts)
    d = cfg.data
    for path, name in zip(paths, names, strict=True):
        rgb = read_image(path)
        logits = mask_logits(loaded.model, image_tensor(rgb, d.image_size, d.mean, d.std), ids, att, loaded.device,
                             cfg.runtime.precision, cfg.eval.output, cfg.eval.expressions_per_batch, rgb.shape[:2])
        probs = torch.sigmoid(logits).cpu().numpy()
        for k, (t, p) in enumerate(zip(texts, probs, strict=True)):
            mask = p > cfg.eval.threshold
            mask_path, over_path = out / f"{name}_{k}_mask.png", out / f"{name}_{k}_overlay.png"
            info = PngInfo()
            info.add_text("Description", f"zsk refer: {t}")
            try:
                with atomic_path(mask_path) as tmp:
                    Image.fromarray((mask * 255).astype(np.uint8)).save(tmp, format="PNG", pnginfo=info)
                with atomic_path(over_path) as tmp:
                    Image.fromarray(overlay(rgb, mask, t)).save(tmp, format="PNG", pnginfo=info)
            except OSError as e:
                raise ZskError(f"--out {out}: cannot write the predictions of {path} ({e.strerror or e}); "
                               "choose a writable --out") from None
            yield {"input": str(path), "text": t, "mask": str(mask_path), "overlay": str(over_path),
                   "foreground_fraction": float(mask.mean()), "mean_probability_inside": float(p[mask].mean())
                   if mask.any() else 0.0}
