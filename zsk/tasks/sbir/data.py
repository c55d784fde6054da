"""Sketch/photo datasets of ACNet (leftthomas/ACNet ``utils.py``: ``DomainDataset``, ``get_transform``).

Two on-disk layouts: ACNet's ``<root>/{train,val}/{sketch,photo}/<class>/*.jpg`` (``split: folders``) and the
flat ``{sketch_dir,photo_dir}/<class>/*`` of the full datasets with an unseen-class list file (the named
splits of :mod:`zsk.tasks.sbir.splits`). Training items are sketches, each paired with a photo of its class
drawn at random; evaluation uses the unseen sketches as queries and the unseen photos as the gallery.
Images are read as RGB, resized to ``image_size`` squared (bilinear), randomly flipped for training and
normalised with mean = std = 0.5, i.e. to [-1, 1] as the generator's tanh output.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch.utils.data import Dataset

from zsk.core.errors import ZskError
from zsk.core.progress import log
from zsk.data.images import read_image
from zsk.tasks.sbir.config import DataConfig
from zsk.tasks.sbir.splits import SPLITS, parse_class_list


@dataclass
class DomainSplit:
    """One split: class names (index = label), sketches and photos with their labels."""

    classes: list[str]
    sketches: list[tuple[Path, int]]
    photos: list[tuple[Path, int]]
    dropped: list[str]  # classes left out by data.min_val_photos

    def photos_of(self) -> dict[int, list[Path]]:
        out: dict[int, list[Path]] = {i: [] for i in range(len(self.classes))}
        for path, label in self.photos:
            out[label].append(path)
        return out


def class_order(names: Sequence[str]) -> list[str]:
    """Classes in the order ACNet numbers them: by first appearance in the sorted list of image paths, i.e.
    sorted by ``name + "/"`` (``alarm clock`` comes before ``alarm``, as ``' ' < '/'``)."""
    return sorted(names, key=lambda n: n + "/")


def list_images(folder: Path, suffixes: Sequence[str]) -> list[Path]:
    """The image files of one class folder, sorted."""
    suffixes = tuple(s.lower() for s in suffixes)
    return sorted(p for p in folder.iterdir() if p.is_file() and p.suffix.lower() in suffixes)


def scan_domain(folder: Path, suffixes: Sequence[str], what: str) -> dict[str, list[Path]]:
    """``{class: sorted image files}`` of a folder of class folders; a missing folder, no class folder or an
    empty class folder is a ZskError naming it."""
    if not folder.is_dir():
        raise ZskError(f"{what} folder {folder} does not exist; check data.root (layout "
                       "<root>/{train,val}/{sketch,photo}/<class>/*.jpg) or create it")
    classes = {}
    for sub in sorted(p for p in folder.iterdir() if p.is_dir()):
        files = list_images(sub, suffixes)
        if not files:
            raise ZskError(f"{what} class folder {sub} holds no image ({', '.join(suffixes)}); add images or remove it")
        classes[sub.name] = files
    if not classes:
        raise ZskError(f"{what} folder {folder} holds no class folder; expected {folder}/<class>/*.jpg")
    return classes


def _fill(root: str, template: str) -> Path:
    return Path(template.replace("{root}", root))


def _read_list(path: Path) -> list[str]:
    try:
        names = parse_class_list(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError) as e:
        raise ZskError(f"unseen-class list {path} cannot be read ({type(e).__name__}); give a UTF-8 text file") from None
    if len(set(names)) != len(names):
        raise ZskError(f"unseen-class list {path} names a class twice; list each unseen class once")
    return names


def read_unseen_list(d: DataConfig) -> tuple[list[str], str]:
    """The unseen classes of a named split and where they came from: ``data.unseen_list``, else the first of the
    split's files in the dataset (SAKE's ``cname_cid_zero.txt``) with the split's class count, else the list
    shipped in :mod:`zsk.tasks.sbir.splits`."""
    split = SPLITS[d.split]
    name = split.source.split(":")[0]
    if d.unseen_list:
        path = _fill(d.root, d.unseen_list)
        if not path.is_file():
            raise ZskError(f"unseen-class list {path} (data.unseen_list) not found; give an existing file (one class "
                           f"per line, or SAKE's cname_cid_zero.txt), or --set data.unseen_list=null for the {d.split} list zsk ships")
        names = _read_list(path)
        if len(names) != split.num_unseen:
            raise ZskError(f"unseen-class list {path} has {len(names)} classes, split {d.split} has {split.num_unseen} "
                           f"({name}); give the split's list or choose another data.split")
        return names, str(path)
    # SAKE's archive keeps other splits' lists in sibling folders (zeroshot1 = 25 classes), so a file with another
    # class count is another split's, not this one's
    for template in split.default_lists:
        path = _fill(d.root, template)
        if path.is_file():
            names = _read_list(path)
            if len(names) != split.num_unseen:
                log(f"note: {path} lists {len(names)} classes, not the {split.num_unseen} of {d.split}; not used")
                continue
            if set(names) != set(split.classes):
                log(f"note: {path} differs from the published {d.split} list in {len(set(names) ^ set(split.classes))} "
                    "class names; the file is used")
            return names, str(path)
    return list(split.classes), f"the {d.split} split ({name})"


def _paired(sketches: dict[str, list[Path]], photos: dict[str, list[Path]], classes: list[str], where: str,
            min_photos: int = 0) -> DomainSplit:
    kept, dropped = [], []
    for c in classes:
        if c not in photos:
            raise ZskError(f"class {c!r} has sketches but no photo folder in {where}; add {where}/{c}/ with its photos")
        if len(photos[c]) < min_photos:
            dropped.append(c)
        else:
            kept.append(c)
    if not kept:
        raise ZskError(f"no class of {where} has data.min_val_photos = {min_photos} photos; lower data.min_val_photos")
    sk = [(p, i) for i, c in enumerate(kept) for p in sketches[c]]
    ph = [(p, i) for i, c in enumerate(kept) for p in photos[c]]
    return DomainSplit(kept, sk, ph, dropped)


def read_split(d: DataConfig, split: str) -> DomainSplit:
    """The ``train`` (seen classes) or ``val`` (unseen classes) split of the recipe's data.

    ``val`` drops classes with fewer than ``data.min_val_photos`` photos (ACNet's TU-Berlin rule)."""
    if split not in ("train", "val"):
        raise ZskError(f"unknown split {split!r}: sbir has 'train' (seen classes) and 'val' (unseen classes)")
    root = Path(d.root)
    if not root.is_dir():
        raise ZskError(f"data.root {root} does not exist; point it at the dataset folder (or run `zsk sbir sample DIR`)")
    min_photos = d.min_val_photos if split == "val" else 0
    if d.split == "folders":
        base = root / split
        sketches = scan_domain(base / "sketch", d.suffixes, f"{split} sketch")
        photos = scan_domain(base / "photo", d.suffixes, f"{split} photo")
        return _paired(sketches, photos, class_order(sketches), str(base / "photo"), min_photos)
    sketch_dir, photo_dir = _fill(d.root, d.sketch_dir), _fill(d.root, d.photo_dir)
    sketches = scan_domain(sketch_dir, d.suffixes, "sketch")
    photos = scan_domain(photo_dir, d.suffixes, "photo")
    unseen, path = read_unseen_list(d)
    missing = [c for c in unseen if c not in sketches]
    if missing:
        raise ZskError(f"unseen class {missing[0]!r} of {path} has no folder in {sketch_dir}; the class names of the "
                       "list must match the class folders (another list: --set data.unseen_list=FILE)")
    wanted = unseen if split == "val" else [c for c in sketches if c not in set(unseen)]
    return _paired(sketches, photos, class_order(wanted), str(photo_dir), min_photos)


def load_split(d: DataConfig, split: str) -> DomainSplit:
    """:func:`read_split`, logging the classes left out by ``data.min_val_photos``."""
    out = read_split(d, split)
    if out.dropped:
        log(f"{split}: {len(out.dropped)} classes with < {d.min_val_photos} photos left out: {', '.join(out.dropped)}")
    return out


def load_image(path: Path, size: int, flip: bool = False) -> torch.Tensor:
    """(3, size, size) in [-1, 1]: RGB, bilinear resize (PIL, as torchvision's Resize on a PIL image), optional
    horizontal flip, ToTensor, Normalize(0.5, 0.5)."""
    from PIL import Image

    img = Image.fromarray(read_image(path)).resize((size, size), Image.BILINEAR)
    if flip:
        img = img.transpose(Image.FLIP_LEFT_RIGHT)
    x = torch.from_numpy(np.asarray(img, dtype=np.float32) / 255.0).permute(2, 0, 1)
    return (x - 0.5) / 0.5


class SketchPhotoPairs(Dataset):
    """Training items: every training sketch with a photo of its class drawn at random (ACNet's ``refs``),
    each flipped with probability 0.5 when ``flip``. Randomness comes from torch's generator, which the
    trainer seeds per sample."""

    def __init__(self, split: DomainSplit, image_size: int, flip: bool = True) -> None:
        self.items = split.sketches
        self.refs = split.photos_of()
        for label, photos in self.refs.items():
            if not photos:
                raise ZskError(f"training class {split.classes[label]!r} has no photo; every sketch needs a photo of its class")
        self.size, self.flip = image_size, flip

    def __len__(self) -> int:
        return len(self.items)

    def __getitem__(self, index: int) -> dict[str, Any]:
        path, label = self.items[index]
        refs = self.refs[label]
        ref = refs[int(torch.randint(len(refs), ()))]
        flips = torch.rand(2) < 0.5 if self.flip else torch.zeros(2, dtype=torch.bool)
        return {"sketch": load_image(path, self.size, bool(flips[0])), "photo": load_image(ref, self.size, bool(flips[1])),
                "label": label}


class ImageFiles(Dataset):
    """Evaluation images (no augmentation)."""

    def __init__(self, paths: Sequence[Path], image_size: int) -> None:
        self.paths, self.size = list(paths), image_size

    def __len__(self) -> int:
        return len(self.paths)

    def __getitem__(self, index: int) -> torch.Tensor:
        return load_image(self.paths[index], self.size)


# ----------------------------------------------------------------------------- synthetic sample set

SAMPLE_TRAIN = ("circle", "square", "triangle", "cross", "hbar", "vbar")
SAMPLE_VAL = ("ring", "diamond", "plus_ring")


def _draw(kind: str, draw: Any, box: tuple[float, float, float, float], outline: Any, fill: Any, width: int) -> None:
    x0, y0, x1, y1 = box
    cx, cy, w, h = (x0 + x1) / 2, (y0 + y1) / 2, x1 - x0, y1 - y0
    if kind in ("circle", "ring"):
        draw.ellipse(box, outline=outline, fill=fill, width=width)
        if kind == "ring":
            draw.ellipse((cx - w / 4, cy - h / 4, cx + w / 4, cy + h / 4), outline=outline, fill=None, width=width)
    elif kind == "square":
        draw.rectangle(box, outline=outline, fill=fill, width=width)
    elif kind == "triangle":
        draw.polygon([(cx, y0), (x1, y1), (x0, y1)], outline=outline, fill=fill, width=width)
    elif kind == "diamond":
        draw.polygon([(cx, y0), (x1, cy), (cx, y1), (x0, cy)], outline=outline, fill=fill, width=width)
    elif kind in ("cross", "plus_ring"):
        draw.line([(x0, y0), (x1, y1)] if kind == "cross" else [(cx, y0), (cx, y1)], fill=outline, width=2 * width)
        draw.line([(x0, y1), (x1, y0)] if kind == "cross" else [(x0, cy), (x1, cy)], fill=outline, width=2 * width)
        if kind == "plus_ring":
            draw.ellipse(box, outline=outline, width=width)
    elif kind == "hbar":
        draw.rectangle((x0, cy - h / 6, x1, cy + h / 6), outline=outline, fill=fill, width=width)
    elif kind == "vbar":
        draw.rectangle((cx - w / 6, y0, cx + w / 6, y1), outline=outline, fill=fill, width=width)


def _sample_image(kind: str, domain: str, size: int, rng: np.random.Generator) -> Any:
    from PIL import Image, ImageDraw

    s = rng.uniform(0.5, 0.8) * size
    x0, y0 = rng.uniform(0, size - s, 2)
    box = (float(x0), float(y0), float(x0 + s), float(y0 + s))
    if domain == "sketch":
        img = Image.new("RGB", (size, size), (255, 255, 255))
        _draw(kind, ImageDraw.Draw(img), box, (0, 0, 0), None, max(1, size // 24))
        return img
    noise = rng.integers(170, 256, (size, size, 3), dtype=np.uint8)  # light textured background
    img = Image.fromarray(noise)
    colour = tuple(int(v) for v in rng.integers(0, 140, 3))  # a dark filled shape
    _draw(kind, ImageDraw.Draw(img), box, colour, colour, max(1, size // 16))
    return img


def write_sample(root: str | Path, *, sketches: int = 8, photos: int = 10, size: int = 48, seed: int = 0) -> Path:
    """Write a synthetic sketch/photo set in ACNet's layout ``<root>/{train,val}/{sketch,photo}/<class>/*.jpg``:
    six seen shape classes for training and three unseen ones for zero-shot evaluation. Sketches are black
    outlines on white, photos dark filled shapes of a random colour on light noise. Deterministic for a seed."""
    from zsk.core.io import atomic_path

    root = Path(root)
    rng = np.random.default_rng(seed)
    for split, classes in (("train", SAMPLE_TRAIN), ("val", SAMPLE_VAL)):
        for kind in classes:
            for domain, count in (("sketch", sketches), ("photo", photos)):
                folder = root / split / domain / kind
                folder.mkdir(parents=True, exist_ok=True)
                for i in range(count):
                    img = _sample_image(kind, domain, size, rng)
                    with atomic_path(folder / f"{kind}_{i:03d}.jpg") as tmp:
                        img.save(tmp, format="JPEG", quality=95)
    return root
