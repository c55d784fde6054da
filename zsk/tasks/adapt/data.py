"""Cityscapes (target), GTAV and SYNTHIA-RAND-CITYSCAPES (source) readers, STAL's list files, the
training augmentations of STAL's ``cityscapes_semi_cp.py`` / ``augmentation.py``, and the synthetic
sample set (GTAV-layout source + Cityscapes-layout target with a domain shift)."""

from __future__ import annotations

import hashlib
import math
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image
from torch import Tensor
from torch.utils.data import Dataset

from zsk.core.errors import ZskError
from zsk.data.images import read_image, read_label
from zsk.data.png16 import read_png16, write_png16
from zsk.tasks.adapt.config import DataConfig

IGNORE = 255

CITYSCAPES_CLASSES: tuple[str, ...] = (
    "road", "sidewalk", "building", "wall", "fence", "pole", "traffic light", "traffic sign", "vegetation",
    "terrain", "sky", "person", "rider", "car", "truck", "bus", "train", "motorcycle", "bicycle",
)
# Cityscapes labelIds -> trainIds (cityscapesscripts labels.py); GTAV labels hold the same labelIds
LABELID_TO_TRAINID: dict[int, int] = {7: 0, 8: 1, 11: 2, 12: 3, 13: 4, 17: 5, 19: 6, 20: 7, 21: 8, 22: 9, 23: 10,
                                      24: 11, 25: 12, 26: 13, 27: 14, 28: 15, 31: 16, 32: 17, 33: 18}
# SYNTHIA raw ids -> the 19 Cityscapes trainIds (DAFormer's tools/convert_datasets/synthia.py)
SYNTHIA_TO_CS19: dict[int, int] = {3: 0, 4: 1, 2: 2, 21: 3, 5: 4, 7: 5, 15: 6, 9: 7, 6: 8, 16: 9, 1: 10, 10: 11, 17: 12,
                                   8: 13, 18: 14, 19: 15, 20: 16, 12: 17, 11: 18}
# SYNTHIA raw ids -> the 16-class ids STAL (and RIPU) use, which STAL then trains as 19 Cityscapes trainIds
SYNTHIA_TO_16: dict[int, int] = {3: 0, 4: 1, 2: 2, 21: 3, 5: 4, 7: 5, 15: 6, 9: 7, 6: 8, 1: 9, 10: 10, 17: 11, 8: 12,
                                 19: 13, 12: 14, 11: 15}
# trainIds of the 16- and 13-class SYNTHIA protocols (mIoU16 drops terrain, truck, train; mIoU13 also wall,
# fence, pole)
CLASSES_16: tuple[int, ...] = (0, 1, 2, 3, 4, 5, 6, 7, 8, 10, 11, 12, 13, 15, 17, 18)
CLASSES_13: tuple[int, ...] = tuple(c for c in CLASSES_16 if c not in (3, 4, 5))
SOURCE_PREFIXES = ("gta5_", "synthia_")


def lut(mapping: dict[int, int], size: int = 256) -> np.ndarray:
    """A lookup table id -> class with 255 for every unmapped id."""
    table = np.full(size, IGNORE, dtype=np.uint8)
    for k, v in mapping.items():
        table[k] = v
    return table


def sample_seed(*parts: int) -> int:
    """A 63-bit seed from integers (stable across processes and platforms)."""
    h = hashlib.blake2b(np.asarray(parts, dtype=np.int64).tobytes(), digest_size=8).digest()
    return int.from_bytes(h, "little") & ((1 << 63) - 1)


@dataclass(frozen=True)
class Sample:
    """One image: ``kind`` cityscapes | gtav | synthia, ``rel`` its list-file line, ``city`` (target)."""

    image: Path
    label: Path | None
    kind: str
    rel: str
    city: str = ""
    region_mask: Path | None = None  # RIPU region annotation: only the pixels where this PNG is 1 are labelled


def cityscapes_label_path(root: Path, rel: str) -> Path:
    """``leftImg8bit/<split>/<city>/<n>_leftImg8bit.png`` -> the trainIds label, else the labelIds one."""
    base = rel.replace("leftImg8bit/", "gtFine/", 1).replace("_leftImg8bit.png", "_gtFine_labelTrainIds.png")
    path = root / base
    if not path.is_file():
        alt = root / base.replace("_labelTrainIds.png", "_labelIds.png")
        if alt.is_file():
            return alt
    return path


def resolve_line(rel: str, cfg: DataConfig, root: Path, listfile: str) -> Sample:
    """A list-file line -> :class:`Sample`: STAL's Cityscapes paths and renamed source copies
    (``.../gta5/gta5_*``) relative to ``data.root``; GTAV ``images/*`` and SYNTHIA ``RGB/*`` relative to
    ``data.source_root``."""
    rel = rel.strip().split()[0]
    name = Path(rel).name
    if rel.startswith(("images/", "RGB/")):
        if cfg.source_root is None:
            raise ZskError(f"{listfile}: line {rel!r} is a GTAV/SYNTHIA path but data.source_root is not set; set it "
                           "to the source dataset folder")
        sroot = Path(cfg.source_root)
        if rel.startswith("images/"):
            return Sample(sroot / rel, sroot / "labels" / rel[len("images/"):], "gtav", rel)
        return Sample(sroot / rel, sroot / "GT" / "LABELS" / rel[len("RGB/"):], "synthia", rel)
    if name.startswith(SOURCE_PREFIXES):
        kind = "gtav" if name.startswith("gta5_") else "synthia"
        return Sample(root / rel, cityscapes_label_path(root, rel), kind, rel)
    if not rel.startswith("leftImg8bit/") or not name.endswith("_leftImg8bit.png"):
        raise ZskError(f"{listfile}: line {rel!r} is neither a Cityscapes path (leftImg8bit/<split>/<city>/"
                       "*_leftImg8bit.png) nor a GTAV (images/*) / SYNTHIA (RGB/*) one; fix the list file")
    city = rel.split("/")[2] if rel.count("/") >= 3 else ""
    return Sample(root / rel, cityscapes_label_path(root, rel), "cityscapes", rel, city)


def read_list(path: str | Path, cfg: DataConfig) -> list[Sample]:
    """A STAL list file (one relative image path per line) as samples."""
    p = Path(path)
    try:
        lines = [ln.strip() for ln in p.read_text(encoding="utf-8").splitlines() if ln.strip()]
    except FileNotFoundError:
        raise ZskError(f"list file {p} does not exist; give an existing file") from None
    except (OSError, UnicodeDecodeError) as e:
        raise ZskError(f"list file {p} cannot be read ({e}); it must be UTF-8 text") from None
    if not lines:
        raise ZskError(f"list file {p} is empty; it must name one image per line")
    return [resolve_line(ln, cfg, Path(cfg.root), str(p)) for ln in lines]


def cityscapes_split(cfg: DataConfig, split: str) -> list[Sample]:
    """Every ``leftImg8bit/<split>/<city>/*_leftImg8bit.png`` of the Cityscapes root (STAL's source copies
    in ``gta5/`` and ``synthia/`` excluded), sorted."""
    root = Path(cfg.root)
    folder = root / "leftImg8bit" / split
    if not folder.is_dir():
        raise ZskError(f"Cityscapes folder {folder} does not exist; data.root must hold leftImg8bit/{split}/<city>/")
    items = []
    for path in sorted(folder.glob("*/*_leftImg8bit.png")):
        if path.parent.name in ("gta5", "synthia"):
            continue
        rel = path.relative_to(root).as_posix()
        items.append(Sample(path, cityscapes_label_path(root, rel), "cityscapes", rel, path.parent.name))
    if not items:
        raise ZskError(f"{folder} holds no <city>/*_leftImg8bit.png images; check data.root")
    return items


def source_samples(cfg: DataConfig, seed: int) -> list[Sample]:
    """The source set: ``data.source_list``, else a seeded subset of ``num_source`` images of the source
    folder (GTAV ``images/``, SYNTHIA ``RGB/``, or STAL's ``leftImg8bit/train/{gta5,synthia}/``)."""
    if cfg.num_source == 0:
        return []
    if cfg.source_list:
        return read_list(cfg.source_list, cfg)
    root = Path(cfg.root)
    if cfg.source_root is not None:
        sroot = Path(cfg.source_root)
        sub = "images" if cfg.source == "gtav" else "RGB"
        if not (sroot / sub).is_dir():
            raise ZskError(f"source folder {sroot / sub} does not exist; data.source_root must hold {sub}/ "
                           f"({'labels/' if cfg.source == 'gtav' else 'GT/LABELS/'} beside it)")
        rels = [f"{sub}/{p.name}" for p in sorted((sroot / sub).glob("*.png"))]
    else:
        folder = root / "leftImg8bit" / "train" / ("gta5" if cfg.source == "gtav" else "synthia")
        if not folder.is_dir():
            raise ZskError(f"no source images: set data.source_root (GTAV/SYNTHIA folder) or data.source_list, or "
                           f"put STAL's renamed copies in {folder}")
        rels = [p.relative_to(root).as_posix() for p in sorted(folder.glob("*_leftImg8bit.png"))]
    if not rels:
        raise ZskError(f"the {cfg.source} source folder holds no PNG images; check data.source_root")
    g = torch.Generator().manual_seed(seed)
    order = torch.randperm(len(rels), generator=g).tolist()[: cfg.num_source]
    return [resolve_line(rels[i], cfg, root, "source folder") for i in sorted(order)]


def _source_kind(sample: Sample, cfg: DataConfig) -> str:
    if sample.kind != "cityscapes" and sample.kind != cfg.source:
        raise ZskError(f"{sample.image}: a {sample.kind} image in a data.source={cfg.source} run; set data.source")
    return sample.kind


def load_label(sample: Sample, cfg: DataConfig, convert: bool = True) -> np.ndarray:
    """The (H, W) uint8 class map of a sample: Cityscapes trainIds (labelIds converted), GTAV labelIds
    converted, SYNTHIA 16-bit ids (first channel) by ``data.synthia_label_map``. ``convert=False`` gives
    the raw stored ids (the official ACP partner quirk)."""
    if sample.label is None:
        raise ZskError(f"{sample.image} has no label file")
    if sample.kind == "synthia":
        raw = _read_synthia(sample.label)
        if not convert:
            return np.clip(raw, 0, 255).astype(np.uint8)
        table = lut(SYNTHIA_TO_CS19 if cfg.synthia_label_map == "cs19" else SYNTHIA_TO_16, 65536)
        return table[np.clip(raw, 0, 65535)]
    label = read_label(sample.label)
    if not convert:
        return label
    if sample.kind == "cityscapes" and sample.label.name.endswith("_labelTrainIds.png"):
        bad = label[(label != IGNORE) & (label >= cfg.num_classes)]
        if bad.size:
            raise ZskError(f"label {sample.label} holds id {int(bad[0])} >= data.num_classes = {cfg.num_classes}; "
                           "trainIds must be 0..18 or 255")
        return label
    return lut(LABELID_TO_TRAINID)[label]


def _is_png16(path: Path) -> bool:
    try:
        with path.open("rb") as f:
            head = f.read(26)
    except OSError:
        return False
    return len(head) == 26 and head[24] == 16


def _read_synthia(path: Path) -> np.ndarray:
    """SYNTHIA ``GT/LABELS`` ids: a 16-bit PNG (class id in the first channel), or an 8/16-bit grey PNG."""
    if _is_png16(path):
        arr = read_png16(path)
        return (arr[..., 0] if arr.ndim == 3 else arr).astype(np.int64)
    try:
        with Image.open(path) as im:
            arr = np.array(im)
    except FileNotFoundError:
        raise ZskError(f"label {path} does not exist") from None
    except OSError as e:
        raise ZskError(f"label {path} cannot be read ({type(e).__name__}); replace or remove the file") from None
    return (arr[..., 0] if arr.ndim == 3 else arr).astype(np.int64)


# ----------------------------------------------------------------------------- transforms


def to_tensor(image: np.ndarray, cfg: DataConfig) -> Tensor:
    """(H, W, 3) uint8 -> (1, 3, H, W) float normalised by data.mean / data.std (0..255 scale)."""
    x = torch.from_numpy(np.ascontiguousarray(image)).permute(2, 0, 1).float()[None]
    mean = torch.tensor(cfg.mean).view(1, 3, 1, 1)
    std = torch.tensor(cfg.std).view(1, 3, 1, 1)
    return (x - mean) / std


def resize_label(label: Tensor, size: tuple[int, int], mode: str = "nearest") -> Tensor:
    """(1, 1, H, W) labels resized by nearest neighbour, or bilinearly and rounded (``official_code``:
    cv2.resize of the SYNTHIA label, which invents ids at boundaries)."""
    if mode == "nearest":
        return F.interpolate(label.float(), size=size, mode="nearest").long()
    return F.interpolate(label.float(), size=size, mode="bilinear", align_corners=False).round().long()


def load_sample(sample: Sample, cfg: DataConfig, convert: bool = True) -> tuple[Tensor, Tensor]:
    """Normalised image (1, 3, H, W) and label (1, 1, H, W); source images (and labels) resized to
    ``data.source_size`` first as STAL does (2048 x 1024)."""
    image = read_image(sample.image)
    size = tuple(cfg.source_size) if (cfg.source_size is not None and sample.kind != "cityscapes") else None
    if sample.kind == "synthia" and cfg.label_resize == "official_code" and convert and size is not None:
        # official: cv2.resize (bilinear) of the raw 16-bit ids, then the id map: spurious ids at boundaries
        raw = torch.from_numpy(_read_synthia(sample.label).astype(np.float32))[None, None]
        raw = resize_label(raw, size, "official_code")[0, 0].clamp(0, 65535).numpy()
        table = lut(SYNTHIA_TO_CS19 if cfg.synthia_label_map == "cs19" else SYNTHIA_TO_16, 65536)
        label = table[raw]
    else:
        label = load_label(sample, cfg, convert)
    if label.shape != image.shape[:2] and sample.kind == "cityscapes":
        raise ZskError(f"label {sample.label} is {label.shape[1]}x{label.shape[0]} but its image {sample.image} is "
                       f"{image.shape[1]}x{image.shape[0]}; they must match")
    if sample.kind != "cityscapes":
        _source_kind(sample, cfg)
        if size is not None and image.shape[:2] != size:  # PIL's Lanczos ("ANTIALIAS"), as cityscapes_semi_cp.py
            image = np.array(Image.fromarray(image).resize((size[1], size[0]), Image.LANCZOS))
        if size is not None and label.shape != size:  # PIL resizes palette labels by nearest neighbour
            label = np.array(Image.fromarray(label).resize((size[1], size[0]), Image.NEAREST))
        if label.shape != image.shape[:2]:  # GTAV: a few label files differ in size from their image
            label = np.array(Image.fromarray(label).resize((image.shape[1], image.shape[0]), Image.NEAREST))
    if sample.region_mask is not None:  # partially annotated target image (RIPU regions): the rest is ignored
        mask = read_label(sample.region_mask)
        if mask.shape != label.shape:
            raise ZskError(f"region mask {sample.region_mask} is {mask.shape[1]}x{mask.shape[0]}, its label "
                           f"{sample.label} {label.shape[1]}x{label.shape[0]}; they must match")
        label = np.where(mask > 0, label, IGNORE).astype(np.uint8)
    x = to_tensor(image, cfg)
    y = torch.from_numpy(label.astype(np.int64))[None, None]
    return x, y


def augment(x: Tensor, y: Tensor, cfg: DataConfig, rng: np.random.Generator, scale: tuple[float, float],
            pad_label: int = IGNORE) -> tuple[Tensor, Tensor]:
    """RandResize (half the draws below 1, half above), horizontal flip, random crop padded to the crop
    size (image 0, label ``pad_label``): STAL's augmentation.py order."""
    lo, hi = scale
    s = lo + (1.0 - lo) * rng.uniform() if rng.uniform() < 0.5 else 1.0 + (hi - 1.0) * rng.uniform()
    h, w = x.shape[-2:]
    nh, nw = max(1, int(h * s)), max(1, int(w * s))
    x = F.interpolate(x, size=(nh, nw), mode="bilinear", align_corners=False)
    y = F.interpolate(y.float(), size=(nh, nw), mode="nearest").long()
    if cfg.flip and rng.uniform() < 0.5:
        x, y = x.flip(-1), y.flip(-1)
    ch, cw = cfg.crop_size
    ph, pw = max(ch - nh, 0), max(cw - nw, 0)
    if ph or pw:
        border = (pw // 2, pw - pw // 2, ph // 2, ph - ph // 2)
        x = F.pad(x, border, value=0.0)
        y = F.pad(y, border, value=pad_label)
    h, w = x.shape[-2:]
    top = int(rng.integers(0, h - ch + 1))
    left = int(rng.integers(0, w - cw + 1))
    return x[..., top:top + ch, left:left + cw], y[..., top:top + ch, left:left + cw]


class LabeledSet(Dataset):
    """Labelled training samples (source + target); an item is ``(index, seed)``. With ACP, a random
    partner (probability ``acp_prob``) is loaded with the wider rescale range, else zeros."""

    def __init__(self, samples: list[Sample], cfg: DataConfig, acp: bool, acp_prob: float, pad_label: int) -> None:
        self.samples, self.cfg, self.acp, self.acp_prob, self.pad_label = samples, cfg, acp, acp_prob, pad_label

    def __len__(self) -> int:
        return len(self.samples)

    def __getitem__(self, item: tuple[int, int]) -> dict[str, Tensor]:
        index, seed = item
        rng = np.random.default_rng(seed)
        x, y = load_sample(self.samples[index], self.cfg)
        x, y = augment(x, y, self.cfg, rng, self.cfg.rand_resize, self.pad_label)
        out = {"image": x[0], "label": y[0, 0]}
        if self.acp:
            if rng.uniform() < self.acp_prob:
                partner = self.samples[int(rng.integers(len(self.samples)))]
                convert = not (self.cfg.acp_source_labels == "official_code" and partner.kind != "cityscapes")
                px, py = load_sample(partner, self.cfg, convert=convert)
                px, py = augment(px, py, self.cfg, rng, self.cfg.paste_resize, self.pad_label)
                out.update(paste_image=px[0], paste_label=py[0, 0])
            else:
                out.update(paste_image=torch.zeros_like(x[0]), paste_label=torch.zeros_like(y[0, 0]))
        return out


class UnlabeledSet(Dataset):
    """Unlabelled target images, augmented like the labelled ones; an item is ``(index, seed)`` and
    returns the image and its index (for the cutmix bank)."""

    def __init__(self, samples: list[Sample], cfg: DataConfig) -> None:
        self.samples, self.cfg = samples, cfg

    def __len__(self) -> int:
        return len(self.samples)

    def __getitem__(self, item: tuple[int, int]) -> dict[str, Tensor]:
        index, seed = item
        rng = np.random.default_rng(seed)
        x = to_tensor(read_image(self.samples[index].image), self.cfg)
        y = torch.zeros((1, 1, *x.shape[-2:]), dtype=torch.long)
        x, _ = augment(x, y, self.cfg, rng, self.cfg.rand_resize)
        return {"image": x[0], "index": torch.tensor(index)}


class StepPlan:
    """Which samples every training step reads, from (seed, step) alone: ``batch_size`` labelled items (a
    per-pass shuffle continuing across epochs, STAL's labelled loader that restarts when exhausted) and one
    unlabelled item (the epoch's shuffle of the unlabelled set). An epoch is ``len(unlabeled) //
    (unlabeled_batch x world)`` steps, as STAL's unlabelled loader. Items are integer codes (step, slot), so
    DataLoader workers and resumed runs draw the same samples with the same augmentation seeds."""

    def __init__(self, n_lab: int, n_unl: int, batch_size: int, unlabeled_batch: int, *, seed: int, rank: int = 0,
                 world_size: int = 1) -> None:
        self.n_lab, self.n_unl, self.bs = n_lab, n_unl, batch_size
        self.seed, self.rank, self.world = seed, rank, world_size
        self.steps = n_unl // (unlabeled_batch * world_size)

    def _perm(self, kind: int, cycle: int, n: int) -> list[int]:
        g = torch.Generator().manual_seed(sample_seed(self.seed, kind, cycle))
        return torch.randperm(n, generator=g).tolist()

    def codes(self, step: int) -> list[int]:
        return [step * (self.bs + 1) + j for j in range(self.bs + 1)]

    def decode(self, code: int) -> tuple[int, int]:
        """(index into labelled + unlabelled, augmentation seed) of an item code."""
        step, slot = divmod(int(code), self.bs + 1)
        if slot < self.bs:
            cycle, offset = divmod((step * self.world + self.rank) * self.bs + slot, self.n_lab)
            return self._perm(1, cycle, self.n_lab)[offset], sample_seed(self.seed, 3, step, self.rank, slot)
        epoch, b = divmod(step, max(self.steps, 1))
        u = self._perm(2, epoch, self.n_unl)[(b * self.world + self.rank) % self.n_unl]
        return self.n_lab + u, sample_seed(self.seed, 4, step, self.rank)


class StepSampler:
    """The batches (lists of item codes) of one epoch of a :class:`StepPlan`."""

    def __init__(self, plan: StepPlan, epoch: int) -> None:
        self.plan, self.epoch = plan, epoch

    def __len__(self) -> int:
        return self.plan.steps

    def __iter__(self):
        for b in range(self.plan.steps):
            yield self.plan.codes(self.epoch * self.plan.steps + b)


class StepSet(Dataset):
    """One training step's inputs: item codes of a :class:`StepPlan` -> labelled or unlabelled samples."""

    def __init__(self, labeled: LabeledSet, unlabeled: UnlabeledSet, plan: StepPlan) -> None:
        self.labeled, self.unlabeled, self.plan = labeled, unlabeled, plan

    def __len__(self) -> int:
        return len(self.labeled) + len(self.unlabeled)

    def __getitem__(self, code: int) -> dict[str, Tensor]:
        flat, seed = self.plan.decode(code)
        if flat < len(self.labeled):
            return self.labeled[(flat, seed)]
        return self.unlabeled[(flat - len(self.labeled), seed)]


def collate_step(items: list[dict[str, Tensor]]) -> dict[str, Tensor]:
    """Stack the labelled items and the unlabelled item(s) of one step into one batch dict."""
    lab = [it for it in items if "label" in it]
    unl = [it for it in items if "index" in it]
    out = {k: torch.stack([it[k] for it in lab]) for k in lab[0]}
    if unl:
        out["u_image"] = torch.stack([it["image"] for it in unl])
        out["u_index"] = torch.stack([it["index"] for it in unl])
    return out


def labeled_pool(source: list[Sample], target: list[Sample], n_target_train: int, repeat: bool, seed: int) -> list[Sample]:
    """STAL's labelled list: the target images repeated to (#target train - #labelled) samples, plus the
    source images (the order is drawn by the sampler)."""
    if not target or not repeat:
        return source + target
    want = max(n_target_train - len(target), len(target))
    reps = target * math.ceil(want / len(target))
    g = torch.Generator().manual_seed(seed)
    pick = torch.randperm(len(reps), generator=g)[:want].tolist()
    return [reps[i] for i in sorted(pick)] + source


class EvalSet(Dataset):
    """Full-resolution normalised images with their trainId labels (validation)."""

    def __init__(self, samples: list[Sample], cfg: DataConfig) -> None:
        self.samples, self.cfg = samples, cfg

    def __len__(self) -> int:
        return len(self.samples)

    def __getitem__(self, index: int) -> dict[str, Tensor]:
        x, y = load_sample(self.samples[index], self.cfg)
        return {"image": x[0], "label": y[0, 0], "index": torch.tensor(index)}


# ----------------------------------------------------------------------------- synthetic sample

SAMPLE_CITIES = ("aachen", "bochum", "bremen", "zurich")
# a few classes with distinct colours; the source renders them saturated, the target darker and bluish
_SAMPLE_CLASSES = (0, 2, 8, 10, 13)  # road, building, vegetation, sky, car
_COLOURS = {0: (128, 64, 128), 2: (70, 70, 70), 8: (107, 142, 35), 10: (70, 130, 180), 13: (0, 0, 142)}
_TRAINID_TO_LABELID = {v: k for k, v in LABELID_TO_TRAINID.items()}


def _scene(rng: np.random.Generator, h: int, w: int) -> np.ndarray:
    """A street-like layout of trainIds: sky on top, buildings / vegetation, road below, cars on the road."""
    lab = np.zeros((h, w), dtype=np.uint8)
    horizon = int(h * rng.uniform(0.3, 0.5))
    lab[:horizon] = 10
    x = 0
    while x < w:
        seg = int(rng.integers(w // 6, w // 2))
        top = int(horizon * rng.uniform(0.1, 0.6))
        lab[top:int(h * 0.6), x:x + seg] = 2 if rng.uniform() < 0.6 else 8
        x += seg
    lab[int(h * 0.6):] = 0
    for _ in range(int(rng.integers(1, 3))):
        cw, chh = int(w * rng.uniform(0.1, 0.25)), int(h * rng.uniform(0.08, 0.15))
        cx, cy = int(rng.integers(0, w - cw)), int(rng.integers(int(h * 0.62), h - chh))
        lab[cy:cy + chh, cx:cx + cw] = 13
    return lab


def _render(lab: np.ndarray, rng: np.random.Generator, shift: bool) -> np.ndarray:
    img = np.zeros((*lab.shape, 3), dtype=np.float32)
    for c, col in _COLOURS.items():
        img[lab == c] = col
    if shift:  # the target domain: darker, colder, noisier
        img = img * np.array([0.7, 0.8, 1.1]) + 15
    img += rng.normal(0, 18 if shift else 8, img.shape)
    return np.clip(img, 0, 255).astype(np.uint8)


def write_sample(out: Path, num_source: int = 12, num_train: int = 12, num_val: int = 4, size: tuple[int, int] = (64, 128),
                 seed: int = 0) -> dict[str, Path]:
    """Write GTAV-layout source images (``gtav/images``, palette ``gtav/labels`` of labelIds) and a
    Cityscapes-layout target (``cityscapes/leftImg8bit``, ``gtFine`` labelIds + labelTrainIds) whose
    colours are shifted (the domain gap). Returns the two roots."""
    out = Path(out)
    rng = np.random.default_rng(seed)
    h, w = size
    gtav = out / "gtav"
    cs = out / "cityscapes"
    (gtav / "images").mkdir(parents=True, exist_ok=True)
    (gtav / "labels").mkdir(parents=True, exist_ok=True)
    lab_to_id = np.full(256, 0, dtype=np.uint8)
    for t, lid in _TRAINID_TO_LABELID.items():
        lab_to_id[t] = lid
    palette = np.zeros((256, 3), dtype=np.uint8)
    for c, col in _COLOURS.items():
        palette[_TRAINID_TO_LABELID[c]] = col
    for i in range(num_source):
        lab = _scene(rng, h + 8, w + 16)  # GTAV frames have another size (1914 x 1052)
        Image.fromarray(_render(lab, rng, False)).save(gtav / "images" / f"{i + 1:05d}.png")
        im = Image.fromarray(lab_to_id[lab], mode="P")
        im.putpalette(palette.reshape(-1).tolist())
        im.save(gtav / "labels" / f"{i + 1:05d}.png")
    for split, n in (("train", num_train), ("val", num_val)):
        for i in range(n):
            city = SAMPLE_CITIES[i % len(SAMPLE_CITIES)] if split == "train" else "frankfurt"
            stem = f"{city}_{i:06d}_000019"
            img_dir = cs / "leftImg8bit" / split / city
            lab_dir = cs / "gtFine" / split / city
            img_dir.mkdir(parents=True, exist_ok=True)
            lab_dir.mkdir(parents=True, exist_ok=True)
            lab = _scene(rng, h, w)
            Image.fromarray(_render(lab, rng, True)).save(img_dir / f"{stem}_leftImg8bit.png")
            Image.fromarray(lab_to_id[lab]).save(lab_dir / f"{stem}_gtFine_labelIds.png")
            Image.fromarray(lab).save(lab_dir / f"{stem}_gtFine_labelTrainIds.png")
    return {"cityscapes": cs, "gtav": gtav}


def write_synthia_sample(out: Path, num: int = 4, size: tuple[int, int] = (48, 80), seed: int = 0) -> Path:
    """A small SYNTHIA-RAND-CITYSCAPES layout: ``RGB/*.png`` and 16-bit ``GT/LABELS/*.png`` (raw ids in the
    first channel), for tests of the SYNTHIA reader."""
    out = Path(out)
    rng = np.random.default_rng(seed)
    (out / "RGB").mkdir(parents=True, exist_ok=True)
    (out / "GT" / "LABELS").mkdir(parents=True, exist_ok=True)
    to_raw = {v: k for k, v in SYNTHIA_TO_CS19.items()}
    for i in range(num):
        lab = _scene(rng, *size)
        raw = np.vectorize(lambda t: to_raw.get(int(t), 0))(lab).astype(np.uint16)
        Image.fromarray(_render(lab, rng, False)).save(out / "RGB" / f"{i:07d}.png")
        inst = rng.integers(0, 300, size, dtype=np.uint16)  # the second channel holds instance ids
        write_png16(out / "GT" / "LABELS" / f"{i:07d}.png", np.stack([raw, inst, np.zeros_like(raw)], -1), i % 5)
    return out


def _check_file(path: Path, what: str) -> tuple[int, int]:
    """Open a PNG/JPEG and verify its chunks (truncation, bad CRC); returns (H, W)."""
    try:
        with Image.open(path) as im:
            size = im.size
            im.verify()
    except FileNotFoundError:
        raise ZskError(f"{what} {path} does not exist; check data.root / data.source_root and the list files") from None
    except Exception as e:  # noqa: BLE001 - Pillow raises many types for damaged files
        raise ZskError(f"{what} {path} cannot be read ({type(e).__name__}); replace or remove the file") from None
    return size[1], size[0]


def check_samples(samples: list[Sample], what: str, labels: bool = True) -> None:
    """Open every image (and label) once before training: missing, unreadable or truncated files and
    Cityscapes labels whose size differs from their image are a ZskError naming the file. Results are
    cached by file fingerprints, so later runs skip the reads."""
    from zsk.core.cache import code_version, default_cache, file_fingerprint
    from zsk.core.progress import progress

    def compute() -> list[int]:
        for s in progress(samples, desc=f"checking {what} images"):
            hw = _check_file(s.image, "image")
            if labels:
                if s.label is None:
                    raise ZskError(f"image {s.image} has no label file")
                lhw = _check_file(s.label, "label")
                if s.kind == "cityscapes" and lhw != hw:
                    raise ZskError(f"label {s.label} is {lhw[1]}x{lhw[0]} but its image {s.image} is {hw[1]}x{hw[0]}; "
                                   "they must match")
        return [len(samples)]

    def fp(p: Path | None) -> dict | None:
        try:
            return file_fingerprint(p) if p is not None else None
        except OSError:
            return {"missing": str(p)}

    key = {"what": "adapt-files", "code": code_version(), "labels": labels,
           "files": [[fp(s.image), fp(s.label) if labels else None] for s in samples]}
    default_cache().get_or_compute("adapt-index", key, compute)
