"""Data for DTC: case lists over the shared volume readers, the level-set (signed distance) targets,
the rotation/flip + random-crop augmentation, the two-stream labelled/unlabelled batch sampler, and the
synthetic sample set written in the real on-disk layouts (LA HDF5 and NIfTI)."""

from __future__ import annotations

import csv
import hashlib
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

import numpy as np
import torch
from scipy import ndimage
from torch.utils.data import Dataset

from zsk.core.errors import ZskError
from zsk.core.progress import warn
from zsk.data.volumes import (
    Volume,
    find_nifti_pairs,
    is_h5,
    is_nifti,
    read_h5_volume,
    read_list_file,
    read_nifti_volume,
    read_pairs_csv,
    write_h5_volume,
    write_nifti,
)
from zsk.tasks.medseg.config import DataConfig

# ----------------------------------------------------------------------------- level-set targets


def _minmax(x: np.ndarray) -> np.ndarray:
    lo, hi = float(x.min()), float(x.max())
    return np.zeros_like(x) if hi <= lo else (x - lo) / (hi - lo)


def inner_boundary(mask: np.ndarray) -> np.ndarray:
    """Foreground voxels with a face-neighbour in the background; the patch edge is not a boundary."""
    fg = mask.astype(bool)
    structure = ndimage.generate_binary_structure(fg.ndim, 1)
    return fg & ~ndimage.binary_erosion(fg, structure=structure, border_value=1)


def signed_distance_map(mask: np.ndarray) -> np.ndarray:
    """Normalised signed distance map T(y) of one binary patch (spec "Level-set target").

    minmax(EDT of the background) − minmax(EDT of the foreground): negative inside, positive outside,
    in [−1, 1], with the inner boundary set to 0. A patch without foreground is all zeros; a patch that is
    all foreground (no boundary inside the patch) is all −1.
    """
    fg = mask.astype(bool)
    if not fg.any():
        return np.zeros(fg.shape, dtype=np.float32)
    if fg.all():
        return -np.ones(fg.shape, dtype=np.float32)
    inside = ndimage.distance_transform_edt(fg)  # distance of inside voxels to the background
    outside = ndimage.distance_transform_edt(~fg)  # distance of outside voxels to the foreground
    sdf = _minmax(outside) - _minmax(inside)
    sdf[inner_boundary(fg)] = 0.0
    return sdf.astype(np.float32)


def level_set_targets(label: np.ndarray, num_classes: int) -> np.ndarray:
    """One signed distance map per foreground class, shape (num_classes − 1, X, Y, Z)."""
    return np.stack([signed_distance_map(label == c) for c in range(1, num_classes)])


# ----------------------------------------------------------------------------- augmentation


def random_rot_flip(image: np.ndarray, label: np.ndarray, rng: np.random.Generator
                    ) -> tuple[np.ndarray, np.ndarray]:
    """Rotate by k·90° in the (x, y) plane (k ∈ {0..3}) and flip along x or y."""
    k = int(rng.integers(0, 4))
    axis = int(rng.integers(0, 2))
    image = np.flip(np.rot90(image, k, axes=(0, 1)), axis=axis)
    label = np.flip(np.rot90(label, k, axes=(0, 1)), axis=axis)
    return np.ascontiguousarray(image), np.ascontiguousarray(label)


def crop_padding(shape: Sequence[int], patch: Sequence[int]) -> list[tuple[int, int]]:
    """(before, after) zero padding of DTC's ``RandomCrop`` (``dataloaders/la_heart.py``, ``pancreas.py``).

    Nothing when every axis is larger than the patch; once any axis is <= its patch size, EVERY axis is
    padded by max((patch - size) // 2 + 3, 0) on both sides, so an axis up to 5 voxels longer than the
    patch gets a margin too.
    """
    if not any(s <= p for s, p in zip(shape, patch, strict=True)):
        return [(0, 0)] * len(shape)
    return [(max((p - s) // 2 + 3, 0),) * 2 for s, p in zip(shape, patch, strict=True)]


def pad_for_crop(image: np.ndarray, label: np.ndarray, patch: Sequence[int]) -> tuple[np.ndarray, np.ndarray]:
    """Zero-pad image and label by :func:`crop_padding` (DTC's rule)."""
    pads = crop_padding(image.shape, patch)
    if any(w for w, _ in pads):
        image = np.pad(image, pads, mode="constant", constant_values=0)
        label = np.pad(label, pads, mode="constant", constant_values=0)
    return image, label


CropStarts = Literal["all", "official"]


def crop_start_bound(size: int, patch: int, starts: CropStarts = "all") -> int:
    """Exclusive upper bound of a random crop start along one axis of a padded volume.

    ``all`` (zsk default): every start 0..size-patch is drawn, so the last patch position is reachable.
    ``official``: DTC's ``np.random.randint(0, size - patch)``, which never draws the last start
    size-patch (an off-by-one in ``RandomCrop``; a volume exactly one voxel longer than the patch is then
    always cropped at 0).
    """
    if starts == "official":
        return max(size - patch, 1)
    return size - patch + 1


def random_crop(image: np.ndarray, label: np.ndarray, patch: Sequence[int], rng: np.random.Generator,
                starts: CropStarts = "all") -> tuple[np.ndarray, np.ndarray]:
    """Pad by DTC's rule (:func:`crop_padding`), then crop a patch at a uniformly random start drawn
    below :func:`crop_start_bound` on every axis."""
    image, label = pad_for_crop(image, label, patch)
    first = [int(rng.integers(0, crop_start_bound(size, p, starts))) for size, p in zip(image.shape, patch, strict=True)]
    sl = tuple(slice(s, s + p) for s, p in zip(first, patch, strict=True))
    return np.ascontiguousarray(image[sl]), np.ascontiguousarray(label[sl])


# ----------------------------------------------------------------------------- case lists


@dataclass(frozen=True)
class CaseRef:
    """Where one case lives: an HDF5 file (label inside) or a NIfTI image with an optional label file."""

    name: str
    image: Path
    label: Path | None = None


def _expand(template: str, root: str, **kw: str) -> str:
    try:
        return template.format(root=root, **kw)
    except (KeyError, IndexError) as e:
        raise ZskError(f"recipe path template {template!r} uses an unknown field {e}; use {{root}} and {{case}}") from None


def split_cases(cfg: DataConfig, split: str) -> list[CaseRef]:
    """The cases of ``train`` or ``test`` (or any split named by a file ``{root}/<split>.list``)."""
    if split == "train":
        spec = _expand(cfg.train_list, cfg.root)
    elif split == "test":
        spec = _expand(cfg.test_list, cfg.root)
    else:
        spec = str(Path(cfg.root) / f"{split}.list")
    if not Path(spec).exists():
        hint = f" or set data.{split}_list" if split in ("train", "test") else ""
        raise ZskError(f"{split} list not found: {spec}; point data.root at the dataset folder "
                       f"(e.g. --set data.root=/data/LA){hint}")
    return cases_from(spec, cfg)


def cases_from(spec: str, cfg: DataConfig) -> list[CaseRef]:
    """Cases from a list file of IDs, a CSV of image/label paths, or a folder with images/ and labels/."""
    path = Path(spec)
    if path.is_dir():
        refs = [CaseRef(n, i, lb) for n, i, lb in find_nifti_pairs(path)]
    elif path.suffix.lower() == ".csv":
        refs = [CaseRef(n, i, lb) for n, i, lb in read_pairs_csv(path)]
    else:
        refs = []
        for case in read_list_file(path):
            image = Path(_expand(cfg.case_path, cfg.root, case=case))
            label = Path(_expand(cfg.label_path, cfg.root, case=case)) if cfg.format == "nifti" else None
            if label is not None and not label.is_file():
                label = None
            refs.append(CaseRef(case, image, label))
    for ref in refs:
        if not ref.image.is_file():
            raise ZskError(f"{path}: case {ref.name!r} points to {ref.image}, which does not exist "
                           f"(check data.root and data.case_path)")
        if cfg.format == "h5" and not is_h5(ref.image):
            raise ZskError(f"{ref.image}: data.format is h5 but the file is not .h5; set data.format=nifti")
        if cfg.format == "nifti" and not is_nifti(ref.image):
            raise ZskError(f"{ref.image}: data.format is nifti but the file is not .nii/.nii.gz")
    if cfg.exclude_duplicates:
        if not cfg.duplicates:
            raise ZskError("data.exclude_duplicates is on but data.duplicates names no cases")
        kept = [r for r in refs if r.name not in set(cfg.duplicates)]
        if len(kept) == len(refs):
            warn(f"{path}: data.exclude_duplicates is on but none of {cfg.duplicates} is in the list")
        refs = kept
    return refs


def load_case(ref: CaseRef, cfg: DataConfig, require_label: bool = False) -> Volume:
    """Read one case with the shared readers (validated: 3-D, finite, shapes equal)."""
    if is_nifti(ref.image):
        vol = read_nifti_volume(ref.image, ref.label, name=ref.name)
        if require_label and vol.label is None:
            raise ZskError(f"{ref.image}: case {ref.name!r} needs a label (labelled cases and evaluation); "
                           "add it to the CSV 'label' column or the labels/ folder")
    else:
        vol = read_h5_volume(ref.image, cfg.image_key, cfg.label_key, require_label=require_label, name=ref.name)
    if vol.label is not None and vol.label.max(initial=0) >= cfg.num_classes:
        raise ZskError(f"{ref.label or ref.image}: label value {int(vol.label.max())} is not below "
                       f"data.num_classes = {cfg.num_classes}")
    return vol


def check_window_fits(shape: Sequence[int], window: Sequence[int], path: Path | str, key: str) -> None:
    """Refuse a volume less than half the patch/window ``key`` along an axis.

    DTC zero-pads a volume smaller than the patch, both for the training crop (``RandomCrop`` in
    ``dataloaders/la_heart.py``) and for sliding windows (``test_single_case`` in ``test_util.py``), which
    covers preprocessed cases a few voxels short of the patch. A window that would be more than half padding
    is a patch chosen for other data, or a wrong volume (a thumbnail, a few slices), not a case to pad.
    """
    short = [(axis, s, w) for axis, (s, w) in enumerate(zip(shape, window, strict=True)) if 2 * s < w]
    if short:
        axis, s, w = short[0]
        raise ZskError(f"{path}: volume shape {list(shape)} is less than half of {key} = {list(window)} "
                       f"(axis {axis}: {s} voxels for a {w}-voxel window), so the {'patch' if key.startswith('data') else 'window'} "
                       f"would be mostly zero padding; set {key} to multiples of 16 that fit the volumes, or check the file")


# ----------------------------------------------------------------------------- training set + sampler


def sample_seed(*parts: int) -> int:
    """A 63-bit seed from integers (stable across processes and platforms)."""
    h = hashlib.blake2b(np.asarray(parts, dtype=np.int64).tobytes(), digest_size=8).digest()
    return int.from_bytes(h, "little") & ((1 << 63) - 1)


class TwoStreamTrainSet(Dataset):
    """Training patches; an item is ``(case_index, augmentation_seed)`` so every draw is reproducible.

    The first ``labeled_num`` cases are labelled: their items carry the label and its level-set targets.
    Unlabelled items carry a zero label, zero targets and ``labeled = False``.
    """

    def __init__(self, cases: Sequence[CaseRef], cfg: DataConfig) -> None:
        self.cases = list(cases)
        self.cfg = cfg
        self.labeled_num = cfg.labeled_num
        self._memory: dict[int, Volume] = {}

    def _volume(self, index: int, labeled: bool) -> Volume:
        if index in self._memory:
            return self._memory[index]
        vol = load_case(self.cases[index], self.cfg, require_label=labeled)
        if self.cfg.preload:
            self._memory[index] = vol
        return vol

    def __len__(self) -> int:
        return len(self.cases)

    def __getitem__(self, item: tuple[int, int]) -> dict[str, torch.Tensor]:
        index, seed = item
        labeled = index < self.labeled_num
        vol = self._volume(index, labeled)
        label = vol.label if (labeled and vol.label is not None) else np.zeros(vol.shape, dtype=np.int64)
        rng = np.random.default_rng(seed)
        image = vol.image
        if self.cfg.rot_flip:
            image, label = random_rot_flip(image, label, rng)
        image, label = random_crop(image, label, self.cfg.patch_size, rng, self.cfg.crop_starts)
        n_fg = self.cfg.num_classes - 1
        sdf = level_set_targets(label, self.cfg.num_classes) if labeled else np.zeros((n_fg, *label.shape), np.float32)
        return {"image": torch.from_numpy(image[None].astype(np.float32)),
                "label": torch.from_numpy(label.astype(np.int64)),
                "sdf": torch.from_numpy(sdf),
                "labeled": torch.tensor(labeled)}


class TwoStreamBatchSampler:
    """Batches of ``labeled_bs`` labelled + ``batch_size − labeled_bs`` unlabelled items.

    Labelled indices are shuffled once per epoch (an epoch = ⌊#labelled / labeled_bs⌋ batches);
    unlabelled indices are cycled forever, reshuffled at every pass, continuing across epochs. The
    order depends only on (seed, epoch), so a resumed run draws the same batches. Each element is
    ``(index, augmentation_seed)``. Under DDP each rank takes every ``world``-th batch.
    """

    def __init__(self, labeled: Sequence[int], unlabeled: Sequence[int], batch_size: int, labeled_bs: int,
                 *, seed: int = 0, epoch: int = 0, rank: int = 0, world_size: int = 1) -> None:
        self.labeled = list(labeled)
        self.unlabeled = list(unlabeled)
        self.labeled_bs = labeled_bs
        self.unlabeled_bs = batch_size - labeled_bs
        if self.unlabeled_bs > 0 and not self.unlabeled:
            raise ZskError("no unlabelled cases: data.labeled_num covers the whole train list; lower "
                           "data.labeled_num or set train.labeled_bs = train.batch_size for supervised training")
        if len(self.labeled) < labeled_bs:
            raise ZskError(f"{len(self.labeled)} labelled cases cannot fill train.labeled_bs = {labeled_bs}")
        self.seed, self.epoch, self.rank, self.world = seed, epoch, rank, world_size
        self.global_batches = len(self.labeled) // labeled_bs

    def __len__(self) -> int:
        return self.global_batches // self.world

    def _unlabeled_at(self, position: int) -> int:
        n = len(self.unlabeled)
        cycle, offset = divmod(position, n)
        g = torch.Generator().manual_seed(sample_seed(self.seed, 1, cycle))
        return self.unlabeled[int(torch.randperm(n, generator=g)[offset])]

    def __iter__(self) -> Iterator[list[tuple[int, int]]]:
        g = torch.Generator().manual_seed(sample_seed(self.seed, 0, self.epoch))
        order = [self.labeled[i] for i in torch.randperm(len(self.labeled), generator=g).tolist()]
        for b in range(self.rank, len(self) * self.world, self.world):
            items = order[b * self.labeled_bs:(b + 1) * self.labeled_bs]
            start = (self.epoch * self.global_batches + b) * self.unlabeled_bs
            items += [self._unlabeled_at(start + j) for j in range(self.unlabeled_bs)]
            yield [(idx, sample_seed(self.seed, 2, self.epoch, b, slot)) for slot, idx in enumerate(items)]


# ----------------------------------------------------------------------------- sample data


def synthetic_case(shape: tuple[int, int, int], rng: np.random.Generator, noise: float = 0.6
                   ) -> tuple[np.ndarray, np.ndarray]:
    """A volume with an ellipsoid-like structure (a rotated ellipsoid plus an overlapping lobe),
    bright on a smoothly varying background, with Gaussian noise; z-scored like LA's preprocessing."""
    grid = np.stack(np.meshgrid(*[np.arange(s, dtype=np.float32) for s in shape], indexing="ij"), -1)
    size = np.asarray(shape, dtype=np.float32)
    label = np.zeros(shape, dtype=bool)
    center = size * rng.uniform(0.4, 0.6, 3)
    for lobe in range(2):
        radii = size * (rng.uniform(0.18, 0.28, 3) if lobe == 0 else rng.uniform(0.1, 0.16, 3))
        c = center if lobe == 0 else center + size * rng.uniform(-0.15, 0.15, 3)
        q, _ = np.linalg.qr(rng.normal(size=(3, 3)))
        local = (grid - c) @ q
        label |= ((local / radii) ** 2).sum(-1) <= 1.0
    background = ndimage.gaussian_filter(rng.normal(size=shape), sigma=4) * 3.0
    image = 1.5 * label + background + rng.normal(scale=noise, size=shape)
    image = ndimage.gaussian_filter(image, sigma=0.7)
    image = (image - image.mean()) / (image.std() + 1e-8)
    return image.astype(np.float32), label.astype(np.uint8)


SAMPLE_SHAPE = (48, 40, 32)
SAMPLE_SPACING = (0.625, 0.625, 1.25)


def write_sample(root: str | Path, num_train: int = 12, num_test: int = 4, shape: tuple[int, int, int] = SAMPLE_SHAPE,
                 seed: int = 0) -> dict[str, Path]:
    """Write the synthetic sample set twice, in the LA HDF5 layout (``la/<ID>/mri_norm2.h5``,
    ``train.list``, ``test.list``) and as NIfTI (``nifti/images``, ``nifti/labels``, ``train.csv``,
    ``test.csv``) with an anisotropic spacing and a non-trivial affine. Deterministic for a seed."""
    root = Path(root)
    rng = np.random.default_rng(seed)
    la, nii = root / "la", root / "nifti"
    names = {"train": [f"SAMPLE{i:03d}" for i in range(num_train)],
             "test": [f"SAMPLE{num_train + i:03d}" for i in range(num_test)]}
    affine = np.diag([*SAMPLE_SPACING, 1.0])
    affine[:3, 3] = (-15.0, -12.5, 20.0)
    for split, cases in names.items():
        rows = []
        for name in cases:
            image, label = synthetic_case(shape, rng)
            write_h5_volume(la / name / "mri_norm2.h5", image, label, spacing=SAMPLE_SPACING)
            write_nifti(nii / "images" / f"{name}.nii.gz", image, affine, dtype=np.float32)
            write_nifti(nii / "labels" / f"{name}.nii.gz", label, affine, dtype=np.uint8)
            rows.append((name, f"images/{name}.nii.gz", f"labels/{name}.nii.gz"))
        (la / f"{split}.list").write_text("".join(f"{n}\n" for n in cases))
        with (nii / f"{split}.csv").open("w", newline="") as f:
            w = csv.writer(f)
            w.writerow(["name", "image", "label"])
            w.writerows(rows)
    return {"la": la, "nifti": nii}
