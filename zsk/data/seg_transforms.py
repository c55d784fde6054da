"""mmseg-style segmentation augmentations on tensors, shared by segmentation tasks.

The training pipeline of mmseg 0.x configs: Resize(img_scale, ratio_range) -> RandomCrop(crop,
cat_max_ratio) -> RandomFlip -> PhotoMetricDistortion -> Normalize -> Pad(crop, 0, 255). Images are
float tensors (3, H, W) in 0..255 RGB, labels int64 (H, W) with 255 = ignore. Randomness comes from
a ``torch.Generator`` so a data loader with a fixed seed gives the same crops.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor

IMAGENET_MEAN = (123.675, 116.28, 103.53)
IMAGENET_STD = (58.395, 57.12, 57.375)
CLIP_MEAN = (122.770938, 116.7460125, 104.09373615)  # open_clip OPENAI_DATASET_MEAN x 255
CLIP_STD = (68.5005327, 66.6321579, 70.32316305)
NORMALIZATIONS = {"imagenet": (IMAGENET_MEAN, IMAGENET_STD), "clip": (CLIP_MEAN, CLIP_STD)}


def to_tensors(image: np.ndarray, label: np.ndarray | None = None) -> tuple[Tensor, Tensor | None]:
    """HWC uint8 image -> (3, H, W) float 0..255; HW label -> int64."""
    img = torch.from_numpy(np.ascontiguousarray(image)).permute(2, 0, 1).float()
    lab = None if label is None else torch.from_numpy(np.ascontiguousarray(label)).long()
    return img, lab


def _uniform(g: torch.Generator | None, lo: float, hi: float) -> float:
    return lo + (hi - lo) * torch.rand((), generator=g).item()


def _coin(g: torch.Generator | None, p: float = 0.5) -> bool:
    return torch.rand((), generator=g).item() < p


def rescale_size(h: int, w: int, scale: tuple[int, int]) -> tuple[int, int]:
    """mmcv ``rescale`` with keep_ratio: the largest size with long side <= max(scale) and short <= min(scale)."""
    factor = min(max(scale) / max(h, w), min(scale) / min(h, w))
    return int(h * factor + 0.5), int(w * factor + 0.5)


def keep_ratio_test_size(h: int, w: int, scale: tuple[int, int], min_size: int | None = None) -> tuple[int, int]:
    """mmseg's test-time keep-ratio Resize: without ``min_size`` the size of :func:`rescale_size`; with it
    (ZegCLIP's test pipelines: ``Resize(keep_ratio=True, min_size=512)``) the short side goes to
    max(min(scale), min_size) and the long side follows the aspect ratio, unbounded by max(scale)."""
    if min_size is None:
        return rescale_size(h, w, scale)
    short = max(min(scale), min_size)
    target = (short * h / w, short) if h > w else (short, short * w / h)
    return rescale_size(h, w, target)


def resize(image: Tensor, label: Tensor | None, size: tuple[int, int]) -> tuple[Tensor, Tensor | None]:
    """Bilinear image (no antialias, like cv2 INTER_LINEAR) and nearest-neighbour label resize to (h, w)."""
    if tuple(image.shape[-2:]) == tuple(size):
        return image, label
    img = F.interpolate(image[None], size=size, mode="bilinear", align_corners=False)[0]
    lab = None
    if label is not None:
        lab = F.interpolate(label[None, None].float(), size=size, mode="nearest")[0, 0].long()
    return img, lab


def random_resize(image: Tensor, label: Tensor, img_scale: tuple[int, int], ratio_range: tuple[float, float],
                  g: torch.Generator | None = None) -> tuple[Tensor, Tensor]:
    """mmseg Resize with ratio_range: scale (2048, 512) times r ~ U(ratio_range), aspect kept."""
    r = _uniform(g, *ratio_range)
    target = (int(img_scale[0] * r), int(img_scale[1] * r))
    h, w = image.shape[-2:]
    return resize(image, label, rescale_size(h, w, target))


def random_crop(image: Tensor, label: Tensor, crop: tuple[int, int], cat_max_ratio: float = 0.75,
                ignore_index: int = 255, g: torch.Generator | None = None, tries: int = 10) -> tuple[Tensor, Tensor]:
    """mmseg RandomCrop: up to ``tries`` crops until no class covers more than cat_max_ratio of the labelled pixels."""
    h, w = image.shape[-2:]
    ch, cw = min(crop[0], h), min(crop[1], w)

    def pick() -> tuple[int, int]:
        y = int(torch.randint(0, h - ch + 1, (), generator=g))
        x = int(torch.randint(0, w - cw + 1, (), generator=g))
        return y, x

    y, x = pick()
    if cat_max_ratio < 1.0:
        for _ in range(tries):
            sub = label[y : y + ch, x : x + cw]
            cnt = torch.bincount(sub[sub != ignore_index].reshape(-1), minlength=1)
            cnt = cnt[cnt > 0]
            if cnt.numel() > 1 and cnt.max().item() / cnt.sum().item() < cat_max_ratio:
                break
            y, x = pick()
    return image[:, y : y + ch, x : x + cw], label[y : y + ch, x : x + cw]


def random_flip(image: Tensor, label: Tensor, p: float = 0.5, g: torch.Generator | None = None) -> tuple[Tensor, Tensor]:
    """Horizontal flip with probability p."""
    if _coin(g, p):
        return image.flip(-1), label.flip(-1)
    return image, label


def rgb_to_hsv(img: Tensor) -> Tensor:
    """(3, H, W) RGB in 0..1 -> HSV with hue in 0..1."""
    r, g, b = img[0], img[1], img[2]
    maxc, _ = img.max(0)
    minc, _ = img.min(0)
    delta = maxc - minc
    s = torch.where(maxc > 0, delta / maxc.clamp_min(1e-12), torch.zeros_like(maxc))
    dc = delta.clamp_min(1e-12)
    h = torch.where(maxc == r, ((g - b) / dc) % 6, torch.where(maxc == g, (b - r) / dc + 2, (r - g) / dc + 4))
    h = torch.where(delta > 0, h / 6.0, torch.zeros_like(h))
    return torch.stack([h, s, maxc])


def hsv_to_rgb(hsv: Tensor) -> Tensor:
    """Inverse of :func:`rgb_to_hsv`."""
    h, s, v = hsv[0], hsv[1], hsv[2]
    k = lambda n: (n + h * 6) % 6  # noqa: E731
    f = lambda n: v - v * s * torch.clamp(torch.minimum(k(n), 4 - k(n)), 0, 1)  # noqa: E731
    return torch.stack([f(5), f(3), f(1)])


def photometric_distortion(image: Tensor, g: torch.Generator | None = None, brightness_delta: int = 32,
                           contrast_range: tuple[float, float] = (0.5, 1.5),
                           saturation_range: tuple[float, float] = (0.5, 1.5), hue_delta: int = 18) -> Tensor:
    """mmseg PhotoMetricDistortion: brightness, contrast (first or last), saturation, hue; each with p=0.5.

    ``hue_delta`` is in OpenCV's 0..180 hue units as in mmseg; values are clipped to 0..255 after each step.
    """
    img = image.clone()
    if _coin(g):
        img = (img + _uniform(g, -brightness_delta, brightness_delta)).clamp(0, 255)
    contrast_first = _coin(g)
    if contrast_first and _coin(g):
        img = (img * _uniform(g, *contrast_range)).clamp(0, 255)
    do_sat, do_hue = _coin(g), _coin(g)
    if do_sat or do_hue:
        hsv = rgb_to_hsv(img / 255.0)
        if do_sat:
            hsv[1] = (hsv[1] * _uniform(g, *saturation_range)).clamp(0, 1)
        if do_hue:
            shift = int(torch.randint(-hue_delta, hue_delta + 1, (), generator=g))
            hsv[0] = (hsv[0] + shift / 180.0) % 1.0
        img = (hsv_to_rgb(hsv) * 255.0).clamp(0, 255)
    if not contrast_first and _coin(g):
        img = (img * _uniform(g, *contrast_range)).clamp(0, 255)
    return img


def normalize(image: Tensor, mean: tuple[float, ...], std: tuple[float, ...]) -> Tensor:
    """(x - mean) / std per channel, on 0..255 RGB."""
    m = torch.tensor(mean, dtype=image.dtype).view(-1, 1, 1)
    s = torch.tensor(std, dtype=image.dtype).view(-1, 1, 1)
    return (image - m) / s


def pad(image: Tensor, label: Tensor | None, size: tuple[int, int], pad_val: float = 0.0,
        seg_pad_val: int = 255) -> tuple[Tensor, Tensor | None]:
    """Pad bottom/right to ``size``: image with pad_val, label with seg_pad_val (ignored)."""
    h, w = image.shape[-2:]
    ph, pw = max(size[0] - h, 0), max(size[1] - w, 0)
    if ph == 0 and pw == 0:
        return image, label
    image = F.pad(image, (0, pw, 0, ph), value=pad_val)
    if label is not None:
        label = F.pad(label, (0, pw, 0, ph), value=seg_pad_val)
    return image, label


@dataclass
class SegTrainTransform:
    """The mmseg training pipeline in order: resize, crop, flip, photometric distortion, normalise, pad."""

    crop_size: tuple[int, int] = (512, 512)
    img_scale: tuple[int, int] = (2048, 512)
    ratio_range: tuple[float, float] = (0.5, 2.0)
    cat_max_ratio: float = 0.75
    flip_prob: float = 0.5
    photometric: bool = True
    normalization: str = "imagenet"
    ignore_index: int = 255

    def __call__(self, image: np.ndarray, label: np.ndarray, g: torch.Generator | None = None) -> tuple[Tensor, Tensor]:
        img, lab = to_tensors(image, label)
        img, lab = random_resize(img, lab, self.img_scale, self.ratio_range, g)
        img, lab = random_crop(img, lab, self.crop_size, self.cat_max_ratio, self.ignore_index, g)
        img, lab = random_flip(img, lab, self.flip_prob, g)
        if self.photometric:
            img = photometric_distortion(img, g)
        img = normalize(img, *NORMALIZATIONS[self.normalization])
        img, lab = pad(img, lab, self.crop_size, 0.0, self.ignore_index)
        return img.contiguous(), lab.contiguous()


@dataclass
class SegTestTransform:
    """mmseg test pipeline: keep-ratio resize into img_scale (:func:`keep_ratio_test_size`), normalise."""

    img_scale: tuple[int, int] = (2048, 512)
    normalization: str = "imagenet"
    min_size: int | None = None  # mmseg Resize(min_size=...): the short side is at least this

    def __call__(self, image: np.ndarray) -> Tensor:
        img, _ = to_tensors(image)
        img, _ = resize(img, None, keep_ratio_test_size(img.shape[-2], img.shape[-1], self.img_scale, self.min_size))
        return normalize(img, *NORMALIZATIONS[self.normalization]).contiguous()

