"""Hyperspectral scenes for the hsi task: known benchmarks, preprocessing, train/val/test sampling, sample data.

Readers by file format live in `zsk.data.cubes`; this module knows the benchmarks (file names, keys,
class names, RGB bands; shared/specs/hsi.md "Data", after DeepHyperX) and the sampling protocols.
Label 0 is "unlabelled" everywhere: never trained on, never scored. Internally classes are 0..K-1.
"""

from __future__ import annotations

import colorsys
import itertools
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch
from torch import Tensor

from zsk.core.errors import ZskError
from zsk.core.progress import log, warn
from zsk.data import cubes
from zsk.tasks.hsi.config import DataConfig, SplitConfig

# ----------------------------------------------------------------------------------------------
# Known benchmarks (shared/specs/hsi.md, "Readers" table and "Class names")
# ----------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Benchmark:
    folder: str  # DeepHyperX keeps each under <root>/<folder>/; a flat <root>/ also works
    image: str
    image_key: str | None
    labels: str
    labels_key: str | None
    class_names: tuple[str, ...]
    rgb_bands: tuple[int, int, int]  # 0-based band indices of an RGB composite
    shape: tuple[int, int, int] | None = None  # rows, cols, bands of the standard file (spec table)
    drop_last_bands: int = 0


BENCHMARKS: dict[str, Benchmark] = {
    "indian_pines": Benchmark(
        "IndianPines", "Indian_pines_corrected.mat", "indian_pines_corrected", "Indian_pines_gt.mat", "indian_pines_gt",
        ("Alfalfa", "Corn-notill", "Corn-mintill", "Corn", "Grass-pasture", "Grass-trees", "Grass-pasture-mowed",
         "Hay-windrowed", "Oats", "Soybean-notill", "Soybean-mintill", "Soybean-clean", "Wheat", "Woods",
         "Buildings-Grass-Trees-Drives", "Stone-Steel-Towers"),
        (43, 21, 11),
        (145, 145, 200),
    ),
    "pavia_u": Benchmark(
        "PaviaU", "PaviaU.mat", "paviaU", "PaviaU_gt.mat", "paviaU_gt",
        ("Asphalt", "Meadows", "Gravel", "Trees", "Painted metal sheets", "Bare Soil", "Bitumen",
         "Self-Blocking Bricks", "Shadows"),
        (55, 41, 12),
        (610, 340, 103),
    ),
    "pavia_c": Benchmark(
        "PaviaC", "Pavia.mat", "pavia", "Pavia_gt.mat", "pavia_gt",
        ("Water", "Trees", "Asphalt", "Self-Blocking Bricks", "Bitumen", "Tiles", "Shadows", "Meadows", "Bare Soil"),
        (55, 41, 12),
        (1096, 715, 102),
    ),
    "salinas": Benchmark(
        "Salinas", "Salinas_corrected.mat", "salinas_corrected", "Salinas_gt.mat", "salinas_gt",
        ("Brocoli_green_weeds_1", "Brocoli_green_weeds_2", "Fallow", "Fallow_rough_plow", "Fallow_smooth", "Stubble",
         "Celery", "Grapes_untrained", "Soil_vinyard_develop", "Corn_senesced_green_weeds", "Lettuce_romaine_4wk",
         "Lettuce_romaine_5wk", "Lettuce_romaine_6wk", "Lettuce_romaine_7wk", "Vinyard_untrained",
         "Vinyard_vertical_trellis"),
        (43, 21, 11),
        (512, 217, 204),
    ),
    "ksc": Benchmark(
        "KSC", "KSC.mat", "KSC", "KSC_gt.mat", "KSC_gt",
        ("Scrub", "Willow swamp", "Cabbage palm hammock", "Cabbage palm/oak hammock", "Slash pine",
         "Oak/broadleaf hammock", "Hardwood swamp", "Graminoid marsh", "Spartina marsh", "Cattail marsh",
         "Salt marsh", "Mud flats", "Water"),
        (43, 21, 11),
        (512, 614, 176),
    ),
    "botswana": Benchmark(
        "Botswana", "Botswana.mat", "Botswana", "Botswana_gt.mat", "Botswana_gt",
        ("Water", "Hippo grass", "Floodplain grasses 1", "Floodplain grasses 2", "Reeds", "Riparian", "Firescar",
         "Island interior", "Acacia woodlands", "Acacia shrublands", "Acacia grasslands", "Short mopane",
         "Mixed mopane", "Exposed soils"),
        (75, 33, 15),
        (1476, 256, 145),
    ),
    "dfc2018": Benchmark(
        "DFC2018_HSI", "2018_IEEE_GRSS_DFC_HSI_TR.HDR", None, "2018_IEEE_GRSS_DFC_GT_TR.tif", None,
        ("Healthy grass", "Stressed grass", "Artificial turf", "Evergreen trees", "Deciduous trees", "Bare earth",
         "Water", "Residential buildings", "Non-residential buildings", "Roads", "Sidewalks", "Crosswalks",
         "Major thoroughfares", "Highways", "Railways", "Paved parking lots", "Unpaved parking lots", "Cars",
         "Trains", "Stadium seats"),
        (47, 31, 15),
        drop_last_bands=2,
    ),
}


def default_palette(num_classes: int) -> np.ndarray:
    """(K+1, 3) uint8 colours: black for 0 (unlabelled), then evenly spaced hues alternating in brightness."""
    colours = [(0, 0, 0)]
    for i in range(num_classes):
        r, g, b = colorsys.hsv_to_rgb(i / max(1, num_classes), 0.85, 0.95 if i % 2 == 0 else 0.7)
        colours.append((round(r * 255), round(g * 255), round(b * 255)))
    return np.asarray(colours, dtype=np.uint8)


# ----------------------------------------------------------------------------------------------
# Scenes
# ----------------------------------------------------------------------------------------------


@dataclass
class Scene:
    """One labelled scene as read from disk: the raw cube (NaN/inf pixels zeroed under `data.non_finite: zero`) and
    its label map."""

    image: np.ndarray  # (H, W, B) float32
    labels: np.ndarray  # (H, W) int64, 0 = unlabelled, 1..K
    class_names: list[str]
    rgb_bands: tuple[int, int, int]
    palette: np.ndarray  # (K + 1, 3) uint8
    image_path: Path
    labels_path: Path

    @property
    def num_classes(self) -> int:
        return len(self.class_names)


def _find(root: Path, folder: str | None, name: str) -> Path:
    direct = root / name
    if direct.exists() or folder is None:
        return direct
    nested = root / folder / name
    return nested if nested.exists() else direct


def resolve_files(cfg: DataConfig) -> tuple[Path, str | None, Path, str | None, Benchmark | None]:
    """(image path, image key, labels path, labels key, benchmark) from the recipe's data section."""
    root = Path(cfg.root).expanduser()
    bench = None
    if cfg.dataset is not None:
        if cfg.dataset not in BENCHMARKS:
            raise ZskError(f"data.dataset: unknown benchmark {cfg.dataset!r}; known: {', '.join(BENCHMARKS)} "
                           "(or leave it unset and give data.image / data.labels)")
        bench = BENCHMARKS[cfg.dataset]
    image_name = cfg.image or (bench.image if bench else None)
    if image_name is None:
        raise ZskError("data.image is not set: name the cube file (relative to data.root) or set data.dataset")
    labels_name = cfg.labels or (bench.labels if bench else image_name)
    folder = bench.folder if bench else None
    image_path = _find(root, folder, image_name)
    labels_path = _find(root, folder, labels_name)
    image_key = cfg.image_key if cfg.image_key is not None else (bench.image_key if bench else None)
    labels_key = cfg.labels_key if cfg.labels_key is not None else (bench.labels_key if bench else None)
    if not image_path.exists():
        hint = f" (DeepHyperX layout: {root / folder / image_name})" if folder else ""
        raise ZskError(f"{image_path}: cube file not found; set data.root to the folder holding it{hint}")
    return image_path, image_key, labels_path, labels_key, bench


def read_image(path: Path, key: str | None, drop_last_bands: int = 0) -> np.ndarray:
    """A cube as float32 (H, W, B), last `drop_last_bands` bands dropped."""
    cube = cubes.read_cube(path, key)
    if drop_last_bands:
        if drop_last_bands >= cube.shape[2]:
            raise ZskError(f"{path}: cannot drop {drop_last_bands} of {cube.shape[2]} bands (data.drop_last_bands)")
        cube = cube[..., : cube.shape[2] - drop_last_bands]
    return np.ascontiguousarray(cube, dtype=np.float32)


def non_finite_pixels(image: np.ndarray, where: Path | str, mode: str) -> np.ndarray:
    """(H, W) mask of the pixels with a NaN or inf value in any band.

    `mode` is `data.non_finite`: "error" refuses such a cube (ZskError naming `where` and the counts);
    "zero" warns and returns the mask, for the caller to zero those pixels (DeepHyperX `get_dataset`).
    """
    n_nan, n_inf, mask = cubes.non_finite(image)
    if not mask.any():
        return mask
    counts = f"{n_nan} NaN and {n_inf} inf values in {int(mask.sum())} of {mask.size} pixels"
    if mode == "error":
        raise ZskError(f"{where}: the cube holds {counts} (ENVI `data ignore value` pixels are read as NaN); fix "
                       "the file, or pass --set data.non_finite=zero to set those pixels to 0 in every band and "
                       "leave them unlabelled (and unpredicted)")
    warn(f"{where}: {counts} set to 0 in every band (data.non_finite=zero); those pixels are unlabelled "
         "and get no prediction")
    return mask


def _class_list(ids: list[int], names: list[str], limit: int = 8) -> str:
    """'3 (Corn), 7 (Oats)' for the first `limit` class ids, then how many more."""
    shown = ", ".join(f"{i} ({names[i - 1]})" for i in ids[:limit])
    return shown + (f" and {len(ids) - limit} more" if len(ids) > limit else "")


def load_scene(cfg: DataConfig) -> Scene:
    """Read and validate the recipe's scene. Pixels with a NaN/inf in any band refuse the cube, or with
    `data.non_finite: zero` are zeroed in the cube and unlabelled (DeepHyperX)."""
    image_path, image_key, labels_path, labels_key, bench = resolve_files(cfg)
    drop = cfg.drop_last_bands or (bench.drop_last_bands if bench else 0)
    image = read_image(image_path, image_key, drop)
    nan = non_finite_pixels(image, image_path, cfg.non_finite)
    if cfg.bands is not None and image.shape[2] != cfg.bands:
        warn(f"{image_path}: the cube has {image.shape[2]} bands, the recipe's data.bands says {cfg.bands}; "
             "the cube's count is used (data.bands only sizes `info`/`bench` when the files are absent)")
    labels = cubes.read_labels(labels_path, labels_key)
    cubes.check_labels_match(image, labels, image_path, labels_path)
    if nan.any():
        image[nan] = 0.0
        labels = labels.copy()
        labels[nan] = 0
    names = cfg.class_names or (list(bench.class_names) if bench else None)
    k_max = int(labels.max())
    if k_max == 0:
        raise ZskError(f"{labels_path}: the label map has no labelled pixel (all 0); check data.labels / data.labels_key")
    if names is not None and k_max > len(names):
        raise ZskError(f"{labels_path}: label {k_max} found but only {len(names)} class names are given "
                       "(data.class_names); labels must be 0 (unlabelled) .. K")
    if names is None:
        present = set(np.unique(labels).tolist()) - {0}
        if len(present) < k_max:  # some id in 1..k_max has no pixel (the first 8 found without listing them all)
            missing = list(itertools.islice((i for i in range(1, k_max + 1) if i not in present), 8))
            shown = ", ".join(f"{i} (class_{i})" for i in missing[:8])
            more = k_max - len(present) - min(8, len(missing))
            raise ZskError(f"{labels_path}: class {shown}{f' and {more} more' if more > 0 else ''} has no labelled "
                           f"pixel (labels go up to {k_max}; without data.class_names the classes are 1..{k_max}); "
                           "fix the label map or list the classes in data.class_names")
        names = [f"class_{i}" for i in range(1, k_max + 1)]
    counts = np.bincount(labels.ravel(), minlength=len(names) + 1)[1:]
    empty = [i + 1 for i in range(len(names)) if counts[i] == 0]
    if empty:
        raise ZskError(f"{labels_path}: class {_class_list(empty, names)} has no labelled pixel; fix the label map "
                       "or list only the classes present in data.class_names")
    rgb = tuple(cfg.rgb_bands) if cfg.rgb_bands else (bench.rgb_bands if bench else _default_rgb(image.shape[2]))
    rgb = tuple(min(int(b), image.shape[2] - 1) for b in rgb)
    if len(rgb) != 3:
        raise ZskError(f"data.rgb_bands: need 3 band indices, got {list(rgb)}")
    palette = default_palette(len(names))
    if cfg.palette is not None:
        if len(cfg.palette) != len(names) or any(len(c) != 3 for c in cfg.palette):
            raise ZskError(f"data.palette: need {len(names)} RGB triples, one per class")
        palette[1:] = np.asarray(cfg.palette, dtype=np.uint8)
    return Scene(image, labels, list(names), rgb, palette, image_path, labels_path)  # type: ignore[arg-type]


def _default_rgb(bands: int) -> tuple[int, int, int]:
    return (int(bands * 0.75), int(bands * 0.5), int(bands * 0.25))


# ----------------------------------------------------------------------------------------------
# Preprocessing: normalisation and PCA, fitted on the training scene and stored in checkpoints
# ----------------------------------------------------------------------------------------------


def fit_preprocess(image: np.ndarray, normalize: str, pca: int | None, seed: int = 0) -> dict:
    """Statistics of the scene for `apply_preprocess` (tensors and primitives, so they go into checkpoints)."""
    x = image.reshape(-1, image.shape[2]).astype(np.float64)
    stats: dict = {"normalize": normalize, "bands_in": int(image.shape[2])}
    if normalize == "global":
        lo, hi = np.full(1, x.min()), np.full(1, x.max())
    elif normalize == "band":
        lo, hi = x.min(0), x.max(0)
    elif normalize == "standard":
        lo, hi = x.mean(0), x.mean(0) + x.std(0)  # (x - mean) / std
    else:
        lo, hi = np.zeros(1), np.ones(1)
    hi = np.where(hi - lo > 0, hi, lo + 1.0)
    stats["low"] = torch.from_numpy(lo.astype(np.float32))
    stats["high"] = torch.from_numpy(hi.astype(np.float32))
    if pca is not None:
        if not 1 <= pca <= image.shape[2]:
            raise ZskError(f"data.pca={pca}: must be between 1 and the band count {image.shape[2]}")
        z = (x - lo) / (hi - lo)
        rng = np.random.default_rng(seed)
        rows = z if len(z) <= 200_000 else z[rng.choice(len(z), 200_000, replace=False)]
        mean = rows.mean(0)
        _, _, vt = np.linalg.svd(rows - mean, full_matrices=False)
        stats["pca_mean"] = torch.from_numpy(mean.astype(np.float32))
        stats["pca_components"] = torch.from_numpy(vt[:pca].astype(np.float32))
    return stats


def apply_preprocess(image: np.ndarray, stats: dict, path: Path | str = "cube") -> np.ndarray:
    """Normalise (and project on the PCA components of) a cube with fitted statistics -> float32 (H, W, B')."""
    if image.shape[2] != stats["bands_in"]:
        raise ZskError(f"{path}: cube has {image.shape[2]} bands but the checkpoint was trained on "
                       f"{stats['bands_in']} bands")
    x = image.astype(np.float32, copy=True)
    x[~np.isfinite(x).all(axis=2)] = 0.0
    lo, hi = stats["low"].numpy(), stats["high"].numpy()
    x = (x - lo) / (hi - lo)
    if stats.get("pca_components") is not None:
        x = (x - stats["pca_mean"].numpy()) @ stats["pca_components"].numpy().T
    return np.ascontiguousarray(x, dtype=np.float32)


def preprocessed_bands(stats: dict) -> int:
    comps = stats.get("pca_components")
    return int(comps.shape[0]) if comps is not None else int(stats["bands_in"])


# ----------------------------------------------------------------------------------------------
# Sampling (DeepHyperX `sample_gt` modes, shared/specs/hsi.md "Sampling")
# ----------------------------------------------------------------------------------------------


@dataclass
class Split:
    """Label maps (0 = not in the set) of the training, validation and test pixels; disjoint by construction."""

    train: np.ndarray
    val: np.ndarray
    test: np.ndarray
    notes: list[str] = field(default_factory=list)

    def counts(self, num_classes: int) -> dict[str, list[int]]:
        return {name: np.bincount(getattr(self, name).ravel(), minlength=num_classes + 1)[1:].tolist()
                for name in ("train", "val", "test")}


def split_size(cfg: SplitConfig) -> tuple[str, float]:
    """("fraction", f) or ("count", n) from the split section; ZskError when both are set or out of range."""
    if cfg.fraction is not None and cfg.count is not None:
        raise ZskError("data.split: set either fraction or count, not both (to use a count over a recipe that sets "
                       "a fraction: --set data.split.fraction=null)")
    if cfg.count is not None:
        if cfg.count < 1:
            raise ZskError(f"data.split.count={cfg.count}: need at least 1 pixel")
        return "count", float(cfg.count)
    fraction = 0.1 if cfg.fraction is None else cfg.fraction
    if not 0.0 < fraction < 1.0:
        raise ZskError(f"data.split.fraction={fraction}: must be between 0 and 1 (use data.split.count for pixel counts)")
    return "fraction", fraction


def _class_pixels(labels: np.ndarray, usable: np.ndarray) -> dict[int, np.ndarray]:
    flat = np.where(usable.ravel(), labels.ravel(), 0)
    order = np.argsort(flat, kind="stable")
    counts = np.bincount(flat, minlength=labels.max() + 1)
    starts = np.concatenate([[0], np.cumsum(counts)])
    return {c: order[starts[c] : starts[c + 1]] for c in range(1, len(counts)) if counts[c] > 0}


def _take(labels: np.ndarray, idx: np.ndarray) -> np.ndarray:
    out = np.zeros(labels.size, dtype=np.int64)
    out[idx] = labels.ravel()[idx]
    return out.reshape(labels.shape)


def _stratified_counts(totals: dict[int, int], kind: str, size: float, per_class: bool) -> dict[int, int]:
    """Training pixels per class; at least 1, and at least one pixel of each class left for testing."""
    grand = sum(totals.values())
    out = {}
    for c, n in totals.items():
        if kind == "fraction":
            want = round(size * n)
        elif per_class:
            want = int(size)
        else:
            want = round(size * n / grand)
        out[c] = int(min(max(want, 1), max(n - 1, 1)))
    return out


def disjoint_cut(rows_of_class: np.ndarray, height: int, fraction: float) -> int:
    """First row x at which the share of the class's pixels in rows < x exceeds 0.9 * fraction (DeepHyperX)."""
    per_row = np.bincount(rows_of_class, minlength=height)
    above = np.concatenate([[0], np.cumsum(per_row)])  # above[x] = pixels in rows < x
    ratio = above / max(1, len(rows_of_class))
    hits = np.flatnonzero(ratio > 0.9 * fraction)
    return int(hits[0]) if len(hits) else height


def split_labels(
    labels: np.ndarray,
    cfg: SplitConfig,
    seed: int,
    usable: np.ndarray | None = None,
    train_mask: np.ndarray | None = None,
    test_mask: np.ndarray | None = None,
) -> Split:
    """Split the labelled pixels into train / val / test label maps.

    random: stratified draw (a fraction of each class, or a total count spread over classes in proportion);
    fixed: the same count (or fraction) drawn in every class; disjoint: per class, the rows above a cut go to
    training and the rows below to test (spatially separated); masks: user label maps. `usable` excludes
    pixels (the border when `data.pad: none`). The validation set is `val_share` of each class's training pixels.
    """
    usable = np.ones(labels.shape, dtype=bool) if usable is None else usable
    labelled = (labels > 0) & usable
    rng = np.random.default_rng(seed)
    notes: list[str] = []
    if cfg.mode == "masks":
        if train_mask is None:
            raise ZskError("data.split.mode=masks needs data.split.train_mask (a label map of the training pixels)")
        train = np.where(usable, train_mask, 0).astype(np.int64)
        if test_mask is not None:
            test = np.where(usable, test_mask, 0).astype(np.int64)
            overlap = int(((train > 0) & (test > 0)).sum())
            if overlap:
                raise ZskError(f"{cfg.test_mask}: {overlap} pixels are in both the training and the test mask")
        else:
            test = np.where(labelled & (train == 0), labels, 0)
    else:
        kind, size = split_size(cfg)
        groups = _class_pixels(labels, usable)
        train_idx: list[np.ndarray] = []
        if cfg.mode in ("random", "fixed"):
            counts = _stratified_counts({c: len(i) for c, i in groups.items()}, kind, size, cfg.mode == "fixed")
            for c, idx in groups.items():
                if cfg.mode == "fixed" and kind == "count" and counts[c] < size:
                    notes.append(f"class {c} has {len(idx)} labelled pixels: {counts[c]} used for training, not {int(size)}")
                train_idx.append(rng.permutation(idx)[: counts[c]])
        elif cfg.mode == "disjoint":
            width = labels.shape[1]
            for idx in groups.values():
                fraction = size if kind == "fraction" else min(1.0, size / len(idx))
                cut = disjoint_cut(idx // width, labels.shape[0], fraction)
                train_idx.append(idx[idx // width < cut])
        else:
            raise ZskError(f"data.split.mode: {cfg.mode!r} is not one of random, fixed, disjoint, masks")
        train = _take(labels, np.concatenate(train_idx) if train_idx else np.zeros(0, np.int64))
        test = np.where(labelled & (train == 0), labels, 0)
    val = np.zeros_like(train)
    if cfg.val_share > 0:
        if not cfg.val_share < 1:
            raise ZskError(f"data.split.val_share={cfg.val_share}: must be in [0, 1)")
        for _c, idx in _class_pixels(train, train > 0).items():
            n_val = int(np.floor(cfg.val_share * len(idx) + 0.5))
            n_val = min(n_val, len(idx) - 1)
            if n_val > 0:
                pick = rng.permutation(idx)[:n_val]
                val.ravel()[pick] = train.ravel()[pick]
        train = np.where(val > 0, 0, train)
    if cfg.mode == "random":
        notes.append("random pixel splits put overlapping patches in train and test and inflate accuracy "
                     "(Nalepa et al. 2018); prefer data.split.mode=disjoint for honest numbers")
    return Split(train, val, test, notes)


def border_mask(shape: tuple[int, int], margin: int) -> np.ndarray:
    """True for pixels at least `margin` from every image edge (the only ones with a whole patch when unpadded)."""
    ok = np.zeros(shape, dtype=bool)
    h, w = shape
    if h > 2 * margin and w > 2 * margin:
        ok[margin : h - margin, margin : w - margin] = True
    return ok


def make_split(scene: Scene, cfg: DataConfig, seed: int, margin: int) -> Split:
    """The recipe's split of `scene` (reads mask files in `masks` mode); ZskError if a class gets no training pixel."""
    usable = border_mask(scene.labels.shape, margin) if cfg.pad == "none" else None
    train_mask = test_mask = None
    if cfg.split.mode == "masks":
        root = Path(cfg.root).expanduser()
        if cfg.split.train_mask is None:
            raise ZskError("data.split.mode=masks needs data.split.train_mask (a label map of the training pixels)")
        for name in ("train_mask", "test_mask"):
            value = getattr(cfg.split, name)
            if value is None:
                continue
            path = Path(value) if Path(value).is_absolute() else root / value
            mask = cubes.read_labels(path)
            if mask.shape != scene.labels.shape:
                raise ZskError(f"{path}: mask of shape {mask.shape} does not match the scene's "
                               f"{scene.labels.shape[0]} x {scene.labels.shape[1]} pixels")
            if mask.max() > scene.num_classes:
                raise ZskError(f"{path}: label {mask.max()} but the scene has {scene.num_classes} classes")
            if name == "train_mask":
                train_mask = mask
            else:
                test_mask = mask
    split = split_labels(scene.labels, cfg.split, seed, usable, train_mask, test_mask)
    counts = split.counts(scene.num_classes)
    fit = [t + v for t, v in zip(counts["train"], counts["val"], strict=True)]
    missing = [f"{i + 1} ({scene.class_names[i]})" for i, n in enumerate(fit) if n == 0]
    if missing:
        where = cfg.split.train_mask if cfg.split.mode == "masks" else scene.labels_path
        raise ZskError(f"{where}: class {', '.join(missing)} gets no training pixel under data.split "
                       f"(mode {cfg.split.mode}); raise data.split.fraction/count or use another split")
    if cfg.pad == "none" and usable is not None:
        lost = int(((scene.labels > 0) & ~usable).sum())
        if lost:
            log(f"data.pad=none: {lost} labelled border pixels are neither trained on nor scored")
    for note in split.notes:
        log(f"split: {note}")
    return split


# ----------------------------------------------------------------------------------------------
# Patches
# ----------------------------------------------------------------------------------------------


def check_scene_size(shape: tuple[int, ...], patch: int, pad: str, where: Path | str) -> None:
    """ZskError naming `where` when a (rows, cols, ...) scene is too small for `model.patch`: reflect padding needs
    more rows and columns than patch // 2, no padding (`data.pad: none`) at least one whole patch."""
    rows, cols = int(shape[0]), int(shape[1])
    need = patch // 2 + 1 if pad == "reflect" else patch
    if min(rows, cols) < need:
        raise ZskError(f"{where}: the scene of {rows} x {cols} pixels is too small for model.patch={patch} "
                       f"(data.pad={pad} needs at least {need} x {need} pixels)")


def pad_cube(cube: Tensor, margin: int, mode: str) -> Tensor:
    """(B, H, W) -> (B, H + 2m, W + 2m) reflect-padded, or unchanged for `mode="none"`."""
    if mode == "none" or margin == 0:
        return cube
    if margin >= min(cube.shape[1:]):
        raise ZskError(f"the scene ({cube.shape[1]} x {cube.shape[2]} pixels) is too small for reflect padding of "
                       f"{margin} pixels (model.patch)")
    return torch.nn.functional.pad(cube.unsqueeze(0), (margin, margin, margin, margin), mode="reflect")[0]


def extract_patches(padded: Tensor, ys: Tensor, xs: Tensor, patch: int) -> Tensor:
    """(B, Hp, Wp) padded cube, centre rows/cols in unpadded coordinates -> (N, B, w, w) patches (one gather)."""
    offs = torch.arange(patch, device=padded.device)
    rows = (ys[:, None] + offs[None, :])[:, :, None]  # (N, w, 1)
    cols = (xs[:, None] + offs[None, :])[:, None, :]  # (N, 1, w)
    return padded[:, rows, cols].permute(1, 0, 2, 3)


# ----------------------------------------------------------------------------------------------
# Sample data
# ----------------------------------------------------------------------------------------------

SAMPLE_CLASSES = ("Water", "Forest", "Meadow", "Bare soil", "Asphalt", "Roof")
SAMPLE_SHAPE = (64, 64, 48)



def synthetic_scene(
    height: int = 64, width: int = 64, bands: int = 48, num_classes: int = 6, noise: float = 0.06, seed: int = 0
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """A learnable scene: Voronoi regions of distinct class spectra, smooth illumination, pixel noise, unlabelled edges.

    Returns (cube (H, W, B) float32 reflectance-like values, labels (H, W) uint8 with 0 on region borders,
    wavelengths (B,) in nm).
    """
    rng = np.random.default_rng(seed)
    wavelengths = np.linspace(400.0, 2400.0, bands)
    t = np.linspace(0.0, 1.0, bands)
    spectra = []
    for c in range(num_classes):
        centres = rng.uniform(0.05, 0.95, size=3)
        widths = rng.uniform(0.05, 0.2, size=3)
        heights = rng.uniform(0.2, 0.6, size=3)
        s = 0.15 + 0.1 * c / num_classes + sum(h * np.exp(-0.5 * ((t - m) / w) ** 2) for h, m, w in zip(heights, centres, widths, strict=True))
        spectra.append(s)
    spectra = np.stack(spectra)  # (K, B)
    n_seeds = max(num_classes * 2, (height * width) // 300)
    seeds = rng.uniform(0, [height, width], size=(n_seeds, 2))
    seed_class = np.concatenate([np.arange(num_classes), rng.integers(0, num_classes, n_seeds - num_classes)])
    yy, xx = np.mgrid[0:height, 0:width]
    d = (yy[..., None] - seeds[:, 0]) ** 2 + (xx[..., None] - seeds[:, 1]) ** 2  # (H, W, S)
    region = d.argmin(-1)
    classes = seed_class[region]  # 0..K-1
    illumination = 1.0 + 0.15 * np.sin(yy / height * 2 * np.pi * rng.uniform(0.5, 1.5)) * np.cos(xx / width * np.pi)
    cube = spectra[classes] * illumination[..., None] + rng.normal(0, noise, size=(height, width, bands))
    # region borders unlabelled, as in real ground truth
    border = np.zeros((height, width), dtype=bool)
    border[:-1] |= region[:-1] != region[1:]
    border[1:] |= region[1:] != region[:-1]
    border[:, :-1] |= region[:, :-1] != region[:, 1:]
    border[:, 1:] |= region[:, 1:] != region[:, :-1]
    labels = np.where(border, 0, classes + 1).astype(np.uint8)
    return cube.astype(np.float32), labels, wavelengths


def write_sample(directory: str | Path, height: int = SAMPLE_SHAPE[0], width: int = SAMPLE_SHAPE[1],
                 bands: int = SAMPLE_SHAPE[2], seed: int = 0) -> dict[str, str]:
    """Write the synthetic sample scene as HDF5, MATLAB v5 and ENVI (+ NumPy), with its labels; return the paths.

    Files: sample.h5 (`image`, `gt`), sample.mat (`sample`, `sample_gt`), sample.hdr/.img with
    sample_gt.hdr/.img (ENVI), sample.npy / sample_gt.npy, and classes.txt.
    """
    out = Path(directory)
    out.mkdir(parents=True, exist_ok=True)
    cube, labels, wl = synthetic_scene(height, width, bands, len(SAMPLE_CLASSES), seed=seed)
    paths = {
        "h5": cubes.write_h5(out / "sample.h5", cube, labels, wavelengths=wl),
        "mat": cubes.write_mat(out / "sample.mat", {"sample": cube, "sample_gt": labels}),
        "envi": cubes.write_envi(out / "sample.hdr", cube, interleave="bsq", wavelengths=wl),
        "envi_gt": cubes.write_envi(out / "sample_gt.hdr", labels[..., None], interleave="bsq"),
    }
    np.save(out / "sample.npy", cube)
    np.save(out / "sample_gt.npy", labels)
    paths["npy"] = out / "sample.npy"
    paths["npy_gt"] = out / "sample_gt.npy"
    (out / "classes.txt").write_text("\n".join(SAMPLE_CLASSES) + "\n")
    return {k: str(v) for k, v in paths.items()}
