"""Pictures of segmentations: a prediction blended over its image, a legend panel of class names and
colours, and the image | ground truth | prediction panels that training sends to the experiment trackers
(``runtime.loggers``) after each evaluation. Shared by the segmentation-like tasks."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np
from PIL import Image


def overlay(image: np.ndarray, pred: np.ndarray, palette: np.ndarray, alpha: float = 0.5) -> np.ndarray:
    """The image blended with the palette colours of a prediction."""
    colours = palette[pred].astype(np.float32)
    return (image.astype(np.float32) * (1 - alpha) + colours * alpha).clip(0, 255).astype(np.uint8)


def with_legend(blend: np.ndarray, entries: Sequence[tuple[str, np.ndarray]]) -> Image.Image:
    """The blended image with a legend panel on its right: a colour swatch and a label per entry
    (``(label, rgb)``), on white; the image keeps its size and position (top left)."""
    from PIL import ImageDraw, ImageFont

    h, w = blend.shape[:2]
    size = int(min(max(h // 24, 11), 28))
    try:
        font: Any = ImageFont.load_default(size=size)
    except (TypeError, OSError, ImportError):  # Pillow without FreeType: the small bitmap font
        font = ImageFont.load_default()
    pad, row = max(size // 2, 4), int(size * 1.5)
    scratch = ImageDraw.Draw(Image.new("RGB", (1, 1)))
    text_w = max((int(scratch.textlength(label, font=font)) for label, _ in entries), default=0)
    panel_w = pad * 3 + size + text_w
    panel_h = pad * 2 + row * len(entries)
    canvas = Image.new("RGB", (w + panel_w, max(h, panel_h)), (255, 255, 255))
    canvas.paste(Image.fromarray(blend), (0, 0))
    draw = ImageDraw.Draw(canvas)
    for k, (label, rgb) in enumerate(entries):
        y = pad + k * row + (row - size) // 2
        x = w + pad
        draw.rectangle([x, y, x + size - 1, y + size - 1], fill=tuple(int(c) for c in rgb), outline=(64, 64, 64))
        draw.text((x + size + pad, y + size // 2), label, fill=(0, 0, 0), font=font, anchor="lm")
    return canvas


def to_uint8_image(x: Any, mean: Sequence[float], std: Sequence[float]) -> np.ndarray:
    """A normalised (3, H, W) tensor or array back to H x W x 3 uint8 RGB (x * std + mean on 0..255)."""
    arr = np.asarray(x.detach().cpu() if hasattr(x, "detach") else x, dtype=np.float32)
    arr = arr * np.asarray(std, dtype=np.float32)[:, None, None] + np.asarray(mean, dtype=np.float32)[:, None, None]
    return arr.transpose(1, 2, 0).clip(0, 255).round().astype(np.uint8)


def preview_panel(image: np.ndarray, target: np.ndarray | None, pred: np.ndarray, palette: np.ndarray,
                  ignore_index: int | None = 255, alpha: float = 0.5) -> np.ndarray:
    """``image | ground truth | prediction`` side by side (uint8 H x W' x 3) for a tracker's image panel;
    ``ignore_index`` pixels of the target stay unblended. Without a target: ``image | prediction``."""
    image = np.asarray(image)
    if image.ndim == 2:
        image = np.repeat(image[..., None], 3, axis=2)
    image = image[..., :3].astype(np.uint8)
    pred = np.asarray(pred).astype(np.int64)
    if pred.shape != image.shape[:2]:
        raise ValueError(f"prediction {pred.shape} and image {image.shape[:2]} differ in size")
    panels = [image]
    if target is not None:
        target = np.asarray(target).astype(np.int64)
        keep = target != ignore_index if ignore_index is not None else np.ones(target.shape, dtype=bool)
        blend = overlay(image, np.where(keep, target, 0) % len(palette), palette, alpha)
        panels.append(np.where(keep[..., None], blend, image))
    panels.append(overlay(image, pred % len(palette), palette, alpha))
    gap = np.full((image.shape[0], 4, 3), 255, dtype=np.uint8)
    out: list[np.ndarray] = []
    for k, panel in enumerate(panels):
        out.extend([gap, panel] if k else [panel])
    return np.concatenate(out, axis=1)
