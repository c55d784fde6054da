"""Data of the contrast task: the benchmarks' splits (zsk.data.classification readers), MetAug's transforms
(RandomResizedCrop + flip -> Lab -> per-channel normalisation, jiangmengli/metaug `train_MetAug.py`; Resize +
CenterCrop for the probe's test images, `LinearProbing_MetAug.py`), the (image, label, index) dataset that
addresses the memory bank (official `ImageFolderInstance`), and the synthetic sample set.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import torch
from PIL import Image
from torch import Tensor
from torch.utils.data import Dataset
from torchvision import transforms

from zsk.core.errors import ZskError
from zsk.data.classification import (
    ClassificationImages,
    cifar_split,
    folder_split,
    stl10_split,
    tiny_imagenet_split,
)
from zsk.data.colorspace import LAB_MEAN, LAB_STD, rgb_to_lab
from zsk.data.images import read_class_names
from zsk.tasks.contrast.config import DataConfig


def read_split(cfg: DataConfig, split: str, pretrain: bool = False) -> ClassificationImages:
    """The images of `split` in the recipe's format (STL-10 pretraining adds the unlabelled images)."""
    root = Path(cfg.root)
    if not root.is_dir():
        raise ZskError(f"data.root {root} does not exist; set data.root to the dataset folder "
                       "(or `zsk contrast sample DIR` for a small synthetic set)")
    if cfg.format == "folder":
        classes = read_class_names(root / cfg.class_list) if cfg.class_list else None
        images = folder_split(root, split, classes)
    elif cfg.format == "tiny_imagenet":
        images = tiny_imagenet_split(root, split)
    elif cfg.format in ("cifar10", "cifar100"):
        images = cifar_split(root, split, cfg.format)
    else:
        images = stl10_split(root, split, unlabeled=pretrain and cfg.stl10_unlabeled)
    return images.head(cfg.max_images)


def to_lab_tensor(rgb: np.ndarray) -> Tensor:
    """(H, W, 3) uint8 RGB -> (3, H, W) float32 Lab, normalised per channel (CMC / MetAug constants)."""
    lab = (rgb_to_lab(rgb) - np.asarray(LAB_MEAN)) / np.asarray(LAB_STD)
    return torch.from_numpy(lab.transpose(2, 0, 1).astype(np.float32))


def train_transform(cfg: DataConfig) -> transforms.Compose:
    """RandomResizedCrop(image_size, crop_scale) + horizontal flip on the PIL image (then Lab, see `LabImages`)."""
    return transforms.Compose([transforms.RandomResizedCrop(cfg.image_size, scale=tuple(cfg.crop_scale)),
                               transforms.RandomHorizontalFlip()])


def test_transform(cfg: DataConfig) -> transforms.Compose:
    """Resize(image_size * 256 / 224) + CenterCrop(image_size) (LinearProbing_MetAug.py's validation)."""
    resize = cfg.resize or round(cfg.image_size * 256 / 224)
    return transforms.Compose([transforms.Resize(resize), transforms.CenterCrop(cfg.image_size)])


class LabImages(Dataset):
    """(normalised Lab image, label, index) triples; the index addresses the memory bank."""

    def __init__(self, images: ClassificationImages, transform: Any) -> None:
        self.images = images
        self.transform = transform

    def __len__(self) -> int:
        return len(self.images)

    def __getitem__(self, i: int) -> tuple[Tensor, int, int]:
        pil = Image.fromarray(self.images.image(i))
        return to_lab_tensor(np.asarray(self.transform(pil), dtype=np.uint8)), int(self.images.labels[i]), i


def labelled(images: ClassificationImages) -> ClassificationImages:
    """Only the labelled images (STL-10's unlabelled ones carry label -1)."""
    keep = images.labels >= 0
    return images if keep.all() else images.subset(np.nonzero(keep)[0])


# ----------------------------------------------------------------------------- sample data

SAMPLE_CLASSES = ("red_stripes", "green_dots", "blue_checks", "yellow_rings")


def sample_image(label: int, rng: np.random.Generator, size: int = 48) -> np.ndarray:
    """One synthetic RGB image of class `label`: a class colour and a class texture, with random phase, scale
    and noise (learnable from colour (ab view) and from structure (L view))."""
    yy, xx = np.mgrid[0:size, 0:size].astype(np.float64)
    period = rng.uniform(6, 10)
    phase = rng.uniform(0, 2 * np.pi)
    if label == 0:
        pattern = np.sin(2 * np.pi * xx / period + phase)
    elif label == 1:
        pattern = np.sin(2 * np.pi * xx / period + phase) * np.sin(2 * np.pi * yy / period + phase)
    elif label == 2:
        pattern = np.sign(np.sin(2 * np.pi * xx / period + phase) * np.sin(2 * np.pi * yy / period))
    else:
        cy, cx = rng.uniform(0.3, 0.7, 2) * size
        pattern = np.sin(2 * np.pi * np.hypot(yy - cy, xx - cx) / period + phase)
    colours = np.array([[200, 40, 40], [40, 180, 60], [50, 70, 210], [220, 200, 40]], dtype=np.float64)
    base = colours[label] + rng.normal(0, 25, 3)
    img = base[None, None] * (0.6 + 0.4 * pattern[..., None]) + rng.normal(0, 12, (size, size, 3))
    return np.clip(img, 0, 255).astype(np.uint8)


def write_sample(out: Path, per_class_train: int = 24, per_class_val: int = 8, seed: int = 0,
                 size: int = 48) -> dict[str, Any]:
    """A small synthetic image-folder set: `train/<class>/*.png` and `val/<class>/*.png`, 4 classes."""
    rng = np.random.default_rng(seed)
    counts = {"train": per_class_train, "val": per_class_val}
    for split, n in counts.items():
        for k, name in enumerate(SAMPLE_CLASSES):
            folder = Path(out) / split / name
            folder.mkdir(parents=True, exist_ok=True)
            for i in range(n):
                Image.fromarray(sample_image(k, rng, size)).save(folder / f"{name}_{i:03d}.png")
    return {"classes": list(SAMPLE_CLASSES), "train": per_class_train * len(SAMPLE_CLASSES),
            "val": per_class_val * len(SAMPLE_CLASSES)}
