"""Raw-data preprocessing into the HDF5 layouts DTC reads.

LA (2018 Atrial Segmentation Challenge), as DTC's ``code/dataloaders/la_heart_processing.py``:
``<ID>/lgemri.nrrd`` + ``<ID>/laendo.nrrd`` -> ``<ID>/mri_norm2.h5`` (label 255 -> 1, z-score over the
whole volume, crop x and y to the label's bounding box widened by a random 10..19-voxel margin plus half
the deficit to 112, all z slices kept). The official script draws the margins from NumPy's global RNG
(unseeded); here ``np.random.RandomState(seed)`` draws them in the same order (x low, x high, y low,
y high, then the two z margins it draws but never uses), so one case preprocessed after
``np.random.seed(seed)`` gives the same file.

Pancreas-CT (NIH): DTC releases no preprocessing (its issues #11, #19); the steps follow the public
MC-Net preprocessing its ``dataloaders/pancreas.py`` layout comes from: HU window [-125, 275] rescaled
to [0, 1], resampling to 1 mm (cubic B-spline image, nearest-neighbour label), crop x and y to the
pancreas bounding box +- 25 voxels keeping all z, z-score, ``<out>/data/<name>.h5``.

Both write ``train.list`` / ``test.list`` (one case ID per line).
"""

from __future__ import annotations

import re
import shutil
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from zsk.core.errors import ZskError
from zsk.core.progress import progress, warn
from zsk.data.volumes import (
    is_nifti,
    read_list_file,
    read_nifti_volume,
    read_nrrd,
    volume_stem,
    write_h5_volume,
)

LA_OUTPUT_SIZE = (112, 112, 80)  # output_size of la_heart_processing.py


def la_crop_box(label: np.ndarray, rng: np.random.RandomState,
                output_size: Sequence[int] = LA_OUTPUT_SIZE) -> tuple[slice, slice]:
    """The x/y crop of one LA case: the label's bounding box widened by randint(10, 20) voxels per side
    plus half the deficit to ``output_size``, clamped to the volume. The z margins (randint(5, 10)) are
    drawn, as the official script does, but z is not cropped."""
    w, h, d = label.shape
    nz = np.nonzero(label)
    if not nz[0].size:
        raise ZskError("the label is empty: no left-atrium voxel to crop around")
    lo = [int(a.min()) for a in nz]
    hi = [int(a.max()) for a in nz]
    pad = [max(s - (b - a), 0) // 2 for s, a, b in zip(output_size, lo, hi, strict=True)]
    x0 = max(lo[0] - rng.randint(10, 20) - pad[0], 0)
    x1 = min(hi[0] + rng.randint(10, 20) + pad[0], w)
    y0 = max(lo[1] - rng.randint(10, 20) - pad[1], 0)
    y1 = min(hi[1] + rng.randint(10, 20) + pad[1], h)
    rng.randint(5, 10)  # z margins: drawn, never applied (all slices are kept)
    rng.randint(5, 10)
    return slice(x0, x1), slice(y0, y1)


def preprocess_la_case(image: np.ndarray, label: np.ndarray, rng: np.random.RandomState
                       ) -> tuple[np.ndarray, np.ndarray]:
    """One LA case: (float32 z-scored crop, uint8 {0, 1} crop)."""
    if image.shape != label.shape or image.ndim != 3:
        raise ZskError(f"image {image.shape} and label {label.shape} must be 3-D volumes of the same shape")
    mask = (label == 255).astype(np.uint8)
    sx, sy = la_crop_box(mask, rng)
    image = image.astype(np.float64)
    std = float(np.std(image))
    if std == 0:
        raise ZskError("the image is constant (standard deviation 0); cannot z-score it")
    normed = ((image - np.mean(image)) / std).astype(np.float32)
    return normed[sx, sy], mask[sx, sy]


def _split(names: list[str], num_test: int, seed: int) -> tuple[list[str], list[str]]:
    if not 0 <= num_test < len(names):
        raise ZskError(f"--num-test {num_test} must leave at least one of the {len(names)} cases for training")
    order = np.random.RandomState(seed).permutation(len(names))
    test = sorted(names[i] for i in order[:num_test])
    return [n for n in names if n not in set(test)], test


def _write_lists(out: Path, names: list[str], num_test: int, seed: int, lists: Path | None) -> dict[str, int]:
    if lists is not None:
        counts = {}
        for split in ("train", "test"):
            src = lists / f"{split}.list"
            ids = read_list_file(src)
            missing = [i for i in ids if i not in set(names)]
            if missing:
                warn(f"{src}: {len(missing)} IDs were not preprocessed (first: {missing[0]}); they stay in the list")
            shutil.copyfile(src, out / f"{split}.list")
            counts[split] = len(ids)
        return counts
    train, test = _split(names, num_test, seed)
    (out / "train.list").write_text("".join(f"{n}\n" for n in train))
    (out / "test.list").write_text("".join(f"{n}\n" for n in test))
    return {"train": len(train), "test": len(test)}


def preprocess_la(raw: Path, out: Path, *, seed: int = 0, num_test: int = 20, lists: Path | None = None
                  ) -> dict[str, Any]:
    """Every ``raw/<ID>/lgemri.nrrd`` (+ ``laendo.nrrd``) -> ``out/<ID>/mri_norm2.h5``, cases in sorted order
    with one RandomState(seed), then the split lists (copied from ``lists`` when given, else a seeded
    split with ``num_test`` test cases)."""
    raw, out = Path(raw), Path(out)
    cases = sorted(p.parent for p in raw.glob("*/lgemri.nrrd"))
    if not cases:
        raise ZskError(f"{raw}: no <ID>/lgemri.nrrd files (the 2018 LA challenge's 'Training Set' folder)")
    rng = np.random.RandomState(seed)
    shapes = []
    for case in progress(cases, desc="LA cases"):
        image, header = read_nrrd(case / "lgemri.nrrd")
        label_path = case / "laendo.nrrd"
        if not label_path.is_file():
            raise ZskError(f"{case}: lgemri.nrrd has no laendo.nrrd label next to it")
        label, _ = read_nrrd(label_path)
        try:
            img, lab = preprocess_la_case(image, label, rng)
        except ZskError as e:
            raise ZskError(f"{case}: {e}") from None
        write_h5_volume(out / case.name / "mri_norm2.h5", img, lab, spacing=header.get("spacing"))
        shapes.append(list(img.shape))
    names = [c.name for c in cases]
    counts = _write_lists(out, names, num_test, seed, lists)
    return {"dataset": "la", "cases": len(names), "out": str(out), "lists": counts,
            "min_shape": np.min(shapes, axis=0).tolist(), "max_shape": np.max(shapes, axis=0).tolist()}


HU_WINDOW = (-125.0, 275.0)  # WL 75 / WW 400


def preprocess_pancreas_case(image: np.ndarray, label: np.ndarray, spacing: Sequence[float], *,
                             target: float = 1.0, window: tuple[float, float] = HU_WINDOW, margin: int = 25
                             ) -> tuple[np.ndarray, np.ndarray]:
    """One Pancreas-CT case in HU: window to [0, 1], resample to ``target`` mm (order-3 B-spline image,
    nearest label), crop x/y to the pancreas box +- ``margin`` (all z), z-score."""
    from scipy import ndimage

    lo, hi = window
    img = (np.clip(image.astype(np.float32), lo, hi) - lo) / (hi - lo)
    zoom = [float(s) / target for s in spacing]
    if any(abs(z - 1.0) > 1e-6 for z in zoom):
        img = ndimage.zoom(img, zoom, order=3)
        lab = ndimage.zoom((label > 0).astype(np.uint8), zoom, order=0)
    else:
        lab = (label > 0).astype(np.uint8)
    nz = np.nonzero(lab)
    if not nz[0].size:
        raise ZskError("the label is empty: no pancreas voxel to crop around")
    box = tuple(slice(max(int(a.min()) - margin, 0), min(int(a.max()) + margin + 1, s))
                for a, s in zip(nz[:2], lab.shape[:2], strict=True))
    img, lab = img[box], lab[box]
    std = float(img.std())
    if std == 0:
        raise ZskError("the windowed image is constant; cannot z-score it")
    return ((img - img.mean()) / std).astype(np.float32), lab


def _case_number(name: str) -> str | None:
    m = re.findall(r"\d+", name)
    return str(int(m[-1])) if m else None


def preprocess_pancreas(images: Path, labels: Path, out: Path, *, target: float = 1.0, margin: int = 25,
                        seed: int = 0, num_test: int = 20) -> dict[str, Any]:
    """NIfTI CT volumes in HU (``images/``; from the TCIA DICOM, e.g. by dcm2niix) and their labels
    (``labels/``, matched by file name or case number) -> ``out/data/<name>.h5`` + split lists."""
    images, labels, out = Path(images), Path(labels), Path(out)
    found = sorted(p for p in images.iterdir() if is_nifti(p)) if images.is_dir() else []
    if not found:
        raise ZskError(f"{images}: no .nii/.nii.gz CT volumes")
    if not labels.is_dir():
        raise ZskError(f"--labels {labels} is not a folder of label volumes")
    label_files = sorted(p for p in labels.iterdir() if is_nifti(p))
    by_name = {volume_stem(p): p for p in label_files}
    by_number = {_case_number(volume_stem(p)): p for p in label_files}
    names = []
    for image_path in progress(found, desc="Pancreas-CT cases"):
        name = volume_stem(image_path)
        label_path = by_name.get(name) or by_number.get(_case_number(name))
        if label_path is None:
            raise ZskError(f"{image_path}: no label in {labels} with the same name or case number")
        vol = read_nifti_volume(image_path, label_path, name=name)
        assert vol.label is not None
        try:
            img, lab = preprocess_pancreas_case(vol.image, vol.label, vol.spacing, target=target, margin=margin)
        except ZskError as e:
            raise ZskError(f"{image_path}: {e}") from None
        write_h5_volume(out / "data" / f"{name}.h5", img, lab, spacing=(target,) * 3)
        names.append(name)
    counts = _write_lists(out, names, num_test, seed, None)
    return {"dataset": "pancreas", "cases": len(names), "out": str(out), "lists": counts}
