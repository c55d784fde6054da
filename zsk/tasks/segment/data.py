"""ZegCLIP datasets over the shared image+mask readers, label remapping, and the sample-data writer."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from PIL import Image
from torch.utils.data import Dataset

from zsk.core.errors import ZskError
from zsk.data import images as img_io
from zsk.data.seg_transforms import SegTrainTransform
from zsk.tasks.segment import splits
from zsk.tasks.segment.config import DataConfig


class DataError(ZskError):
    """A ``ZskError`` from a dataset item that keeps its one-line message when raised in a DataLoader
    worker: torch re-raises a worker's exception in the main process as ``type(e)(text)``, ``text``
    being "Caught ... in DataLoader worker ... Original Traceback ..."; the last line is the message."""

    def __init__(self, message: str) -> None:
        marker = f"{type(self).__module__}.{type(self).__qualname__}: "
        if message.startswith("Caught ") and marker in message:
            message = message.rsplit(marker, 1)[1].strip()
        super().__init__(message)


def load_item(item: img_io.SegItem, bench: Benchmark) -> tuple[np.ndarray, np.ndarray]:
    """Image and checked label of one item (:func:`zsk.data.images.load_pair`); a bad file is a
    :class:`DataError` naming it, also from a DataLoader worker."""
    try:
        return img_io.load_pair(item, bench.num_classes, bench.reduce_zero_label)
    except DataError:
        raise
    except ZskError as e:
        raise DataError(str(e)) from None


@dataclass
class Benchmark:
    """A dataset with its classes and zero-shot split: everything the task needs to know about labels."""

    dataset: str
    root: Path
    class_names: list[str]
    unseen: tuple[int, ...]
    reduce_zero_label: bool

    @property
    def num_classes(self) -> int:
        return len(self.class_names)

    @property
    def seen(self) -> tuple[int, ...]:
        return splits.seen_ids(self.num_classes, self.unseen)

    def items(self, split: str) -> list[img_io.SegItem]:
        """The split's image/label files."""
        reader = img_io.FORMATS[self.dataset][0]
        return reader(self.root, split)

    def global_lut(self) -> np.ndarray:
        """Table from stored label values to global class ids (255 = ignore)."""
        lut = img_io.reduce_zero_label_lut() if self.reduce_zero_label else np.arange(256, dtype=np.uint8)
        out = lut.astype(np.int64)
        out[out >= self.num_classes] = img_io.IGNORE_INDEX
        return out.astype(np.uint8)


def load_benchmark(cfg: DataConfig) -> Benchmark:
    """Class names, unseen ids and label convention of ``cfg.dataset`` (with the recipe's overrides)."""
    if cfg.dataset not in img_io.FORMATS:
        raise ZskError(f"data.dataset: {cfg.dataset!r} is not one of {', '.join(img_io.FORMATS)}")
    _, names, rzl = img_io.FORMATS[cfg.dataset]
    root = Path(cfg.root).expanduser()
    if names is None:
        names_file = Path(cfg.class_names_file).expanduser() if cfg.class_names_file else root / "classes.txt"
        names = img_io.read_class_names(names_file)
    names = list(names)
    if cfg.reduce_zero_label is not None:
        rzl = cfg.reduce_zero_label
    if cfg.unseen_classes is not None:
        unseen = splits.unseen_from_names(names, cfg.unseen_classes, "data.unseen_classes")
    elif cfg.dataset in splits.UNSEEN_IDS:
        unseen = splits.UNSEEN_IDS[cfg.dataset]
    else:
        unseen = ()
    if len(unseen) >= len(names):
        raise ZskError("data.unseen_classes: every class is unseen; leave at least one seen class to train on")
    return Benchmark(cfg.dataset, root, names, tuple(unseen), rzl)


class SegTrainDataset(Dataset):
    """Training samples: mmseg augmentations on global ids, then labels mapped through ``train_lut``
    (global id -> training id)."""

    def __init__(self, bench: Benchmark, split: str, train_lut: np.ndarray, transform: SegTrainTransform) -> None:
        self.bench = bench
        self.items = bench.items(split)
        if not self.items:
            raise ZskError(f"training split '{split}' of {bench.root} is empty")
        self.lut = bench.global_lut()
        self.train_lut = train_lut
        self.transform = transform

    def __len__(self) -> int:
        return len(self.items)

    def __getitem__(self, idx: int) -> dict[str, torch.Tensor]:
        image, label = load_item(self.items[idx], self.bench)
        # augment on global ids (RandomCrop's cat_max_ratio counts unseen classes too), then map to
        # training ids, as the official segmentor does after the mmseg pipeline (zegclip.py)
        img, lab = self.transform(image, self.lut[label])
        lab = torch.from_numpy(self.train_lut[lab.numpy().astype(np.uint8)].astype(np.int64))
        return {"image": img, "label": lab}


class SegEvalDataset(Dataset):
    """Evaluation samples at their original size: RGB uint8 image and global-id labels."""

    def __init__(self, bench: Benchmark, split: str, max_images: int | None = None) -> None:
        self.bench = bench
        items = bench.items(split)
        self.items = items[:max_images] if max_images else items
        if not self.items:
            raise ZskError(f"evaluation split '{split}' of {bench.root} is empty")
        self.lut = bench.global_lut()

    def __len__(self) -> int:
        return len(self.items)

    def __getitem__(self, idx: int) -> dict:
        image, label = load_item(self.items[idx], self.bench)
        return {"image": torch.from_numpy(image.copy()), "label": torch.from_numpy(self.lut[label].astype(np.int64)),
                "name": self.items[idx].name, "path": str(self.items[idx].image)}


def first_item(batch: list) -> dict:
    """Collate for batch size 1 with variable image sizes."""
    return batch[0]


# ----------------------------------------------------------------------------- sample data
# Classes drawn in the synthetic sample (VOC ids after reduce_zero_label): six seen, two unseen.
SAMPLE_CLASSES: tuple[int, ...] = (0, 2, 6, 7, 11, 14, 16, 18)  # aeroplane bird car cat dog person | sheep train
_SAMPLE_COLOURS = np.array([[230, 40, 40], [40, 200, 40], [40, 60, 230], [235, 220, 40],
                            [200, 40, 220], [40, 220, 220], [250, 140, 20], [120, 80, 40]], dtype=np.float32)


def _draw_sample(rng: np.random.Generator, h: int, w: int) -> tuple[np.ndarray, np.ndarray]:
    """One synthetic image: grey noise background (VOC 0) with 1-3 coloured shapes of sample classes and a
    1-pixel void (255) border around each object, as in VOC annotations."""
    img = np.clip(rng.normal(110, 25, size=(h, w, 1)) + rng.normal(0, 8, size=(h, w, 3)), 0, 255).astype(np.float32)
    label = np.zeros((h, w), dtype=np.uint8)
    yy, xx = np.mgrid[0:h, 0:w]
    for _ in range(int(rng.integers(1, 4))):
        k = int(rng.integers(len(SAMPLE_CLASSES)))
        cls = SAMPLE_CLASSES[k]
        ch, cw = int(rng.integers(h // 4, h // 2 + 1)), int(rng.integers(w // 4, w // 2 + 1))
        cy, cx = int(rng.integers(ch // 2, h - ch // 2)), int(rng.integers(cw // 2, w - cw // 2))
        if rng.random() < 0.5:
            inside = (np.abs(yy - cy) <= ch // 2) & (np.abs(xx - cx) <= cw // 2)
        else:
            inside = ((yy - cy) / (ch / 2)) ** 2 + ((xx - cx) / (cw / 2)) ** 2 <= 1.0
        grown = np.zeros_like(inside)
        grown[1:, :] |= inside[:-1, :]
        grown[:-1, :] |= inside[1:, :]
        grown[:, 1:] |= inside[:, :-1]
        grown[:, :-1] |= inside[:, 1:]
        colour = _SAMPLE_COLOURS[k] + rng.normal(0, 12, size=(h, w, 3)).astype(np.float32)
        img[inside] = colour[inside]
        label[grown & ~inside] = 255
        label[inside] = cls + 1  # VOC PNGs store class k as k + 1 (0 = background)
    return np.clip(img, 0, 255).astype(np.uint8), label


def write_sample(root: str | Path, num_train: int = 48, num_val: int = 12, seed: int = 0) -> Path:
    """Write a small synthetic PASCAL VOC 2012 set (JPEGImages, SegmentationClass palette PNGs,
    ImageSets/Segmentation/{train,val}.txt) under ``root``; deterministic for a seed."""
    root = Path(root)
    (root / "JPEGImages").mkdir(parents=True, exist_ok=True)
    (root / "SegmentationClass").mkdir(parents=True, exist_ok=True)
    sets = root / "ImageSets" / "Segmentation"
    sets.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(seed)
    names: dict[str, list[str]] = {"train": [], "val": []}
    for split, n in (("train", num_train), ("val", num_val)):
        for i in range(n):
            name = f"2026_{split}_{i:04d}"
            h, w = int(rng.integers(96, 129)), int(rng.integers(112, 161))
            image, label = _draw_sample(rng, h, w)
            Image.fromarray(image).save(root / "JPEGImages" / f"{name}.jpg", quality=95)
            img_io.write_label(root / "SegmentationClass" / f"{name}.png", label)
            names[split].append(name)
    for split, lst in names.items():
        (sets / f"{split}.txt").write_text("\n".join(lst) + "\n")
    np.save(root / SAMPLE_EMBEDDINGS, sample_class_embeddings(len(img_io.VOC_CLASSES), SAMPLE_EMBED_DIM, seed))
    return root


# Precomputed class embeddings for the demo, like the .npy files ZegCLIP ships: a random-weight tiny
# CLIP text tower maps class names to nearly parallel vectors (cosine ~0.7-0.98), which a model trained
# for seconds cannot tell apart; the demo uses orthonormal stand-ins of the tiny model's width instead.
SAMPLE_EMBEDDINGS = "class_embeddings_tiny.npy"
SAMPLE_EMBED_DIM = 64


def sample_class_embeddings(num_classes: int, dim: int, seed: int = 0) -> np.ndarray:
    """Orthonormal rows (num_classes, dim) from a seeded Gaussian matrix (QR)."""
    g = np.random.default_rng(seed + 1)
    q, _ = np.linalg.qr(g.normal(size=(dim, num_classes)))
    return q.T.astype(np.float32)
