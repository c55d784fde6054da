"""Continual segmentation data: PASCAL VOC 2012 (+SBD aug, MiB or mmseg layout) and ADE20K readers,
per-step image filtering and label masking (MiB ``filter_images``), the MiB/PLOP transforms, SATS-M
exemplar selection, and the synthetic VOC-layout sample.

Cermelli et al., "Modeling the Background for Incremental Learning in Semantic Segmentation", CVPR 2020
(fcdl94/MiB ``dataset/voc.py``, ``dataset/ade.py``, ``dataset/transform.py``), as used by
QIU023/SATS_Continual_Semantic_Seg.
"""

from __future__ import annotations

import hashlib
import math
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image
from torch import Tensor
from torch.utils.data import Dataset

from zsk.core.cache import default_cache
from zsk.core.errors import ZskError
from zsk.data import images as img_io
from zsk.data.seg_transforms import IMAGENET_MEAN, IMAGENET_STD, normalize, to_tensors
from zsk.tasks.css import increments
from zsk.tasks.css.config import DataConfig

# ADE20K SceneParsing, the 150 classes in the official frequency order (ids 1..150; 0 = "other").
ADE_CLASSES: tuple[str, ...] = (
    "wall", "building", "sky", "floor", "tree", "ceiling", "road", "bed", "windowpane", "grass",
    "cabinet", "sidewalk", "person", "earth", "door", "table", "mountain", "plant", "curtain", "chair",
    "car", "water", "painting", "sofa", "shelf", "house", "sea", "mirror", "rug", "field",
    "armchair", "seat", "fence", "desk", "rock", "wardrobe", "lamp", "bathtub", "railing", "cushion",
    "base", "box", "column", "signboard", "chest of drawers", "counter", "sand", "sink", "skyscraper", "fireplace",
    "refrigerator", "grandstand", "path", "stairs", "runway", "case", "pool table", "pillow", "screen door", "stairway",
    "river", "bridge", "bookcase", "blind", "coffee table", "toilet", "flower", "book", "hill", "bench",
    "countertop", "stove", "palm", "kitchen island", "computer", "swivel chair", "boat", "bar", "arcade machine",
    "hovel", "bus", "towel", "light", "truck", "tower", "chandelier", "awning", "streetlight", "booth",
    "television receiver", "airplane", "dirt track", "apparel", "pole", "land", "bannister", "escalator", "ottoman",
    "bottle", "buffet", "poster", "stage", "van", "ship", "fountain", "conveyer belt", "canopy", "washer",
    "plaything", "swimming pool", "stool", "barrel", "basket", "waterfall", "tent", "bag", "minibike", "cradle",
    "oven", "ball", "food", "step", "tank", "trade name", "microwave", "pot", "animal", "bicycle",
    "lake", "dishwasher", "screen", "blanket", "sculpture", "hood", "sconce", "vase", "traffic light", "tray",
    "ashcan", "fan", "pier", "crt screen", "plate", "monitor", "bulletin board", "shower", "radiator", "glass",
    "clock", "flag",
)
assert len(ADE_CLASSES) == 150

CLASS_NAMES: dict[str, tuple[str, ...]] = {"voc": ("background",) + img_io.VOC_CLASSES,
                                           "ade": ("background",) + ADE_CLASSES}


class DataError(ZskError):
    """A ``ZskError`` raised in a DataLoader worker that keeps its one-line message in the main process."""

    def __init__(self, message: str) -> None:
        marker = f"{type(self).__module__}.{type(self).__qualname__}: "
        if message.startswith("Caught ") and marker in message:
            message = message.rsplit(marker, 1)[1].strip()
        super().__init__(message)


# ----------------------------------------------------------------------------- readers
def ade_items(root: str | Path, split: str) -> list[img_io.SegItem]:
    """ADE20K (ADEChallengeData2016): ``images/{training,validation}/*.jpg`` with
    ``annotations/<split>/<stem>.png`` (0 = other, 1..150 = classes)."""
    root = Path(root)
    for cand in ("", "ADEChallengeData2016"):
        base = root / cand if cand else root
        if (base / "images").is_dir() and (base / "annotations").is_dir():
            break
    else:
        raise ZskError(f"{root}: not an ADE20K folder; expected images/ and annotations/ (ADEChallengeData2016 "
                       "layout) under it; set data.root to that folder")
    name = {"train": "training", "train_aug": "training", "val": "validation"}.get(split, split)
    img_dir = base / "images" / name
    if not img_dir.is_dir():
        raise ZskError(f"ADE20K split folder {img_dir} does not exist; splits are training and validation")
    items = [img_io.SegItem(p.stem, p, base / "annotations" / name / f"{p.stem}.png")
             for p in sorted(img_dir.iterdir()) if p.suffix.lower() in img_io.IMAGE_SUFFIXES]
    if not items:
        raise ZskError(f"ADE20K split folder {img_dir} holds no images")
    return items


def load_items(dcfg: DataConfig, split: str) -> list[img_io.SegItem]:
    """The images of a split in the order of its list file (the order official index lists refer to)."""
    items = img_io.voc_items(dcfg.root, split) if dcfg.dataset == "voc" else ade_items(dcfg.root, split)
    if not items:
        raise ZskError(f"split {split!r} of {dcfg.root} lists no images; fill its list file")
    if dcfg.index_dir is not None and dcfg.dataset == "voc" and (items[0].image.parents[1] / "ImageSets").is_dir():
        # the official .npy lists number the lines of MiB's splits/<split>.txt; mmseg's lists hold another order
        raise ZskError(f"data.index_dir holds indices into MiB's splits/{split}.txt but {dcfg.root} is read in the "
                       "mmseg layout (ImageSets/Segmentation); set data.root to the MiB layout or unset data.index_dir")
    return items


def _present(item: img_io.SegItem, num_classes: int) -> list[int]:
    """The ids in an item's label map, after checking the pair up front: the image's header is readable, the
    label PNG holds valid ids and has the image's size (so a bad file stops the run before training)."""
    if item.label is None:
        raise DataError(f"image {item.image} has no label file")
    try:
        with Image.open(item.image) as im:
            size = im.size
    except FileNotFoundError:
        raise DataError(f"image {item.image} does not exist; every line of the split file needs its image") from None
    except (OSError, ValueError) as e:
        raise DataError(f"image {item.image} cannot be read ({type(e).__name__}); replace or remove the file") from None
    lab = img_io.read_label(item.label)
    if lab.shape != (size[1], size[0]):
        raise DataError(f"label {item.label} has size {lab.shape[1]}x{lab.shape[0]} but image {item.image} is "
                        f"{size[0]}x{size[1]}; masks must match their images")
    vals = np.unique(lab)
    bad = vals[(vals >= num_classes) & (vals != increments.IGNORE)]
    if bad.size:
        raise DataError(f"label {item.label} contains class id(s) {bad[:5].tolist()} but the dataset has ids "
                        f"0..{num_classes - 1} (255 = ignore); fix or remove the file")
    return vals.tolist()


def class_presence(dcfg: DataConfig, split: str, items: Sequence[img_io.SegItem]) -> list[list[int]]:
    """The label ids present in every image of a split, read once and cached (``$ZSK_CACHE/css-presence``):
    the per-step index lists of every task are filtered from it."""
    h = hashlib.sha256()
    for it in items:
        try:
            st = Path(it.label).stat() if it.label is not None else None
        except OSError:
            raise ZskError(f"label {it.label} of image {it.image} does not exist; every image of split {split!r} "
                           "needs its label PNG") from None
        h.update(f"{it.label}|{st.st_size if st else 0}|{st.st_mtime_ns if st else 0}\n".encode())
    n = increments.NUM_CLASSES[dcfg.dataset]
    key = {"dataset": dcfg.dataset, "split": split, "files": h.hexdigest(), "n": len(items)}
    return default_cache().get_or_compute("css-presence", key, lambda: [_present(it, n) for it in items])


def step_indices(presence: Sequence[Sequence[int]], steps: Sequence[Sequence[int]], step: int, *, train: bool,
                 overlap: bool = True, index_dir: str | None = None, split: str = "val") -> list[int]:
    """Indices (into the split's list) of the images of ``step``: training images by MiB's filter, test
    images holding a seen class; or the official ``train-<step>.npy`` / ``test_on_<split>-<step>.npy`` from
    ``data.index_dir`` when it holds them."""
    if index_dir is not None:
        path = Path(index_dir).expanduser() / (f"train-{step}.npy" if train else f"test_on_{split}-{step}.npy")
        if path.is_file():
            try:
                idx = np.load(path, allow_pickle=False).astype(np.int64).reshape(-1).tolist()
            except (ValueError, OSError) as e:
                raise ZskError(f"index list {path} cannot be read ({e}); give a .npy of image indices") from None
            if idx and (min(idx) < 0 or max(idx) >= len(presence)):
                raise ZskError(f"index list {path} points past the split's {len(presence)} images; it belongs to "
                               "another split file")
            return idx
    keep = []
    for i, present in enumerate(presence):
        s = set(present)
        if (increments.keep_for_training(s, steps, step, overlap) if train else increments.keep_for_test(s, steps, step)):
            keep.append(i)
    return keep


# ----------------------------------------------------------------------------- transforms
def random_resized_crop_params(h: int, w: int, scale: tuple[float, float], g: torch.Generator | None,
                               ratio: tuple[float, float] = (3 / 4, 4 / 3)) -> tuple[int, int, int, int]:
    """(top, left, height, width) of torchvision's ``RandomResizedCrop.get_params`` (MiB transform.py):
    10 tries of an area fraction in ``scale`` and a log-uniform aspect ratio, else a central crop."""
    area = h * w
    log_ratio = (math.log(ratio[0]), math.log(ratio[1]))
    for _ in range(10):
        target = area * (scale[0] + (scale[1] - scale[0]) * torch.rand((), generator=g).item())
        aspect = math.exp(log_ratio[0] + (log_ratio[1] - log_ratio[0]) * torch.rand((), generator=g).item())
        cw, ch = int(round(math.sqrt(target * aspect))), int(round(math.sqrt(target / aspect)))
        if 0 < cw <= w and 0 < ch <= h:
            top = int(torch.randint(0, h - ch + 1, (), generator=g))
            left = int(torch.randint(0, w - cw + 1, (), generator=g))
            return top, left, ch, cw
    in_ratio = w / h
    if in_ratio < min(ratio):
        cw, ch = w, int(round(w / min(ratio)))
    elif in_ratio > max(ratio):
        ch, cw = h, int(round(h * max(ratio)))
    else:
        cw, ch = w, h
    return (h - ch) // 2, (w - cw) // 2, ch, cw


def _resize_pair(img: Tensor, lab: Tensor | None, size: tuple[int, int]) -> tuple[Tensor, Tensor | None]:
    """Bilinear (antialiased, as PIL) image and nearest label resize to ``size`` (h, w); the label samples
    pixel centres as PIL's NEAREST does."""
    if tuple(img.shape[-2:]) != tuple(size):
        img = F.interpolate(img[None], size=size, mode="bilinear", align_corners=False, antialias=True)[0]
        if lab is not None:
            lab = F.interpolate(lab[None, None].float(), size=size, mode="nearest-exact")[0, 0].long()
    return img, lab


@dataclass
class TrainTransform:
    """MiB/PLOP training transform: RandomResizedCrop(crop, scale) -> horizontal flip -> ImageNet normalisation."""

    crop_size: int = 512
    scale: tuple[float, float] = (0.5, 2.0)
    flip_prob: float = 0.5

    def __call__(self, image: np.ndarray, label: np.ndarray, g: torch.Generator | None = None) -> tuple[Tensor, Tensor]:
        img, lab = to_tensors(image, label)
        top, left, ch, cw = random_resized_crop_params(img.shape[-2], img.shape[-1], self.scale, g)
        img, lab = img[:, top:top + ch, left:left + cw], lab[top:top + ch, left:left + cw]
        img, lab = _resize_pair(img, lab, (self.crop_size, self.crop_size))
        if torch.rand((), generator=g).item() < self.flip_prob:
            img, lab = img.flip(-1), lab.flip(-1)
        return normalize(img, IMAGENET_MEAN, IMAGENET_STD).contiguous(), lab.contiguous()


def eval_transform(image: np.ndarray, label: np.ndarray | None, crop_size: int,
                   center_crop: bool = True) -> tuple[Tensor, Tensor | None]:
    """MiB validation transform: resize the short side to ``crop_size`` then center-crop a square (or keep
    the resized image), ImageNet normalisation."""
    img, lab = to_tensors(image, label)
    h, w = img.shape[-2:]
    if h <= w:
        size = (crop_size, max(1, int(crop_size * w / h)))
    else:
        size = (max(1, int(crop_size * h / w)), crop_size)
    img, lab = _resize_pair(img, lab, size)
    if center_crop:
        # torchvision's center_crop: offsets round((size - crop) / 2), Python's round half to even
        top, left = int(round((size[0] - crop_size) / 2.0)), int(round((size[1] - crop_size) / 2.0))
        img = img[:, top:top + crop_size, left:left + crop_size]
        lab = None if lab is None else lab[top:top + crop_size, left:left + crop_size]
    return normalize(img, IMAGENET_MEAN, IMAGENET_STD).contiguous(), lab


# ----------------------------------------------------------------------------- datasets
def _load(item: img_io.SegItem) -> tuple[np.ndarray, np.ndarray]:
    try:
        return img_io.load_pair(item)
    except ZskError as e:
        raise DataError(str(e)) from None


class StepTrainDataset(Dataset):
    """Training images of one step with labels through a 256-entry table (MiB label masking)."""

    def __init__(self, items: Sequence[img_io.SegItem], indices: Sequence[int], lut: np.ndarray,
                 transform: TrainTransform) -> None:
        self.items, self.indices, self.lut, self.transform = items, list(indices), lut, transform

    def __len__(self) -> int:
        return len(self.indices)

    def __getitem__(self, i: int) -> dict[str, Tensor]:
        image, label = _load(self.items[self.indices[i]])
        img, lab = self.transform(image, self.lut[label])  # random draws: the loader seeds each sample
        return {"image": img, "label": lab}


class StepTestDataset(Dataset):
    """Test images of one step, labels through the step's test table, MiB validation transform."""

    def __init__(self, items: Sequence[img_io.SegItem], indices: Sequence[int], lut: np.ndarray, crop_size: int,
                 center_crop: bool = True) -> None:
        self.items, self.indices, self.lut = items, list(indices), lut
        self.crop_size, self.center_crop = crop_size, center_crop

    def __len__(self) -> int:
        return len(self.indices)

    def __getitem__(self, i: int) -> dict[str, Tensor | str]:
        item = self.items[self.indices[i]]
        image, label = _load(item)
        img, lab = eval_transform(image, self.lut[label], self.crop_size, self.center_crop)
        return {"image": img, "label": lab, "path": str(item.image)}


def balanced_exemplars(presence: Sequence[Sequence[int]], candidates: Sequence[int], old_classes: Sequence[int],
                       total: int, seed: int = 0) -> list[int]:
    """SATS-M / SSUL-M memory: ``total`` images of the earlier steps' training sets, class-balanced
    (up to ceil(total / |old classes|) images per old foreground class, visited in a seeded order)."""
    fg = [c for c in old_classes if c != 0]
    if total <= 0 or not fg:
        return []
    per_class = math.ceil(total / len(fg))
    order = torch.randperm(len(candidates), generator=torch.Generator().manual_seed(seed)).tolist()
    counts = dict.fromkeys(fg, 0)
    chosen: list[int] = []
    for k in order:
        idx = candidates[k]
        present = [c for c in presence[idx] if c in counts and counts[c] < per_class]
        if present:
            chosen.append(idx)
            for c in present:
                counts[c] += 1
        if len(chosen) >= total:
            break
    return sorted(chosen)


# ----------------------------------------------------------------------------- sample data
SAMPLE_CLASSES = (1, 2, 3, 4, 5)  # aeroplane, bicycle, bird, boat, bottle: a 3-step task [[0..3], [4], [5]]
SAMPLE_COLOURS = {1: (220, 40, 40), 2: (40, 200, 40), 3: (40, 60, 220), 4: (230, 210, 30), 5: (200, 40, 210)}


def _sample_image(rng: np.random.Generator, size: int) -> tuple[np.ndarray, np.ndarray]:
    """One synthetic image: textured grey background with 1-2 coloured shapes, each a class."""
    img = (rng.normal(110, 20, (size, size, 3))).clip(0, 255)
    lab = np.zeros((size, size), np.uint8)
    yy, xx = np.mgrid[:size, :size]
    for c in rng.choice(SAMPLE_CLASSES, size=int(rng.integers(1, 3)), replace=False):
        r = rng.integers(size // 6, size // 3)
        cy, cx = rng.integers(r, size - r, size=2)
        mask = ((yy - cy) ** 2 + (xx - cx) ** 2 <= r * r) if c % 2 else ((abs(yy - cy) <= r) & (abs(xx - cx) <= r))
        img[mask] = np.array(SAMPLE_COLOURS[int(c)]) + rng.normal(0, 12, (int(mask.sum()), 3))
        lab[mask] = c
        edge = mask & ~np.roll(mask, 1, 0)
        lab[edge] = increments.IGNORE  # a void border, as VOC's
    return img.clip(0, 255).astype(np.uint8), lab


def write_sample(out: Path, num_train: int = 40, num_val: int = 12, seed: int = 0, size: int = 64) -> Path:
    """A small synthetic PASCAL VOC 2012 set in the MiB layout (``PascalVOC12/JPEGImages``,
    ``SegmentationClassAug``, ``splits/{train_aug,val}.txt`` with "/JPEGImages/x.jpg /SegmentationClassAug/x.png"
    lines) holding VOC classes 1..5, enough for the 3-step demo task [[0, 1, 2, 3], [4], [5]]."""
    root = Path(out) / "PascalVOC12"
    (root / "JPEGImages").mkdir(parents=True, exist_ok=True)
    (root / "SegmentationClassAug").mkdir(parents=True, exist_ok=True)
    (root / "splits").mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(seed)
    for split, n in (("train_aug", num_train), ("val", num_val)):
        lines = []
        for i in range(n):
            name = f"{split}_{i:04d}"
            img, lab = _sample_image(rng, size)
            Image.fromarray(img).save(root / "JPEGImages" / f"{name}.jpg", quality=95)
            img_io.write_label(root / "SegmentationClassAug" / f"{name}.png", lab)
            lines.append(f"/JPEGImages/{name}.jpg /SegmentationClassAug/{name}.png")
        (root / "splits" / f"{split}.txt").write_text("\n".join(lines) + "\n")
    return root
