"""Image-classification datasets in their real on-disk formats: ImageFolder layouts (ImageNet, ImageNet-100,
any `<split>/<class>/**/image`), Tiny ImageNet (its `val/val_annotations.txt`), CIFAR-10/100 python pickles
(read with a restricted unpickler: dicts, lists, strings, numbers and uint8 arrays only) and the STL-10
binaries (`stl10_binary/*.bin`).

Every reader returns a :class:`ClassificationImages`: `len`, `image(i)` (RGB uint8 array), `labels`
(int64, -1 = unlabelled) and `classes`. Problems are a :class:`ZskError` naming the file and the fix.
"""

from __future__ import annotations

import io
import pickle
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from zsk.core.errors import ZskError
from zsk.data.images import IMAGE_SUFFIXES, read_class_names, read_image


class ImageArrays:
    """(N, H, W, 3) uint8 images from several arrays (memory-mapped files) read one image at a time."""

    def __init__(self, parts: Sequence[Any]) -> None:
        self.parts = list(parts)
        self.starts = np.cumsum([0] + [len(p) for p in self.parts])

    def __len__(self) -> int:
        return int(self.starts[-1])

    def __getitem__(self, i: int) -> np.ndarray:
        k = int(np.searchsorted(self.starts, i, side="right")) - 1
        return np.asarray(self.parts[k][i - int(self.starts[k])])


@dataclass
class ClassificationImages:
    """A labelled image set: file paths or (N, H, W, 3) uint8 images (an array or :class:`ImageArrays`), labels
    and class names; `rows` selects a subset of the paths/array without copying it."""

    classes: list[str]
    labels: np.ndarray
    paths: list[Path] = field(default_factory=list)
    array: Any = None
    source: str = ""
    rows: np.ndarray | None = None

    def __len__(self) -> int:
        return len(self.labels)

    def image(self, i: int) -> np.ndarray:
        """Image `i` as an RGB (H, W, 3) uint8 array."""
        j = int(self.rows[i]) if self.rows is not None else i
        if self.array is not None:
            return np.ascontiguousarray(self.array[j])
        return read_image(self.paths[j])

    def subset(self, index: np.ndarray) -> ClassificationImages:
        """The images at positions `index` (labels copied, images referenced)."""
        index = np.asarray(index, dtype=np.int64)
        rows = index if self.rows is None else self.rows[index]
        return ClassificationImages(self.classes, self.labels[index], self.paths, self.array, self.source, rows)

    def head(self, n: int | None) -> ClassificationImages:
        """The first `n` images (all when None)."""
        if n is None or n >= len(self):
            return self
        return self.subset(np.arange(n))


def _images_under(folder: Path) -> list[Path]:
    return sorted(p for p in folder.rglob("*") if p.suffix.lower() in IMAGE_SUFFIXES and p.is_file())


def folder_split(root: str | Path, split: str, classes: Sequence[str] | None = None) -> ClassificationImages:
    """`<root>/<split>/<class>/**/<image>` (torchvision ImageFolder: classes sorted by folder name); `classes`
    keeps only those folders (ImageNet-100). A missing folder or an empty class is a ZskError."""
    base = Path(root) / split
    if not base.is_dir():
        raise ZskError(f"image folder {base} does not exist; expected <data.root>/{split}/<class>/<images> "
                       "(set data.root or data.train_split/data.val_split)")
    found = sorted(p.name for p in base.iterdir() if p.is_dir())
    names = list(classes) if classes is not None else found
    missing = [c for c in names if c not in found]
    if missing:
        raise ZskError(f"{base}: class folder(s) {', '.join(missing[:5])} listed in data.class_list do not exist")
    if not names:
        raise ZskError(f"{base} holds no class folders; expected {base}/<class>/<images>")
    paths: list[Path] = []
    labels: list[int] = []
    for k, name in enumerate(names):
        files = _images_under(base / name)
        if not files:
            raise ZskError(f"class folder {base / name} holds no images ({', '.join(IMAGE_SUFFIXES)}); add images "
                           "or remove the folder")
        paths += files
        labels += [k] * len(files)
    return ClassificationImages(names, np.asarray(labels, dtype=np.int64), paths, source=str(base))


def tiny_imagenet_split(root: str | Path, split: str) -> ClassificationImages:
    """Tiny ImageNet as unzipped: `train/<wnid>/images/*.JPEG`, and `val/images/*.JPEG` labelled by
    `val/val_annotations.txt` (file, wnid, box); classes: the train folders (or `wnids.txt`)."""
    base = Path(root)
    if split == "train":
        return folder_split(base, "train")
    ann = base / split / "val_annotations.txt"
    if not ann.is_file():
        return folder_split(base, split)  # already rearranged into class folders
    wnids_file = base / "wnids.txt"
    classes = read_class_names(wnids_file) if wnids_file.is_file() else sorted(
        p.name for p in (base / "train").iterdir() if p.is_dir())
    index = {c: i for i, c in enumerate(classes)}
    paths, labels = [], []
    for n, line in enumerate(ann.read_text(encoding="utf-8").splitlines(), start=1):
        if not line.strip():
            continue
        parts = line.split("\t")
        if len(parts) < 2 or parts[1] not in index:
            raise ZskError(f"{ann} line {n}: expected '<file>\\t<wnid>\\t<box>' with a known wnid, got {line[:60]!r}")
        path = base / split / "images" / parts[0]
        if not path.is_file():
            raise ZskError(f"{ann} line {n}: image {path} does not exist")
        paths.append(path)
        labels.append(index[parts[1]])
    if not paths:
        raise ZskError(f"{ann} lists no images")
    return ClassificationImages(classes, np.asarray(labels, dtype=np.int64), paths, source=str(ann))


# ----------------------------------------------------------------------------- CIFAR pickles


class _ArraysOnly(pickle.Unpickler):
    """Unpickler admitting only what the CIFAR pickles hold: builtins plus numpy's array reconstruction."""

    ALLOWED = {("numpy.core.multiarray", "_reconstruct"), ("numpy._core.multiarray", "_reconstruct"),
               ("numpy", "ndarray"), ("numpy", "dtype"),
               ("_codecs", "encode")}  # how Python 3 writes bytes at protocol 2 (latin-1 text -> bytes)

    def find_class(self, module: str, name: str) -> Any:
        if (module, name) not in self.ALLOWED:
            raise pickle.UnpicklingError(f"refusing to load {module}.{name}")
        return super().find_class(module, name)


def safe_unpickle(path: Path, what: str) -> dict:
    """A pickled dict of arrays, lists, strings and numbers (never arbitrary objects: those are a ZskError)."""
    try:
        data = path.read_bytes()
    except OSError as e:
        raise ZskError(f"{what} {path} cannot be read ({e.strerror}); download the python version of the dataset") from None
    try:
        obj = _ArraysOnly(io.BytesIO(data), encoding="bytes").load()
    except (pickle.UnpicklingError, EOFError, ValueError, TypeError, AttributeError, IndexError) as e:
        raise ZskError(f"{what} {path} is not a CIFAR python pickle ({e}); re-download the python version") from None
    if not isinstance(obj, dict):
        raise ZskError(f"{what} {path} holds a {type(obj).__name__}, not the CIFAR dict")
    return {k.decode() if isinstance(k, bytes) else k: v for k, v in obj.items()}


def _names(values: Any) -> list[str]:
    return [v.decode() if isinstance(v, bytes) else str(v) for v in values]


CIFAR_LAYOUT = {
    "cifar10": ("cifar-10-batches-py", [f"data_batch_{i}" for i in range(1, 6)], ["test_batch"], "batches.meta",
                "labels", "label_names"),
    "cifar100": ("cifar-100-python", ["train"], ["test"], "meta", "fine_labels", "fine_label_names"),
}


def cifar_split(root: str | Path, split: str, variant: str = "cifar10") -> ClassificationImages:
    """CIFAR-10 (`cifar-10-batches-py/data_batch_1..5`, `test_batch`) or CIFAR-100 (`cifar-100-python/train`,
    `test`) python pickles under `root` (or `root` itself being that folder); split "train" or "test"."""
    folder, train_files, test_files, meta_file, label_key, names_key = CIFAR_LAYOUT[variant]
    base = Path(root) / folder if (Path(root) / folder).is_dir() else Path(root)
    if split not in ("train", "test"):
        raise ZskError(f"CIFAR has the splits train and test, not {split!r}: set data.val_split: test")
    files = train_files if split == "train" else test_files
    meta = safe_unpickle(base / meta_file, f"{variant} meta file")
    if names_key not in meta:
        raise ZskError(f"{base / meta_file} has no {names_key!r} entry")
    classes = _names(meta[names_key])
    arrays, labels = [], []
    for name in files:
        d = safe_unpickle(base / name, f"{variant} batch")
        x, y = d.get("data"), d.get(label_key)
        if not isinstance(x, np.ndarray) or x.dtype != np.uint8 or x.ndim != 2 or x.shape[1] != 3072:
            raise ZskError(f"{base / name}: 'data' must be an N x 3072 uint8 array")
        y = np.asarray(y, dtype=np.int64) if isinstance(y, (list, np.ndarray)) else None
        if y is None or len(y) != len(x) or (len(y) and (y.min() < 0 or y.max() >= len(classes))):
            raise ZskError(f"{base / name}: {label_key!r} must list one class id 0..{len(classes) - 1} per image")
        arrays.append(x.reshape(-1, 3, 32, 32).transpose(0, 2, 3, 1))
        labels.append(y)
    return ClassificationImages(classes, np.concatenate(labels), array=np.ascontiguousarray(np.concatenate(arrays)),
                                source=str(base))


# ----------------------------------------------------------------------------- STL-10 binaries


def _stl_images(path: Path) -> np.ndarray:
    """The images of an STL-10 `*_X.bin`, memory-mapped (the 100k unlabelled images are 2.8 GB): (N, 96, 96, 3)."""
    if not path.is_file():
        raise ZskError(f"STL-10 file {path} does not exist; expected the stl10_binary folder of the official archive")
    size = path.stat().st_size
    if size == 0 or size % (3 * 96 * 96):
        raise ZskError(f"{path}: size {size} bytes is not a whole number of 3 x 96 x 96 images; re-download it")
    raw = np.memmap(path, dtype=np.uint8, mode="r")
    # stored column-major per channel: (N, 3, 96, 96) with the last two axes transposed
    return raw.reshape(-1, 3, 96, 96).transpose(0, 3, 2, 1)


def stl10_split(root: str | Path, split: str, unlabeled: bool = False) -> ClassificationImages:
    """STL-10 binaries (`stl10_binary/{train,test}_X.bin`, `_y.bin` with labels 1..10, `unlabeled_X.bin`,
    `class_names.txt`); `unlabeled` appends the 100k unlabelled images (label -1) to the split."""
    base = Path(root) / "stl10_binary" if (Path(root) / "stl10_binary").is_dir() else Path(root)
    if split not in ("train", "test"):
        raise ZskError(f"STL-10 has the splits train and test, not {split!r}: set data.val_split: test")
    x = _stl_images(base / f"{split}_X.bin")
    ypath = base / f"{split}_y.bin"
    if not ypath.is_file():
        raise ZskError(f"STL-10 label file {ypath} does not exist")
    y = np.fromfile(ypath, dtype=np.uint8).astype(np.int64) - 1
    if len(y) != len(x) or (len(y) and (y.min() < 0 or y.max() > 9)):
        raise ZskError(f"{ypath}: expected one label 1..10 per image of {split}_X.bin ({len(x)} images), got {len(y)}")
    names_file = base / "class_names.txt"
    classes = read_class_names(names_file) if names_file.is_file() else [f"class_{i}" for i in range(10)]
    if not unlabeled:
        return ClassificationImages(classes, y, array=x, source=str(base))
    u = _stl_images(base / "unlabeled_X.bin")
    return ClassificationImages(classes, np.concatenate([y, np.full(len(u), -1, dtype=np.int64)]),
                                array=ImageArrays([x, u]), source=str(base))


# ----------------------------------------------------------------------------- writers (samples, tests)


def write_cifar(root: Path, images: np.ndarray, labels: np.ndarray, classes: Sequence[str], variant: str,
                split: str) -> None:
    """Write (N, 32, 32, 3) uint8 images as CIFAR python pickles (the official layout: CIFAR-10's train split in
    five batches, bytes keys, protocol 2)."""
    folder, train_files, test_files, meta_file, label_key, names_key = CIFAR_LAYOUT[variant]
    base = root / folder
    base.mkdir(parents=True, exist_ok=True)
    files = train_files if split == "train" else test_files
    chunks = np.array_split(np.arange(len(images)), len(files))
    for name, idx in zip(files, chunks, strict=True):
        d = {b"batch_label": name.encode(), label_key.encode(): [int(v) for v in labels[idx]],
             b"data": images[idx].transpose(0, 3, 1, 2).reshape(len(idx), -1).copy(),
             b"filenames": [f"img_{i}.png".encode() for i in idx]}
        (base / name).write_bytes(pickle.dumps(d, protocol=2))
    (base / meta_file).write_bytes(pickle.dumps({names_key.encode(): [c.encode() for c in classes]}, protocol=2))


def write_stl10(root: Path, split: str, images: np.ndarray, labels: np.ndarray | None) -> None:
    """Write (N, 96, 96, 3) uint8 images (and labels 0..9) as STL-10 binaries."""
    base = root / "stl10_binary"
    base.mkdir(parents=True, exist_ok=True)
    images.transpose(0, 3, 2, 1).astype(np.uint8).tofile(base / f"{split}_X.bin")
    if labels is not None:
        (labels.astype(np.uint8) + 1).tofile(base / f"{split}_y.bin")
