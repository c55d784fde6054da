"""``zsk medseg predict``: segment volumes. NIfTI in -> a NIfTI mask with the input's affine and
header; HDF5 in -> HDF5 with ``prediction`` and ``probability``; plus a PNG montage of axial slices."""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from zsk.core.errors import ZskError
from zsk.core.io import StdinInput
from zsk.core.progress import progress
from zsk.core.task import Loaded
from zsk.data.volumes import (
    Volume,
    is_h5,
    is_nifti,
    read_h5_volume,
    read_nifti_volume,
    write_h5_volume,
    write_nifti,
)
from zsk.tasks.medseg.config import Config
from zsk.tasks.medseg.evaluate import case_spacing, infer_volume


def read_input(path: Path, cfg: Config) -> Volume:
    """A volume to segment: NIfTI (.nii, .nii.gz) or HDF5 in the LA layout."""
    if is_nifti(path):
        return read_nifti_volume(path)
    if is_h5(path):
        return read_h5_volume(path, cfg.data.image_key, cfg.data.label_key)
    raise ZskError(f"{path}: unknown volume format; predict reads .nii, .nii.gz and .h5")


def montage(image: np.ndarray, mask: np.ndarray, num_slices: int = 8, columns: int = 4) -> np.ndarray:
    """An RGB grid of axial slices (evenly spaced over the predicted structure, or the volume) with the
    mask outlined in colour; uint8 (H, W, 3)."""
    from scipy import ndimage

    z_with = np.flatnonzero(mask.any(axis=(0, 1)))
    lo, hi = (z_with[0], z_with[-1]) if z_with.size else (0, image.shape[2] - 1)
    zs = np.unique(np.linspace(lo, hi, num_slices).round().astype(int))
    vmin, vmax = np.percentile(image, [1, 99])
    gray = np.clip((image - vmin) / max(vmax - vmin, 1e-6), 0, 1)
    colours = np.array([[255, 0, 0], [0, 255, 0], [0, 128, 255], [255, 255, 0], [255, 0, 255], [0, 255, 255]], np.uint8)
    tiles = []
    for z in zs:
        tile = np.repeat((gray[:, :, z] * 255).astype(np.uint8)[..., None], 3, axis=-1)
        for c in range(1, int(mask.max(initial=0)) + 1):
            m = mask[:, :, z] == c
            edge = m & ~ndimage.binary_erosion(m)
            tile[edge] = colours[(c - 1) % len(colours)]
        tiles.append(np.rot90(tile))  # x to the right, y up, as viewers show axial slices
    scale = max(1, 128 // min(tiles[0].shape[:2]))  # small volumes are enlarged (nearest neighbour)
    tiles = [t.repeat(scale, axis=0).repeat(scale, axis=1) for t in tiles]
    rows = []
    h, w = tiles[0].shape[:2]
    blank = np.zeros((h, w, 3), np.uint8)
    for r in range(0, len(tiles), columns):
        row = tiles[r:r + columns] + [blank] * (columns - len(tiles[r:r + columns]))
        rows.append(np.concatenate(row, axis=1))
    return np.concatenate(rows, axis=0)


def predict(loaded: Loaded, inputs: Sequence[Path | StdinInput], out: Path) -> Iterator[dict[str, Any]]:
    """Segment each volume: ``<name>_pred.nii.gz`` (NIfTI input, the input's affine and header) or
    ``<name>_pred.h5`` (``prediction``, ``probability``), and ``<name>_montage.png``."""
    from PIL import Image

    cfg: Config = loaded.cfg
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    for path in progress(list(inputs), desc="predicting"):
        if isinstance(path, StdinInput):
            raise ZskError("medseg predict reads volume files; '-' gives their paths on stdin")
        vol = read_input(Path(path), cfg)
        pred, scores = infer_volume(loaded.model, vol.image, cfg, loaded.device)
        fg_score = scores[0] if cfg.data.num_classes == 2 else 1.0 - scores[0]
        if vol.fmt == "nifti":
            mask_path = out / f"{vol.name}_pred.nii.gz"
            write_nifti(mask_path, pred.astype(np.uint8), vol.affine, vol.header, dtype=np.uint8)
        else:
            import h5py

            mask_path = out / f"{vol.name}_pred.h5"
            write_h5_volume(mask_path, vol.image, None, spacing=case_spacing(vol, cfg))
            with h5py.File(mask_path, "a") as f:
                f.create_dataset("prediction", data=pred.astype(np.uint8), compression="gzip")
                f.create_dataset("probability", data=fg_score.float().cpu().numpy(), compression="gzip")
        png = out / f"{vol.name}_montage.png"
        Image.fromarray(montage(vol.image, pred)).save(png)
        spacing = case_spacing(vol, cfg)
        row = {"input": str(path), "mask": str(mask_path), "montage": str(png), "shape": list(vol.shape),
               "foreground_voxels": int((pred > 0).sum())}
        if spacing is not None:
            row["foreground_ml"] = float((pred > 0).sum()) * float(np.prod(spacing)) / 1000.0
        yield row
