"""Hyperspectral cube readers and writers by file format.

Formats (chosen by extension):

- MATLAB `.mat`: v5 through `scipy.io.loadmat`; v7.3 files are HDF5 containers that scipy cannot read,
  so they are opened with h5py and transposed (MATLAB stores arrays column-major).
- HDF5 `.h5` / `.hdf5` / `.he5`: dataset `image` (rows x cols x bands) and optional `gt` (rows x cols)
  by default; other keys on request. An optional `wavelengths` attribute is kept by the writer.
- ENVI: a `.hdr` header plus its data file (bip, bil or bsq), through `spectral`. The data file's
  path may be given instead of the header. Its size must match the header (offset + lines x samples x
  bands x item size); values equal to `data ignore value` are no data: NaN in a cube, 0 in a label map.
- NumPy `.npy`.
- Label maps only: `.tif` / `.tiff` / `.png` through Pillow (DFC2018 ground truth).

Every reader validates what it opens; a missing file, missing key, wrong shape or corrupt file raises
`ZskError` naming the file and the fix (the CLI turns it into exit code 2).
"""

from __future__ import annotations

import datetime
import struct
from pathlib import Path

import numpy as np

from zsk.core.errors import ZskError
from zsk.core.progress import warn

MAT_EXT = (".mat",)
H5_EXT = (".h5", ".hdf5", ".he5")
ENVI_EXT = (".hdr",)
NPY_EXT = (".npy",)
IMAGE_EXT = (".tif", ".tiff", ".png")
ENVI_DATA_EXT = ("", ".img", ".dat", ".raw", ".bsq", ".bil", ".bip", ".sli", ".hyspex")

CUBE_FORMATS = "MATLAB .mat (v5 or v7.3), HDF5 .h5, ENVI .hdr (+ data file), NumPy .npy"
CUBE_SUFFIXES = MAT_EXT + H5_EXT + ENVI_EXT + NPY_EXT  # what a folder of cubes holds (ENVI by its header)


def cube_format(path: Path) -> str:
    """Format name of `path` from its extension: mat, h5, envi, npy or image; ZskError if unknown."""
    suffix = path.suffix.lower()
    if suffix in MAT_EXT:
        return "mat"
    if suffix in H5_EXT:
        return "h5"
    if suffix in NPY_EXT:
        return "npy"
    if suffix in IMAGE_EXT:
        return "image"
    if suffix in ENVI_EXT or path.with_suffix(".hdr").exists() or Path(str(path) + ".hdr").exists():
        return "envi"
    raise ZskError(f"{path}: unknown cube format {suffix!r}; use one of {CUBE_FORMATS}")


def _require_file(path: Path) -> None:
    if not path.exists():
        raise ZskError(f"{path}: file not found; check the path (or data.root in the recipe)")
    if not path.is_file():
        raise ZskError(f"{path}: not a file")


# ----------------------------------------------------------------------------------------------
# Reading arrays by key
# ----------------------------------------------------------------------------------------------


def _is_hdf5(path: Path) -> bool:
    import h5py

    try:
        return bool(h5py.is_hdf5(str(path)))
    except OSError:
        return False


def _mat_v5_arrays(path: Path) -> dict[str, np.ndarray]:
    import scipy.io

    try:
        major, _ = scipy.io.matlab.matfile_version(str(path))
    except Exception:  # noqa: BLE001 - not a MAT header at all: loadmat below names the problem
        major = None
    if major == 2:  # the v7.3 header, but the body is not HDF5 (the caller reads readable v7.3 files with h5py)
        raise ZskError(f"{path}: a MATLAB v7.3 header without a readable HDF5 body; is it corrupt? Re-save it with "
                       "MATLAB's save -v7.3 (or -v7)")
    try:
        raw = scipy.io.loadmat(str(path))
    except Exception as e:  # scipy raises ValueError/TypeError/OSError on damaged files
        raise ZskError(f"{path}: cannot read MATLAB file ({type(e).__name__}: {e}); is it corrupt?") from e
    return {k: v for k, v in raw.items() if not k.startswith("__") and isinstance(v, np.ndarray)}


def _h5_keys(f) -> list[str]:
    import h5py

    keys: list[str] = []
    f.visititems(lambda name, obj: keys.append(name) if isinstance(obj, h5py.Dataset) else None)
    return keys


def _h5_read(path: Path, key: str | None, ndim: int, default_key: str | None, matlab: bool) -> tuple[np.ndarray, str]:
    import h5py

    try:
        with h5py.File(str(path), "r") as f:
            keys = [k for k in _h5_keys(f) if not k.startswith("#")]  # '#refs#' holds MATLAB cell data
            name = key
            if name is None:
                if default_key is not None and default_key in keys:
                    name = default_key
                else:
                    name = _pick_key(path, {k: f[k].shape for k in keys}, ndim)
            if name not in f or not isinstance(f[name], h5py.Dataset):
                raise ZskError(f"{path}: no dataset {name!r}; it holds {sorted(keys)}. Set the key in the recipe")
            arr = np.asarray(f[name][()])
    except ZskError:
        raise
    except Exception as e:
        raise ZskError(f"{path}: cannot read HDF5 file ({type(e).__name__}: {e}); is it corrupt?") from e
    if matlab:
        arr = arr.T  # MATLAB v7.3 stores column-major: h5py sees the dimensions reversed
    return arr, name


def _pick_key(path: Path, shapes: dict[str, tuple], ndim: int) -> str:
    """The one array with `ndim` dimensions (ignoring singleton axes); ZskError listing the keys otherwise."""
    fits = [k for k, s in shapes.items() if len([d for d in s if d != 1]) == ndim or len(s) == ndim]
    if len(fits) == 1:
        return fits[0]
    what = "cube (rows x cols x bands)" if ndim == 3 else "label map (rows x cols)"
    listing = ", ".join(f"{k} {tuple(s)}" for k, s in shapes.items()) or "nothing"
    raise ZskError(
        f"{path}: cannot tell which array is the {what}; it holds {listing}. "
        "Name it with data.image_key / data.labels_key"
    )


def read_array(path: str | Path, key: str | None = None, ndim: int = 3, default_key: str | None = None) -> np.ndarray:
    """Read one array from a cube/label file of any supported format (a key picks it in .mat/.h5 files)."""
    path = Path(path)
    fmt = cube_format(path)
    if fmt == "envi":
        return _read_envi(path, np.nan if ndim == 3 else 0.0)
    _require_file(path)
    if fmt == "npy":
        try:
            return np.load(str(path), allow_pickle=False)
        except Exception as e:
            raise ZskError(f"{path}: cannot read NumPy file ({type(e).__name__}: {e}); is it corrupt?") from e
    if fmt == "image":
        from PIL import Image

        try:
            with Image.open(path) as im:
                return np.asarray(im)
        except Exception as e:
            raise ZskError(f"{path}: cannot read image ({type(e).__name__}: {e}); is it corrupt?") from e
    if fmt == "h5":
        return _h5_read(path, key, ndim, default_key, matlab=False)[0]
    # .mat: v7.3 files are HDF5
    if _is_hdf5(path):
        return _h5_read(path, key, ndim, None, matlab=True)[0]
    arrays = _mat_v5_arrays(path)
    name = key if key is not None else _pick_key(path, {k: v.shape for k, v in arrays.items()}, ndim)
    if name not in arrays:
        raise ZskError(f"{path}: no variable {name!r}; it holds {sorted(arrays)}. Set the key in the recipe")
    return arrays[name]


def _envi_header(path: Path) -> Path:
    if path.suffix.lower() == ".hdr":
        return path
    for cand in (path.with_suffix(".hdr"), Path(str(path) + ".hdr")):
        if cand.exists():
            return cand
    raise ZskError(f"{path}: ENVI data file without a .hdr header next to it")


def _envi_check_size(img, hdr: Path) -> None:
    """ZskError unless the data file holds exactly `header offset` + lines x samples x bands x item size bytes
    (a wrong `lines`, `samples`, `bands` or `data type` would otherwise read a cropped or scrambled cube)."""
    data = Path(img.filename)
    rows, cols, bands = img.shape
    item = np.dtype(img.dtype).itemsize
    expected = int(img.offset) + rows * cols * bands * item
    actual = data.stat().st_size
    if actual != expected:
        raise ZskError(
            f"{hdr}: the data file {data.name} holds {actual} bytes, but the header describes {expected} "
            f"(header offset {img.offset} + lines {rows} x samples {cols} x bands {bands} x {item} bytes of "
            f"data type {img.metadata.get('data type', '?')}); fix lines/samples/bands/data type in the header"
        )


def _envi_ignore_value(img, hdr: Path) -> float | None:
    raw = img.metadata.get("data ignore value")
    if raw is None or str(raw).strip() == "":
        return None
    try:
        return float(str(raw).strip())
    except ValueError:
        raise ZskError(f"{hdr}: 'data ignore value = {raw}' is not a number") from None


def _read_envi(path: Path, nodata: float = np.nan) -> np.ndarray:
    """An ENVI image, checked against its header; values equal to the header's `data ignore value` become
    `nodata` (NaN for cubes, as float; 0 = unlabelled for label maps), with a warning."""
    import spectral.io.envi as envi

    hdr = _envi_header(path)
    _require_file(hdr)
    image = None if path.suffix.lower() == ".hdr" else str(path)
    try:
        img = envi.open(str(hdr), image)
    except Exception as e:  # spectral raises its own exception types for bad headers/missing data files
        raise ZskError(
            f"{hdr}: cannot read ENVI image ({type(e).__name__}: {e}); the header needs samples, lines, "
            f"bands, data type and interleave, and a data file named like it ({', '.join(ENVI_DATA_EXT[1:])})"
        ) from e
    _envi_check_size(img, hdr)
    try:
        arr = np.asarray(img.load())
    except Exception as e:
        raise ZskError(f"{hdr}: cannot read the ENVI data file {img.filename} ({type(e).__name__}: {e})") from e
    ignore = _envi_ignore_value(img, hdr)
    if ignore is not None:
        hits = arr == ignore
        if hits.any():
            if np.isnan(nodata) and not np.issubdtype(arr.dtype, np.floating):
                arr = arr.astype(np.float32 if arr.dtype.itemsize <= 2 else np.float64)
            arr = np.where(hits, np.asarray(nodata, dtype=arr.dtype), arr)
            what = "read as NaN (no data)" if np.isnan(nodata) else f"read as {nodata:g} (unlabelled)"
            warn(f"{hdr}: {int(hits.sum())} values equal the header's data ignore value ({ignore:g}): {what}")
    return arr


def envi_wavelengths(path: str | Path) -> list[float] | None:
    """Band centres from an ENVI header's `wavelength` field, or None."""
    import spectral.io.envi as envi

    meta = envi.read_envi_header(str(_envi_header(Path(path))))
    wl = meta.get("wavelength")
    return [float(w) for w in wl] if wl else None


# ----------------------------------------------------------------------------------------------
# Validated cubes and label maps
# ----------------------------------------------------------------------------------------------


def check_cube(arr: np.ndarray, what: str | Path) -> np.ndarray:
    """`arr` if it is a numeric (rows, cols, bands) cube with at least one value; ZskError naming `what` otherwise."""
    if arr.ndim == 2:
        raise ZskError(
            f"{what}: array of shape {arr.shape} is 2-D; a cube must be rows x cols x bands "
            "(is this the label map? name the cube's array with data.image_key, or --key in predict)"
        )
    if arr.ndim != 3:
        raise ZskError(f"{what}: array of shape {arr.shape} is {arr.ndim}-D; a cube must be rows x cols x bands")
    if not (np.issubdtype(arr.dtype, np.integer) or np.issubdtype(arr.dtype, np.floating)):
        raise ZskError(f"{what}: cube has dtype {arr.dtype}; expected integer or float values")
    if arr.size == 0:
        raise ZskError(f"{what}: cube of shape {arr.shape} is empty")
    return arr


def read_cube(path: str | Path, key: str | None = None) -> np.ndarray:
    """Read a hyperspectral cube as (rows, cols, bands); ZskError on a wrong shape or non-numeric data."""
    path = Path(path)
    return check_cube(read_array(path, key, ndim=3, default_key="image"), path)


def read_cube_bytes(data: bytes, what: str = "stdin") -> np.ndarray:
    """A cube from the bytes of a NumPy .npy stream (e.g. piped to stdin); ZskError naming `what` otherwise."""
    import io

    if not data:
        raise ZskError(f"{what}: no data; pipe a NumPy .npy cube (rows x cols x bands) into it")
    if not data.startswith(b"\x93NUMPY"):
        raise ZskError(f"{what}: not a NumPy .npy stream (it starts with {data[:8]!r}); '-' reads a .npy cube from "
                       "stdin: pass other formats (.h5, .mat, ENVI .hdr) by their path")
    try:
        arr = np.load(io.BytesIO(data), allow_pickle=False)
    except Exception as e:
        raise ZskError(f"{what}: expected a NumPy .npy stream of a cube ({type(e).__name__}: "
                       f"{str(e).splitlines()[0] if str(e) else ''})") from None
    return check_cube(arr, what)


def non_finite(arr: np.ndarray) -> tuple[int, int, np.ndarray]:
    """(NaN values, inf values, (rows, cols) mask of pixels with either in any band) of a cube."""
    if not np.issubdtype(arr.dtype, np.floating):
        return 0, 0, np.zeros(arr.shape[:2], dtype=bool)
    bad = ~np.isfinite(arr)
    if not bad.any():
        return 0, 0, np.zeros(arr.shape[:2], dtype=bool)
    n_nan = int(np.isnan(arr).sum())
    return n_nan, int(bad.sum()) - n_nan, bad.any(axis=2)


def read_labels(path: str | Path, key: str | None = None) -> np.ndarray:
    """Read a label map as int64 (rows, cols), 0 = unlabelled; ZskError on negative or fractional labels."""
    path = Path(path)
    arr = read_array(path, key, ndim=2, default_key="gt")
    if arr.ndim == 3 and arr.shape[-1] == 1:
        arr = arr[..., 0]
    if arr.ndim != 2:
        raise ZskError(f"{path}: label map of shape {arr.shape}; expected rows x cols (set data.labels_key)")
    if np.issubdtype(arr.dtype, np.floating):
        if not np.all(np.isfinite(arr)) or not np.all(arr == np.round(arr)):
            raise ZskError(f"{path}: label map holds non-integer values; labels must be class numbers (0 = unlabelled)")
    elif not np.issubdtype(arr.dtype, np.integer) and arr.dtype != bool:
        raise ZskError(f"{path}: label map has dtype {arr.dtype}; expected integers")
    labels = arr.astype(np.int64)
    if labels.min(initial=0) < 0:
        raise ZskError(f"{path}: label map holds negative values; labels must be 0 (unlabelled) .. K")
    return labels


def check_labels_match(cube: np.ndarray, labels: np.ndarray, cube_path: Path | str, labels_path: Path | str) -> None:
    """ZskError unless the label map covers the cube pixel for pixel."""
    if labels.shape != cube.shape[:2]:
        raise ZskError(
            f"{labels_path}: label map of shape {labels.shape} does not match the cube {cube_path} "
            f"of {cube.shape[0]} x {cube.shape[1]} pixels"
        )


# ----------------------------------------------------------------------------------------------
# Writers (sample data, round-trip tests, exporting results)
# ----------------------------------------------------------------------------------------------


def write_h5(
    path: str | Path,
    image: np.ndarray,
    gt: np.ndarray | None = None,
    wavelengths: np.ndarray | None = None,
    image_key: str = "image",
    gt_key: str = "gt",
) -> Path:
    """Write an HDF5 cube: dataset `image` (rows x cols x bands), optional `gt`, optional `wavelengths` attribute."""
    import h5py

    path = Path(path)
    with h5py.File(str(path), "w") as f:
        ds = f.create_dataset(image_key, data=image, compression="gzip", compression_opts=4)
        if wavelengths is not None:
            ds.attrs["wavelengths"] = np.asarray(wavelengths, dtype=np.float64)
        if gt is not None:
            f.create_dataset(gt_key, data=gt, compression="gzip", compression_opts=4)
    return path


def write_mat(path: str | Path, arrays: dict[str, np.ndarray], version: str = "5") -> Path:
    """Write MATLAB variables as a v5 file (scipy) or a v7.3 file (HDF5 with the MATLAB header, column-major)."""
    path = Path(path)
    if version == "5":
        import scipy.io

        scipy.io.savemat(str(path), arrays, do_compression=True)
        return path
    if version != "7.3":
        raise ValueError("version must be '5' or '7.3'")
    import h5py

    matlab_class = {
        np.dtype(np.float64): "double", np.dtype(np.float32): "single", np.dtype(np.uint8): "uint8",
        np.dtype(np.int8): "int8", np.dtype(np.uint16): "uint16", np.dtype(np.int16): "int16",
        np.dtype(np.uint32): "uint32", np.dtype(np.int32): "int32", np.dtype(np.uint64): "uint64",
        np.dtype(np.int64): "int64",
    }
    with h5py.File(str(path), "w", userblock_size=512) as f:
        for name, arr in arrays.items():
            arr = np.asarray(arr)
            ds = f.create_dataset(name, data=arr.T)  # column-major as MATLAB writes it
            ds.attrs["MATLAB_class"] = np.bytes_(matlab_class[arr.dtype])
    # the 128-byte MAT header in the HDF5 user block: text, subsystem offset, version 0x0200, endian "IM"
    text = f"MATLAB 7.3 MAT-file, Platform: zsk, Created on: {datetime.datetime.now():%c} HDF5 schema 1.00 ."
    header = text.encode("ascii").ljust(116, b" ") + b"\x00" * 8 + struct.pack("<H", 0x0200) + b"IM"
    with open(path, "r+b") as fh:
        fh.write(header)
    return path


def write_envi(
    hdr_path: str | Path,
    image: np.ndarray,
    interleave: str = "bsq",
    wavelengths: np.ndarray | None = None,
    band_names: list[str] | None = None,
) -> Path:
    """Write an ENVI header and `.img` data file (interleave bip, bil or bsq) through `spectral`."""
    import spectral.io.envi as envi

    hdr_path = Path(hdr_path)
    metadata: dict = {}
    if wavelengths is not None:
        metadata["wavelength"] = [f"{w:.3f}" for w in wavelengths]
        metadata["wavelength units"] = "nm"
    if band_names is not None:
        metadata["band names"] = band_names
    arr = image if image.ndim == 3 else image[..., None]
    envi.save_image(str(hdr_path), arr, dtype=arr.dtype, interleave=interleave, ext=".img", force=True,
                    metadata=metadata)
    return hdr_path
