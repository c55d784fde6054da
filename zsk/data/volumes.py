"""3-D volume readers and writers: preprocessed HDF5 (LA / Pancreas layout), NIfTI via nibabel, list files
and CSV pair lists.

Every reader validates what it opens (3-D, finite voxels, image/label shapes equal, keys present) and
raises :class:`~zsk.core.errors.ZskError` naming the file and the fix, so the command line exits 2.
NIfTI volumes keep their affine, header and voxel spacing so predictions can be written back in the
input's world coordinates.
"""

from __future__ import annotations

import csv
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from zsk.core.errors import ZskError
from zsk.core.io import atomic_open, atomic_path

NIFTI_SUFFIXES = (".nii", ".nii.gz")
H5_SUFFIXES = (".h5", ".hdf5", ".hdf")


@dataclass
class Volume:
    """One 3-D image with its optional label and the geometry needed to write results back."""

    image: np.ndarray  # float32, (X, Y, Z)
    label: np.ndarray | None  # uint8 / int64, same shape, or None for unlabelled cases
    spacing: tuple[float, float, float] = (1.0, 1.0, 1.0)  # mm per voxel along each axis
    affine: np.ndarray = field(default_factory=lambda: np.eye(4))  # voxel -> world (NIfTI convention)
    header: Any = None  # nibabel header of a NIfTI source, None for HDF5
    path: Path | None = None
    name: str = ""
    fmt: str = "h5"  # "h5" | "nifti"
    spacing_from_file: bool = True  # False when the file stores no spacing and (1, 1, 1) is assumed

    @property
    def shape(self) -> tuple[int, int, int]:
        return tuple(self.image.shape)  # type: ignore[return-value]


def is_nifti(path: str | Path) -> bool:
    """True for ``.nii`` and ``.nii.gz`` files."""
    name = str(path).lower()
    return any(name.endswith(s) for s in NIFTI_SUFFIXES)


def is_h5(path: str | Path) -> bool:
    """True for ``.h5`` / ``.hdf5`` files."""
    name = str(path).lower()
    return any(name.endswith(s) for s in H5_SUFFIXES)


def volume_stem(path: str | Path) -> str:
    """The file name without ``.nii.gz`` / ``.nii`` / ``.h5`` (a case name)."""
    name = Path(path).name
    for suffix in NIFTI_SUFFIXES[::-1] + H5_SUFFIXES:
        if name.lower().endswith(suffix):
            return name[: -len(suffix)]
    return Path(path).stem


def check_image(image: np.ndarray, path: Path | str, what: str = "image") -> np.ndarray:
    """Validate a 3-D image (a trailing singleton 4th axis is dropped) with finite voxels; float32 out."""
    arr = np.asarray(image)
    if arr.ndim == 4 and arr.shape[-1] == 1:
        arr = arr[..., 0]
    if arr.ndim != 3:
        raise ZskError(f"{path}: {what} has shape {tuple(arr.shape)}, expected a 3-D volume (X, Y, Z); "
                       "2-D slices and multi-channel volumes are not supported")
    if min(arr.shape) < 1:
        raise ZskError(f"{path}: {what} is empty (shape {tuple(arr.shape)})")
    if not np.issubdtype(arr.dtype, np.number) and arr.dtype != np.bool_:
        raise ZskError(f"{path}: {what} has non-numeric dtype {arr.dtype}")
    if np.iscomplexobj(arr):
        raise ZskError(f"{path}: {what} has complex values ({arr.dtype}); export the magnitude image as real numbers")
    arr = arr.astype(np.float32, copy=False)
    if not np.isfinite(arr).all():
        bad = int((~np.isfinite(arr)).sum())
        raise ZskError(f"{path}: {what} contains {bad} NaN/inf voxels; fix or re-export the volume")
    return arr


def check_label(label: np.ndarray, image_shape: tuple[int, ...], path: Path | str) -> np.ndarray:
    """Validate a label volume: same shape as the image, finite non-negative integer values; int64 out."""
    arr = np.asarray(label)
    if arr.ndim == 4 and arr.shape[-1] == 1:
        arr = arr[..., 0]
    if arr.shape != tuple(image_shape):
        raise ZskError(f"{path}: label shape {tuple(arr.shape)} does not match image shape {tuple(image_shape)}")
    if arr.dtype.kind == "f":
        if not np.isfinite(arr).all():
            raise ZskError(f"{path}: label contains NaN/inf voxels")
        rounded = np.rint(arr)
        if np.abs(arr - rounded).max(initial=0.0) > 1e-3:
            raise ZskError(f"{path}: label has non-integer values; expected class indices (0 = background)")
        arr = rounded
    elif arr.dtype != np.bool_ and arr.dtype.kind not in "iu":
        raise ZskError(f"{path}: label has dtype {arr.dtype}, expected integer class indices")
    arr = arr.astype(np.int64)
    if arr.size and arr.min() < 0:
        raise ZskError(f"{path}: label has negative values; expected class indices (0 = background)")
    return arr


def read_h5_volume(path: str | Path, image_key: str = "image", label_key: str = "label",
                   require_label: bool = False, name: str | None = None) -> Volume:
    """Read a preprocessed HDF5 case (``image`` float, ``label`` uint8; LA ``mri_norm2.h5`` layout).

    An optional ``spacing`` attribute (on the file or the image dataset) gives millimetres per voxel.
    """
    import h5py

    path = Path(path)
    if not path.is_file():
        raise ZskError(f"volume not found: {path}")

    def dataset(f: Any, key: str) -> np.ndarray:
        node = f[key]
        if not isinstance(node, h5py.Dataset):
            raise ZskError(f"{path}: {key!r} is an HDF5 group, not a dataset; preprocessed volumes store the "
                           f"{key!r} voxels as one array (set data.image_key / data.label_key if they live elsewhere)")
        return node[()]

    try:
        with h5py.File(path, "r") as f:
            keys = list(f.keys())
            if image_key not in f:
                raise ZskError(f"{path}: no dataset {image_key!r} (found: {', '.join(keys) or 'none'}); "
                               f"preprocessed volumes need {image_key!r} and {label_key!r}")
            image = dataset(f, image_key)
            label = dataset(f, label_key) if label_key in f else None
            spacing_attr = f.attrs.get("spacing", f[image_key].attrs.get("spacing"))
    except ZskError:
        raise
    except MemoryError:
        raise
    except Exception as e:  # noqa: BLE001 - h5py raises OSError, KeyError, RuntimeError, ... for damaged files
        raise ZskError(f"{path}: cannot read HDF5 file ({_first_line(e)}); is it a complete, valid .h5 file?") from None
    if require_label and label is None:
        raise ZskError(f"{path}: no dataset {label_key!r} (found: {', '.join(keys)}); labelled cases need one")
    image = check_image(image, path)
    if label is not None:
        label = check_label(label, image.shape, path)
    spacing = (1.0, 1.0, 1.0)
    if spacing_attr is not None:
        try:
            sp = np.asarray(spacing_attr, dtype=np.float64).ravel()
        except (TypeError, ValueError):
            sp = np.array([np.nan])
        if sp.size != 3 or not np.all(np.isfinite(sp)) or not np.all(sp > 0):
            raise ZskError(f"{path}: attribute 'spacing' must be 3 positive numbers (mm per voxel), got "
                           f"{_short(spacing_attr)}; fix the attribute or delete it (then data.spacing applies)")
        spacing = tuple(float(s) for s in sp)
    return Volume(image=image, label=label, spacing=spacing, affine=np.diag([*spacing, 1.0]), header=None,
                  path=path, name=name or _case_name(path), fmt="h5", spacing_from_file=spacing_attr is not None)


def _first_line(exc: BaseException) -> str:
    text = str(exc).strip().splitlines()
    return text[0] if text else type(exc).__name__


def _short(value: Any, limit: int = 60) -> str:
    text = repr(value.tolist() if isinstance(value, np.ndarray) else value)
    return text if len(text) <= limit else text[: limit - 3] + "..."


def _case_name(path: Path) -> str:
    # LA layout keeps every case in its own folder with a fixed file name (<ID>/mri_norm2.h5).
    if path.name == "mri_norm2.h5":
        return path.parent.name
    return volume_stem(path)


def _load_nifti(path: Path) -> Any:
    import nibabel as nib

    if not path.is_file():
        raise ZskError(f"volume not found: {path}")
    try:
        return nib.load(str(path))
    except Exception as e:  # noqa: BLE001 - nibabel raises several types for corrupt/unknown files
        raise ZskError(f"{path}: cannot read NIfTI file ({_first_line(e)}); expected a complete .nii or .nii.gz "
                       "file") from None


def read_nifti_volume(image_path: str | Path, label_path: str | Path | None = None,
                      name: str | None = None) -> Volume:
    """Read a NIfTI image (and label) with nibabel, keeping affine, header and voxel spacing."""
    image_path = Path(image_path)
    img = _load_nifti(image_path)
    kind = np.dtype(img.get_data_dtype()).kind
    if kind not in "biuf":
        raise ZskError(f"{image_path}: voxel type {img.get_data_dtype()} is not a real-valued scalar image "
                       "(complex or RGB NIfTI); export a single-channel real image")
    try:
        data = img.get_fdata(dtype=np.float32)
    except Exception as e:  # noqa: BLE001 - truncated data, bad offsets, ...
        raise ZskError(f"{image_path}: cannot read voxel data ({_first_line(e)}); is the file complete?") from None
    image = check_image(data, image_path)
    label = None
    if label_path is not None:
        label_path = Path(label_path)
        lab = _load_nifti(label_path)
        try:
            raw = np.asanyarray(lab.dataobj)
        except Exception as e:  # noqa: BLE001 - truncated data, bad offsets, ...
            raise ZskError(f"{label_path}: cannot read voxel data ({_first_line(e)}); is the file complete?") from None
        label = check_label(raw, image.shape, label_path)
    zooms = img.header.get_zooms()[:3]
    spacing = tuple(float(z) if np.isfinite(z) and z > 0 else 1.0 for z in zooms)
    if not np.all(np.isfinite(img.affine)):
        raise ZskError(f"{image_path}: the NIfTI affine (voxel -> world) holds NaN/inf; fix the header's qform/sform")
    affine = np.asarray(img.affine, dtype=np.float64)
    return Volume(image=image, label=label, spacing=spacing, affine=affine, header=img.header.copy(),
                  path=image_path, name=name or volume_stem(image_path), fmt="nifti")


def read_volume(path: str | Path, label_path: str | Path | None = None, **h5_keys: Any) -> Volume:
    """Read a volume by file type: NIfTI (optionally with a separate label file) or HDF5."""
    if is_nifti(path):
        return read_nifti_volume(path, label_path)
    if is_h5(path):
        return read_h5_volume(path, **h5_keys)
    raise ZskError(f"{path}: unknown volume format; expected .nii, .nii.gz or .h5")


def read_list_file(path: str | Path) -> list[str]:
    """Read a split file with one case ID per line (``train.list``); blank lines are skipped."""
    path = Path(path)
    if not path.is_file():
        raise ZskError(f"list file not found: {path}")
    try:
        text = path.read_text(encoding="utf-8")
    except UnicodeDecodeError:
        raise ZskError(f"{path}: list file is not UTF-8 text; it needs one case ID per line") from None
    except OSError as e:
        raise ZskError(f"cannot read list file {path}: {e.strerror}") from None
    if "\0" in text:
        raise ZskError(f"{path}: list file holds binary data (NUL bytes); it needs one case ID per line")
    lines = [ln.strip() for ln in text.splitlines()]
    names = [ln for ln in lines if ln and not ln.startswith("#")]
    if not names:
        raise ZskError(f"{path}: list file is empty; it needs one case ID per line")
    return names


def read_pairs_csv(path: str | Path) -> list[tuple[str, Path, Path | None]]:
    """Read a CSV with columns ``image`` and optionally ``label`` (and ``name``); relative paths are taken
    from the CSV's folder. An empty label cell marks an unlabelled case."""
    path = Path(path)
    if not path.is_file():
        raise ZskError(f"CSV list not found: {path}")
    try:
        with path.open(newline="", encoding="utf-8") as f:
            reader = csv.DictReader(f)
            if reader.fieldnames is None or "image" not in reader.fieldnames:
                raise ZskError(f"{path}: CSV needs a header with an 'image' column (and 'label', optional 'name')")
            rows = list(reader)
    except UnicodeDecodeError:
        raise ZskError(f"{path}: CSV list is not UTF-8 text") from None
    except csv.Error as e:
        raise ZskError(f"{path}: malformed CSV ({e})") from None
    except OSError as e:
        raise ZskError(f"cannot read CSV list {path}: {e.strerror}") from None
    if not rows:
        raise ZskError(f"{path}: CSV list has no rows")
    out = []
    for i, row in enumerate(rows, start=2):
        img = (row.get("image") or "").strip()
        if not img:
            raise ZskError(f"{path}: line {i} has an empty 'image' cell")
        lbl = (row.get("label") or "").strip()
        img_p = _relative_to(path.parent, img)
        lbl_p = _relative_to(path.parent, lbl) if lbl else None
        name = (row.get("name") or "").strip() or volume_stem(img_p)
        out.append((name, img_p, lbl_p))
    return out


def _relative_to(base: Path, p: str) -> Path:
    q = Path(p)
    return q if q.is_absolute() else base / q


def find_nifti_pairs(folder: str | Path, images_dir: str = "images", labels_dir: str = "labels"
                     ) -> list[tuple[str, Path, Path | None]]:
    """Pair ``folder/images/<case>.nii.gz`` with ``folder/labels/<case>.nii.gz`` (label may be absent)."""
    folder = Path(folder)
    img_dir = folder / images_dir
    if not img_dir.is_dir():
        raise ZskError(f"{folder}: no '{images_dir}/' folder of NIfTI images")
    images = sorted(p for p in img_dir.iterdir() if is_nifti(p))
    if not images:
        raise ZskError(f"{img_dir}: no .nii/.nii.gz files")
    out = []
    for p in images:
        name = volume_stem(p)
        lbl = None
        for suffix in NIFTI_SUFFIXES:
            cand = folder / labels_dir / f"{name}{suffix}"
            if cand.is_file():
                lbl = cand
                break
        out.append((name, p, lbl))
    return out


def write_h5_volume(path: str | Path, image: np.ndarray, label: np.ndarray | None = None,
                    spacing: tuple[float, float, float] | None = None, image_key: str = "image",
                    label_key: str = "label", compression: str | None = "gzip") -> None:
    """Write an HDF5 case in the LA layout (float32 ``image``, uint8 ``label``), written atomically."""
    import h5py

    with atomic_path(path) as tmp, h5py.File(tmp, "w") as f:
        f.create_dataset(image_key, data=np.asarray(image, dtype=np.float32), compression=compression)
        if label is not None:
            f.create_dataset(label_key, data=np.asarray(label, dtype=np.uint8), compression=compression)
        if spacing is not None:
            f.attrs["spacing"] = np.asarray(spacing, dtype=np.float64)


def write_nifti(path: str | Path, array: np.ndarray, affine: np.ndarray | None = None, header: Any = None,
                dtype: Any = None) -> None:
    """Write a NIfTI file with the given affine and header (a prediction keeps its input's geometry); the
    file appears only when complete (``.nii.gz`` is gzip-compressed by name, as nibabel does)."""
    import gzip

    import nibabel as nib

    path = Path(path)
    arr = np.asarray(array)
    if dtype is not None:
        arr = arr.astype(dtype)
    hdr = header.copy() if header is not None else None
    img = nib.Nifti1Image(arr, affine if affine is not None else np.eye(4), header=hdr)
    img.set_data_dtype(arr.dtype)
    if hdr is not None:
        # scaling from the source image must not be applied to integer masks
        img.header.set_slope_inter(1.0, 0.0)
    data = img.to_bytes()
    if str(path).lower().endswith(".gz"):
        data = gzip.compress(data, compresslevel=6, mtime=0)
    with atomic_open(path, "wb") as f:
        f.write(data)


# ----------------------------------------------------------------------------- NRRD (raw LA data)

_NRRD_TYPES = {
    np.dtype(np.int8): ("signed char", "int8", "int8_t"),
    np.dtype(np.uint8): ("uchar", "unsigned char", "uint8", "uint8_t"),
    np.dtype(np.int16): ("short", "short int", "signed short", "signed short int", "int16", "int16_t"),
    np.dtype(np.uint16): ("ushort", "unsigned short", "unsigned short int", "uint16", "uint16_t"),
    np.dtype(np.int32): ("int", "signed int", "int32", "int32_t"),
    np.dtype(np.uint32): ("uint", "unsigned int", "uint32", "uint32_t"),
    np.dtype(np.int64): ("longlong", "long long", "long long int", "signed long long", "signed long long int",
                         "int64", "int64_t"),
    np.dtype(np.uint64): ("ulonglong", "unsigned long long", "unsigned long long int", "uint64", "uint64_t"),
    np.dtype(np.float32): ("float",),
    np.dtype(np.float64): ("double",),
}
NRRD_DTYPE = {name: dtype for dtype, names in _NRRD_TYPES.items() for name in names}


def _nrrd_spacing(fields: dict[str, str], ndim: int) -> tuple[float, ...] | None:
    if "space directions" in fields:
        norms = []
        for vec in fields["space directions"].split():
            if vec.strip().lower() == "none":
                continue
            try:
                norms.append(float(np.linalg.norm([float(v) for v in vec.strip("()").split(",")])))
            except ValueError:
                return None
        return tuple(norms) if len(norms) == ndim else None
    if "spacings" in fields:
        try:
            values = tuple(float(v) for v in fields["spacings"].split())
        except ValueError:
            return None
        return values if len(values) == ndim and all(np.isfinite(values)) else None
    return None


def read_nrrd(path: str | Path) -> tuple[np.ndarray, dict[str, Any]]:
    """Read an NRRD file with its data attached or detached (raw, gzip, bzip2 or ascii encoding).

    The array has shape ``sizes`` in the header's order (fastest axis first, as pynrrd's default
    ``index_order='F'`` returns it, and as the LA challenge's ``lgemri.nrrd`` / ``laendo.nrrd`` are read
    by DTC's ``la_heart_processing.py``). The header fields come back as strings, with ``spacing``
    (mm per axis, from ``space directions`` or ``spacings``) when the header gives it.
    """
    import bz2
    import gzip

    path = Path(path)
    if not path.is_file():
        raise ZskError(f"NRRD file not found: {path}")
    raw = path.read_bytes()
    if not raw.startswith(b"NRRD"):
        raise ZskError(f"{path}: not an NRRD file (it does not start with the 'NRRD000x' magic line)")
    fields: dict[str, str] = {}
    pos = raw.find(b"\n") + 1
    while True:
        end = raw.find(b"\n", pos)
        if end < 0:  # header without a blank line: detached data, or a truncated file
            line, pos = raw[pos:], len(raw)
        else:
            line, pos = raw[pos:end], end + 1
        text = line.decode("latin-1").rstrip("\r")
        if not text.strip():
            break
        if text.startswith("#") or text.find(":=") == text.find(":") >= 0:  # comment or key:=value pair
            if end < 0:
                break
            continue
        key, sep, value = text.partition(":")
        if not sep:
            raise ZskError(f"{path}: malformed NRRD header line {text!r}")
        fields[key.strip().lower()] = value.strip()
        if end < 0:
            break
    for key in ("type", "dimension", "sizes", "encoding"):
        if key not in fields:
            raise ZskError(f"{path}: NRRD header has no '{key}' field")
    dtype = NRRD_DTYPE.get(fields["type"].lower())
    if dtype is None:
        raise ZskError(f"{path}: NRRD type {fields['type']!r} is not supported (integer or floating-point voxels)")
    try:
        sizes = tuple(int(v) for v in fields["sizes"].split())
    except ValueError:
        raise ZskError(f"{path}: NRRD sizes {fields['sizes']!r} are not integers") from None
    if len(sizes) != int(fields["dimension"]) or min(sizes, default=0) < 1:
        raise ZskError(f"{path}: NRRD sizes {list(sizes)} do not match dimension {fields['dimension']}")
    if dtype.itemsize > 1:
        dtype = dtype.newbyteorder(">" if fields.get("endian", "little").lower() == "big" else "<")
    detached = fields.get("data file", fields.get("datafile"))
    if detached is not None:
        data_path = Path(detached) if Path(detached).is_absolute() else path.parent / detached
        if not data_path.is_file():
            raise ZskError(f"{path}: detached NRRD data file {data_path} not found")
        payload = data_path.read_bytes()
    else:
        payload = raw[pos:]
    encoding = fields["encoding"].lower()
    try:
        if encoding in ("gzip", "gz"):
            payload = gzip.decompress(payload)
        elif encoding in ("bzip2", "bz2"):
            payload = bz2.decompress(payload)
        elif encoding not in ("raw", "ascii", "text", "txt"):
            raise ZskError(f"{path}: NRRD encoding {fields['encoding']!r} is not supported (raw, gzip, bzip2, ascii)")
    except (OSError, EOFError, ValueError) as e:
        raise ZskError(f"{path}: cannot decompress the NRRD data ({_first_line(e)}); is the file complete?") from None
    count = int(np.prod(sizes))
    if encoding in ("ascii", "text", "txt"):
        flat = np.array(payload.decode("latin-1").split(), dtype=np.float64).astype(dtype.newbyteorder("="))
    else:
        skip = int(fields.get("byte skip", "0"))
        need = count * dtype.itemsize
        payload = payload[len(payload) - need:] if skip == -1 else payload[skip:]
        if len(payload) < need:
            raise ZskError(f"{path}: NRRD data holds {len(payload)} bytes, the header needs {need} "
                           f"({'x'.join(map(str, sizes))} voxels of {fields['type']}); the file is truncated")
        flat = np.frombuffer(payload[:need], dtype=dtype)
    if flat.size != count:
        raise ZskError(f"{path}: NRRD data holds {flat.size} values, the header needs {count}")
    array = flat.reshape(sizes, order="F").astype(flat.dtype.newbyteorder("="), copy=False)
    header: dict[str, Any] = dict(fields)
    spacing = _nrrd_spacing(fields, len(sizes))
    if spacing is not None:
        header["spacing"] = spacing
    return array, header
