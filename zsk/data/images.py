"""Image + mask folder readers: PASCAL VOC 2012 (+ SBD aug), COCO-Stuff 164K, PASCAL Context 59, generic.

Every reader returns a list of :class:`SegItem` (image path, label path, name) for one split and
the dataset's class names. :func:`read_image` / :func:`read_label` validate what they open and fail
with a :class:`ZskError` naming the file. Labels are kept as stored on disk (uint8); the
``reduce_zero_label`` mapping of mmseg (0 -> 255, k -> k-1) is :func:`reduce_zero_label_lut`.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from PIL import Image, UnidentifiedImageError
from PIL.Image import DecompressionBombError

from zsk.core.errors import ZskError

IGNORE_INDEX = 255
IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png", ".bmp", ".tif", ".tiff", ".webp")

# PASCAL VOC 2012 object classes, ids 1..20 in the PNGs (0 background, 255 void); listed here after
# reduce_zero_label (ids 0..19). Source: the VOC2012 devkit (VOCdevkit/VOCcode/VOCinit.m).
VOC_CLASSES: tuple[str, ...] = (
    "aeroplane", "bicycle", "bird", "boat", "bottle", "bus", "car", "cat", "chair", "cow",
    "diningtable", "dog", "horse", "motorbike", "person", "pottedplant", "sheep", "sofa", "train", "tvmonitor",
)

# COCO-Stuff 164K, the 171 classes of the `*_labelTrainIds.png` files (ids 0..170, 255 unlabeled)
# written by mmseg's tools/convert_datasets/coco_stuff164k.py; order as in mmseg's COCOStuffDataset
# and ZegCLIP's get_embedding.ipynb.
COCO_STUFF_171_CLASSES: tuple[str, ...] = (
    "person", "bicycle", "car", "motorcycle", "airplane", "bus", "train", "truck", "boat", "traffic light",
    "fire hydrant", "stop sign", "parking meter", "bench", "bird", "cat", "dog", "horse", "sheep", "cow",
    "elephant", "bear", "zebra", "giraffe", "backpack", "umbrella", "handbag", "tie", "suitcase", "frisbee",
    "skis", "snowboard", "sports ball", "kite", "baseball bat", "baseball glove", "skateboard", "surfboard",
    "tennis racket", "bottle", "wine glass", "cup", "fork", "knife", "spoon", "bowl", "banana", "apple",
    "sandwich", "orange", "broccoli", "carrot", "hot dog", "pizza", "donut", "cake", "chair", "couch",
    "potted plant", "bed", "dining table", "toilet", "tv", "laptop", "mouse", "remote", "keyboard",
    "cell phone", "microwave", "oven", "toaster", "sink", "refrigerator", "book", "clock", "vase", "scissors",
    "teddy bear", "hair drier", "toothbrush", "banner", "blanket", "branch", "bridge", "building-other",
    "bush", "cabinet", "cage", "cardboard", "carpet", "ceiling-other", "ceiling-tile", "cloth", "clothes",
    "clouds", "counter", "cupboard", "curtain", "desk-stuff", "dirt", "door-stuff", "fence", "floor-marble",
    "floor-other", "floor-stone", "floor-tile", "floor-wood", "flower", "fog", "food-other", "fruit",
    "furniture-other", "grass", "gravel", "ground-other", "hill", "house", "leaves", "light", "mat", "metal",
    "mirror-stuff", "moss", "mountain", "mud", "napkin", "net", "paper", "pavement", "pillow", "plant-other",
    "plastic", "platform", "playingfield", "railing", "railroad", "river", "road", "rock", "roof", "rug",
    "salad", "sand", "sea", "shelf", "sky-other", "skyscraper", "snow", "solid-other", "stairs", "stone",
    "straw", "structural-other", "table", "tent", "textile-other", "towel", "tree", "vegetable", "wall-brick",
    "wall-concrete", "wall-other", "wall-panel", "wall-stone", "wall-tile", "wall-wood", "water-other",
    "waterdrops", "window-blind", "window-other", "wood",
)

# PASCAL Context, the 59 most frequent classes (ids 1..59 in SegmentationClassContext, 0 background),
# listed after reduce_zero_label; order as in mmseg's PascalContextDataset59, names as in the zero-shot
# Context dataset of OTSeg on the ZegCLIP code base (cubeyoung/OTSeg, ZeroPascalContextDataset59:
# "tv monitor", where mmseg writes "tvmonitor"); the names are what the text encoder embeds.
PASCAL_CONTEXT_59_CLASSES: tuple[str, ...] = (
    "aeroplane", "bag", "bed", "bedclothes", "bench", "bicycle", "bird", "boat", "book", "bottle",
    "building", "bus", "cabinet", "car", "cat", "ceiling", "chair", "cloth", "computer", "cow",
    "cup", "curtain", "dog", "door", "fence", "floor", "flower", "food", "grass", "ground",
    "horse", "keyboard", "light", "motorbike", "mountain", "mouse", "person", "plate", "platform", "pottedplant",
    "road", "rock", "sheep", "shelves", "sidewalk", "sign", "sky", "snow", "sofa", "table",
    "track", "train", "tree", "truck", "tv monitor", "wall", "water", "window", "wood",
)

# PASCAL Context with its background class (60 classes, ids 0..59 as stored, no reduce_zero_label): the
# target of ZegCLIP's cross-dataset configs/cross_dataset/coco-to-context.py (mmseg's PascalContextDataset).
PASCAL_CONTEXT_60_CLASSES: tuple[str, ...] = ("background",) + PASCAL_CONTEXT_59_CLASSES


@dataclass(frozen=True)
class SegItem:
    """One image with its label file (``label`` is None for unlabeled images)."""

    name: str
    image: Path
    label: Path | None


def voc_palette(n: int = 256) -> np.ndarray:
    """The PASCAL VOC colour map (n, 3) uint8: bits of the index spread over R, G, B."""
    idx = np.arange(n)
    pal = np.zeros((n, 3), dtype=np.int64)
    for shift in range(8):
        for ch in range(3):
            bit = (idx >> (3 * shift + ch)) & 1
            pal[:, ch] |= bit << (7 - shift)
    return pal.astype(np.uint8)


def read_image(path: str | Path) -> np.ndarray:
    """RGB image (H, W, 3) uint8; an unreadable file is a ZskError naming it."""
    p = Path(path)
    try:
        with Image.open(p) as im:
            return np.array(im.convert("RGB"))
    except FileNotFoundError as e:
        raise ZskError(f"image {p} does not exist") from e
    except DecompressionBombError as e:
        raise ZskError(f"image {p} is too large to open safely ({e}); downscale it first") from e
    except (UnidentifiedImageError, OSError, ValueError) as e:
        raise ZskError(f"image {p} cannot be read ({type(e).__name__}); replace or remove the file") from e


def read_label(path: str | Path) -> np.ndarray:
    """Label map (H, W) uint8: palette PNGs give their indices, grey PNGs their values."""
    p = Path(path)
    try:
        with Image.open(p) as im:
            if im.mode not in ("P", "L", "I", "I;16", "1"):
                raise ZskError(f"label {p} has image mode {im.mode}; expected a single-channel or palette PNG of class ids")
            arr = np.array(im)
    except FileNotFoundError as e:
        raise ZskError(f"label {p} does not exist") from e
    except DecompressionBombError as e:
        raise ZskError(f"label {p} is too large to open safely ({e})") from e
    except (UnidentifiedImageError, OSError, ValueError) as e:
        raise ZskError(f"label {p} cannot be read ({type(e).__name__}); replace or remove the file") from e
    if arr.dtype != np.uint8:
        if arr.max(initial=0) > 255 or arr.min(initial=0) < 0:
            raise ZskError(f"label {p} has values outside 0..255; class ids must fit in uint8 with 255 = ignore")
        arr = arr.astype(np.uint8)
    return arr


def write_label(path: str | Path, label: np.ndarray, palette: np.ndarray | None = None) -> None:
    """Write a label map as a palette PNG (VOC colours by default)."""
    im = Image.fromarray(label.astype(np.uint8), mode="P")
    im.putpalette((voc_palette() if palette is None else palette).reshape(-1).tolist())
    im.save(path)


def load_pair(item: SegItem, num_classes: int | None = None, reduce_zero_label: bool = False) -> tuple[np.ndarray, np.ndarray]:
    """Image and label of one item, checked: equal sizes, ids < num_classes (after the zero-label shift) or 255."""
    img = read_image(item.image)
    if item.label is None:
        raise ZskError(f"image {item.image} has no label file")
    lab = read_label(item.label)
    if lab.shape != img.shape[:2]:
        raise ZskError(
            f"label {item.label} has size {lab.shape[1]}x{lab.shape[0]} but image {item.image} is "
            f"{img.shape[1]}x{img.shape[0]}; masks must match their images"
        )
    if num_classes is not None:
        valid_max = num_classes if reduce_zero_label else num_classes - 1
        vals = np.unique(lab)
        bad = vals[(vals > valid_max) & (vals != IGNORE_INDEX)]
        if bad.size:
            raise ZskError(
                f"label {item.label} contains class id(s) {bad[:5].tolist()} but the dataset has {num_classes} classes "
                f"(valid ids 0..{valid_max}, 255 = ignore)"
            )
    return img, lab


def reduce_zero_label_lut() -> np.ndarray:
    """mmseg's reduce_zero_label as a 256-entry table: 0 -> 255, k -> k-1, 255 stays 255."""
    lut = np.arange(256, dtype=np.int64) - 1
    lut[0] = IGNORE_INDEX
    lut[IGNORE_INDEX] = IGNORE_INDEX
    return lut.astype(np.uint8)


def _first_dir(root: Path, candidates: Sequence[str], must_have: Sequence[str], what: str) -> Path:
    for c in candidates:
        base = root / c if c else root
        if all((base / m).exists() for m in must_have):
            return base
    raise ZskError(
        f"{root}: not a {what} folder; expected {', '.join(must_have)} under it or under "
        f"{' or '.join(c for c in candidates if c)}; set data.root to the dataset folder"
    )


def _read_list(path: Path) -> list[str]:
    if not path.is_file():
        raise ZskError(f"split file {path} does not exist")
    try:
        return [ln.strip() for ln in path.read_text(encoding="utf-8").splitlines() if ln.strip()]
    except UnicodeDecodeError as e:
        raise ZskError(f"split file {path} is not UTF-8 text ({e.reason} at byte {e.start}); write one image "
                       "name per line") from None
    except OSError as e:
        raise ZskError(f"split file {path} cannot be read ({e.strerror})") from None


def voc_items(root: str | Path, split: str) -> list[SegItem]:
    """PASCAL VOC 2012 in the mmseg layout (``ImageSets/Segmentation/{train,aug,val}.txt``) or MiB's.

    mmseg: ``JPEGImages/``, ``SegmentationClass/`` (train/val) and ``SegmentationClassAug/`` (SBD aug);
    split ``train_aug`` is train.txt + aug.txt without duplicates (10,582 images).
    MiB (``zsk css``): ``splits/{train_aug,val}.txt`` with lines "/JPEGImages/x.jpg /SegmentationClassAug/x.png".
    """
    root = Path(root)
    for cand in ("", "VOC2012", "VOCdevkit/VOC2012", "PascalVOC12"):
        base = root / cand if cand else root
        if (base / "ImageSets" / "Segmentation").is_dir() and (base / "JPEGImages").is_dir():
            return _voc_mmseg(base, split)
        if (base / "splits").is_dir() and (base / "JPEGImages").is_dir():
            return _voc_mib(base, split)
    raise ZskError(
        f"{root}: not a PASCAL VOC 2012 folder; expected JPEGImages/ with ImageSets/Segmentation/ (mmseg layout) "
        "or splits/ (MiB layout) under it, VOC2012/ or VOCdevkit/VOC2012/; set data.root to that folder"
    )


def _voc_mmseg(base: Path, split: str) -> list[SegItem]:
    sets = base / "ImageSets" / "Segmentation"
    parts = {"train": [("train", "SegmentationClass")], "aug": [("aug", "SegmentationClassAug")],
             "train_aug": [("aug", "SegmentationClassAug"), ("train", "SegmentationClass")],
             "val": [("val", "SegmentationClass")]}
    if split not in parts and not (sets / f"{split}.txt").is_file():
        raise ZskError(f"unknown VOC split '{split}'; choose train, aug, train_aug, val or a file name in {sets}")
    items: dict[str, SegItem] = {}
    for list_name, ann in parts.get(split, [(split, "SegmentationClass")]):
        for name in _read_list(sets / f"{list_name}.txt"):
            if name not in items:
                items[name] = SegItem(name, base / "JPEGImages" / f"{name}.jpg", base / ann / f"{name}.png")
    return list(items.values())


def _voc_mib(base: Path, split: str) -> list[SegItem]:
    name = {"train": "train_aug"}.get(split, split)
    items = []
    for line in _read_list(base / "splits" / f"{name}.txt"):
        fields = line.split()
        if len(fields) != 2:
            raise ZskError(f"{base / 'splits' / (name + '.txt')}: line '{line}' must hold an image and a label path")
        img, lab = (base / f.lstrip("/") for f in fields)
        items.append(SegItem(img.stem, img, lab))
    return items


def coco_stuff_items(root: str | Path, split: str) -> list[SegItem]:
    """COCO-Stuff 164K: ``images/{train2017,val2017}/*.jpg`` with ``annotations/<split>/*_labelTrainIds.png``."""
    base = _first_dir(Path(root), ("", "coco_stuff164k"), ("images", "annotations"), "COCO-Stuff 164K")
    split = {"train": "train2017", "val": "val2017"}.get(split, split)
    img_dir, ann_dir = base / "images" / split, base / "annotations" / split
    if not img_dir.is_dir():
        raise ZskError(f"COCO-Stuff split folder {img_dir} does not exist; splits are train2017 and val2017")
    items = []
    for img in sorted(p for p in img_dir.iterdir() if p.suffix.lower() in IMAGE_SUFFIXES):
        items.append(SegItem(img.stem, img, ann_dir / f"{img.stem}_labelTrainIds.png"))
    if not items:
        raise ZskError(f"COCO-Stuff split folder {img_dir} holds no images")
    return items


def context_items(root: str | Path, split: str) -> list[SegItem]:
    """PASCAL Context 59 (mmseg layout): ``JPEGImages/``, ``SegmentationClassContext/`` and the split list
    in ``ImageSets/SegmentationContext/<split>.txt`` or ``<split>.txt`` at the VOC2010 root."""
    base = _first_dir(Path(root), ("", "VOC2010", "VOCdevkit/VOC2010"), ("JPEGImages", "SegmentationClassContext"),
                      "PASCAL Context (VOC2010)")
    lst = base / "ImageSets" / "SegmentationContext" / f"{split}.txt"
    if not lst.is_file():
        lst = base / f"{split}.txt"
    return [SegItem(n, base / "JPEGImages" / f"{n}.jpg", base / "SegmentationClassContext" / f"{n}.png") for n in _read_list(lst)]


def folder_items(root: str | Path, split: str) -> list[SegItem]:
    """Generic layout: ``images/[<split>/]*.jpg|png`` with ``masks/[<split>/]<stem>.png`` (ids, 255 ignore)."""
    base = Path(root)
    img_dir = base / "images" / split if (base / "images" / split).is_dir() else base / "images"
    mask_dir = base / "masks" / split if (base / "masks" / split).is_dir() else base / "masks"
    if not img_dir.is_dir():
        raise ZskError(f"{base}: expected an images/ folder (images/<split>/ optional) with masks/ beside it")
    items = [SegItem(p.stem, p, mask_dir / f"{p.stem}.png")
             for p in sorted(img_dir.iterdir()) if p.suffix.lower() in IMAGE_SUFFIXES]
    if not items:
        raise ZskError(f"image folder {img_dir} holds no images ({', '.join(IMAGE_SUFFIXES)})")
    return items


def read_class_names(path: str | Path) -> list[str]:
    """Class names, one a line (line i = class id i); empty lines and '#' comments skipped."""
    p = Path(path)
    if not p.is_file():
        state = "is a folder" if p.is_dir() else "does not exist"
        raise ZskError(f"class-name file {p} {state}; write one class name per line (line i = id i)")
    try:
        text = p.read_text(encoding="utf-8")
    except UnicodeDecodeError as e:
        raise ZskError(f"class-name file {p} is not UTF-8 text ({e.reason} at byte {e.start}); write one class "
                       "name per line") from None
    except OSError as e:
        raise ZskError(f"class-name file {p} cannot be read ({e.strerror})") from None
    names = [ln.strip() for ln in text.splitlines() if ln.strip() and not ln.strip().startswith("#")]
    if not names:
        raise ZskError(f"class-name file {p} is empty; write one class name per line")
    dup = sorted({n for n in names if names.count(n) > 1})
    if dup:
        raise ZskError(f"class-name file {p} repeats {dup[:3]}; class names must be unique")
    return names


# Readers by format name: (items(root, split), class names or None when read from a file, reduce_zero_label).
FORMATS: dict[str, tuple] = {
    "voc": (voc_items, VOC_CLASSES, True),
    "coco_stuff": (coco_stuff_items, COCO_STUFF_171_CLASSES, False),
    "context": (context_items, PASCAL_CONTEXT_59_CLASSES, True),
    "context60": (context_items, PASCAL_CONTEXT_60_CLASSES, False),
    "folder": (folder_items, None, False),
}
