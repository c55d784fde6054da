"""``zsk medseg predict``: segment volumes. NIfTI in -> a NIfTI mask with the input's affine and
header; HDF5 in -> HDF5 with ``prediction`` and ``probability``; plus a PNG montage of axial slices, each
named by its slice index. Output files are named per input by :func:`zsk.core.io.output_names`."""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from zsk.core.errors import ZskError
from zsk.core.io import StdinInput, atomic_path, output_folder, output_names
from zsk.core.progress import progress
from zsk.core.task import Loaded
from zsk.data.volumes import (
    Volume,
    is_h5,
    is_nifti,
    read_h5_volume,
    read_nifti_volume,
    write_nifti,
)
from zsk.tasks.medseg.config import Config
from zsk.tasks.medseg.data import check_window_fits
from zsk.tasks.medseg.evaluate import case_spacing, infer_volume


def read_input(path: Path, cfg: Config) -> Volume:
    """A volume to segment: NIfTI (.nii, .nii.gz) or HDF5 in the LA layout."""
    if is_nifti(path):
        return read_nifti_volume(path)
    if is_h5(path):
        return read_h5_volume(path, cfg.data.image_key, cfg.data.label_key)
    raise ZskError(f"{path}: unknown volume format; predict reads .nii, .nii.gz and .h5")


MONTAGE_AXIS = "z"  # tiles are axial slices: the third array axis, as LA and Pancreas-CT store them


def montage_slices(mask: np.ndarray, depth: int, num_slices: int = 8) -> list[int]:
    """The slice indices z a montage shows: evenly spaced over the slices holding predicted structure,
    or over the whole volume when nothing is predicted (sorted, unique)."""
    z_with = np.flatnonzero(mask.any(axis=(0, 1)))
    lo, hi = (int(z_with[0]), int(z_with[-1])) if z_with.size else (0, depth - 1)
    return [int(z) for z in np.unique(np.linspace(lo, hi, num_slices).round().astype(int))]


def _font(size: int) -> Any:
    from PIL import ImageFont

    try:
        return ImageFont.load_default(size=size)
    except (TypeError, OSError, ImportError):  # Pillow without FreeType: the small bitmap font
        return ImageFont.load_default()


def _name_tile(tile: np.ndarray, text: str) -> np.ndarray:
    """Write ``text`` (white on a black box) into the tile's top-left corner."""
    from PIL import Image, ImageDraw

    canvas = Image.fromarray(tile)
    draw = ImageDraw.Draw(canvas)
    size = int(min(max(tile.shape[0] // 10, 10), 24))
    font = _font(size)
    left, top, right, bottom = draw.textbbox((0, 0), text, font=font)
    pad = max(size // 5, 2)
    draw.rectangle([0, 0, right - left + 2 * pad, bottom - top + 2 * pad], fill=(0, 0, 0))
    draw.text((pad - left, pad - top), text, fill=(255, 255, 255), font=font)
    return np.asarray(canvas)


def montage(image: np.ndarray, mask: np.ndarray, num_slices: int = 8, columns: int = 4,
            label_slices: bool = True) -> np.ndarray:
    """An RGB grid of axial slices (:func:`montage_slices`) with the mask outlined in colour, each tile
    named by its slice index (``z=12``, top left) unless ``label_slices`` is off; uint8 (H, W, 3).
    Deterministic: the same volume and mask give the same pixels."""
    from scipy import ndimage

    zs = montage_slices(mask, image.shape[2], num_slices)
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
    tiles = [np.ascontiguousarray(t.repeat(scale, axis=0).repeat(scale, axis=1)) for t in tiles]
    if label_slices:
        tiles = [_name_tile(t, f"{MONTAGE_AXIS}={z}") for t, z in zip(tiles, zs, strict=True)]
    rows = []
    h, w = tiles[0].shape[:2]
    blank = np.zeros((h, w, 3), np.uint8)
    for r in range(0, len(tiles), columns):
        row = tiles[r:r + columns] + [blank] * (columns - len(tiles[r:r + columns]))
        rows.append(np.concatenate(row, axis=1))
    return np.concatenate(rows, axis=0)


def save_montage(path: Path, image: np.ndarray, mask: np.ndarray, source: str) -> list[int]:
    """Write the montage PNG with text chunks saying what it shows (axis, slice indices, source file);
    returns the slice indices."""
    from PIL import Image
    from PIL.PngImagePlugin import PngInfo

    zs = montage_slices(mask, image.shape[2])
    info = PngInfo()
    info.add_text("Title", f"zsk medseg prediction of {source}")
    info.add_text("Description", f"axial slices along axis {MONTAGE_AXIS} (third array axis, 0-based index drawn "
                                 "on each tile); predicted structure outlined in colour")
    info.add_text("zsk:axis", MONTAGE_AXIS)
    info.add_text("zsk:slices", ",".join(map(str, zs)))
    with atomic_path(path) as tmp:
        Image.fromarray(montage(image, mask)).save(tmp, format="PNG", pnginfo=info)
    return zs


def output_stems(inputs: Sequence[Path]) -> list[str]:
    """A unique, stable prefix per input (:func:`zsk.core.io.output_names`); LA-layout cases
    (``<ID>/mri_norm2.h5``, one folder per case) are named by their case folder, as everywhere else."""
    return output_names([p.parent / f"{p.parent.name}.h5" if p.name == "mri_norm2.h5" else p for p in inputs])


def predict(loaded: Loaded, inputs: Sequence[Path | StdinInput], out: Path) -> Iterator[dict[str, Any]]:
    """Segment each volume. Per input, named by :func:`output_stems` (unique and stable, so inputs sharing a
    stem, e.g. ``case.nii.gz`` and ``case.h5``, never overwrite each other), it writes under ``out``:
    ``<name>_pred.nii.gz`` (NIfTI input: the mask with the input's affine and header) or ``<name>_pred.h5``
    (``image``, ``prediction``, ``probability``), and ``<name>_montage.png`` (axial slices, each tile
    named by its index z)."""
    import h5py

    cfg: Config = loaded.cfg
    items = list(inputs)
    for item in items:
        if isinstance(item, StdinInput):
            raise ZskError("medseg predict reads volume files; '-' gives their paths on stdin")
    paths = [Path(p) for p in items]  # type: ignore[arg-type]
    names = output_stems(paths)
    out = output_folder(out)
    for path, name in progress(list(zip(paths, names, strict=True)), desc="predicting"):
        vol = read_input(path, cfg)
        check_window_fits(vol.shape, cfg.eval_patch, path, cfg.eval_window_key)
        pred, scores = infer_volume(loaded.model, vol.image, cfg, loaded.device)
        fg_score = scores[0] if cfg.data.num_classes == 2 else 1.0 - scores[0]
        spacing = case_spacing(vol, cfg)
        png = out / f"{name}_montage.png"
        try:
            if vol.fmt == "nifti":
                mask_path = out / f"{name}_pred.nii.gz"
                write_nifti(mask_path, pred.astype(np.uint8), vol.affine, vol.header, dtype=np.uint8)
            else:
                mask_path = out / f"{name}_pred.h5"
                with atomic_path(mask_path) as tmp, h5py.File(tmp, "w") as f:
                    f.create_dataset("image", data=vol.image.astype(np.float32), compression="gzip")
                    f.create_dataset("prediction", data=pred.astype(np.uint8), compression="gzip")
                    f.create_dataset("probability", data=fg_score.float().cpu().numpy(), compression="gzip")
                    if spacing is not None:
                        f.attrs["spacing"] = np.asarray(spacing, dtype=np.float64)
            save_montage(png, vol.image, pred, path.name)
        except OSError as e:
            raise ZskError(f"--out {out}: cannot write the predictions of {path} ({e.strerror or e}); "
                           "choose a writable --out") from None
        row = {"input": str(path), "mask": str(mask_path), "montage": str(png), "shape": list(vol.shape),
               "foreground_voxels": int((pred > 0).sum())}
        if spacing is not None:
            row["foreground_ml"] = float((pred > 0).sum()) * float(np.prod(spacing)) / 1000.0
        yield row
