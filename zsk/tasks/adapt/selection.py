"""Active-learning selection between STAL rounds (licongguan/ILM-ASSL core/active_learning/
Semi-sup_active_pu.py and img_select_based_entropy.py): the image-level mean normalised entropy of the
teacher, city-stratified quotas, highest scores first within each city; RIPU's region score (Xie et al.,
CVPR 2022, BIT-DA/RIPU: region impurity x prediction uncertainty) as an alternative image score."""

from __future__ import annotations

import math
from collections import Counter
from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor, nn

from zsk.tasks.adapt.data import Sample, to_tensor

# Cityscapes train cities and their sizes in the order of img_select_based_entropy.py (zurich last: it
# absorbs the rounding); other cities (the sample set, custom data) follow in name order.
CITYSCAPES_TRAIN_CITIES: dict[str, int] = {
    "aachen": 174, "bochum": 96, "bremen": 316, "cologne": 154, "darmstadt": 85, "dusseldorf": 221, "erfurt": 109,
    "hamburg": 248, "hanover": 196, "jena": 119, "krefeld": 99, "monchengladbach": 94, "strasbourg": 365,
    "stuttgart": 196, "tubingen": 144, "ulm": 95, "weimar": 142, "zurich": 122,
}


def pixel_entropy(logits: Tensor, eps: float = 1e-6) -> Tensor:
    """Per-pixel entropy of softmax(logits) over dim 1, divided by ln C (official: log(p + 1e-6))."""
    p = torch.softmax(logits.float(), 1)
    return -(p * torch.log(p + eps)).sum(1) / math.log(logits.shape[1])


def ripu_score(logits: Tensor, radius: int = 1) -> Tensor:
    """RIPU's region score per pixel: the entropy of the predicted-class histogram in the (2k+1)^2
    neighbourhood (region impurity) times the mean pixel entropy there (prediction uncertainty), both
    divided by ln C. (B, C, H, W) -> (B, H, W)."""
    c = logits.shape[1]
    k = 2 * radius + 1
    onehot = F.one_hot(logits.argmax(1), c).permute(0, 3, 1, 2).float()
    counts = F.avg_pool2d(onehot, k, stride=1, padding=radius, count_include_pad=False)
    hist = counts / counts.sum(1, keepdim=True).clamp_min(1e-12)
    impurity = -(hist * torch.log(hist + 1e-6)).sum(1) / math.log(c)
    uncertainty = F.avg_pool2d(pixel_entropy(logits)[:, None], k, stride=1, padding=radius,
                               count_include_pad=False)[:, 0]
    return impurity * uncertainty


def ripu_region_mask(score: Tensor, num_pixels: int, radius: int = 1, annotated: Tensor | None = None) -> Tensor:
    """RIPU's region annotation (RA) on one (H, W) score map: repeatedly take the highest-scoring pixel,
    annotate its (2k+1)^2 region and suppress scores in the (4k+1)^2 window around it, until ``num_pixels``
    new pixels are annotated (or no candidate is left). ``annotated``: pixels labelled earlier (never picked
    again). Returns the new (H, W) bool mask including ``annotated``."""
    h, w = score.shape
    score = score.clone().float()
    mask = torch.zeros((h, w), dtype=torch.bool, device=score.device) if annotated is None else annotated.clone().bool()
    score[mask] = float("-inf")
    before = int(mask.sum())
    while int(mask.sum()) - before < num_pixels:
        flat = int(torch.argmax(score))
        if not torch.isfinite(score.view(-1)[flat]):
            break
        y, x = divmod(flat, w)
        mask[max(y - radius, 0):y + radius + 1, max(x - radius, 0):x + radius + 1] = True
        r2 = 2 * radius
        score[max(y - r2, 0):y + r2 + 1, max(x - r2, 0):x + r2 + 1] = float("-inf")
    return mask


@torch.no_grad()
def image_uncertainty(model: nn.Module, image: Tensor, select_size: Sequence[int], selector: str = "entropy",
                      radius: int = 1) -> tuple[float, Tensor]:
    """U(x) of one normalised image (1, 3, H, W): resize to ``select_size``, teacher logits, upsample to
    H x W (bilinear, align_corners), per-pixel score map, its mean. Returns (score, map)."""
    h, w = image.shape[-2:]
    x = F.interpolate(image, size=tuple(select_size), mode="bilinear", align_corners=True)
    logits = model(x)["pred"]
    logits = F.interpolate(logits.float(), size=(h, w), mode="bilinear", align_corners=True)
    score_map = pixel_entropy(logits)[0] if selector == "entropy" else ripu_score(logits, radius)[0]
    return float(score_map.mean()), score_map


def city_quotas(budget: int, city_sizes: dict[str, int], labeled: Counter, total: int | None = None) -> dict[str, int]:
    """Images to label per city: round(K (n_city - n_city_labelled) / N) in the cities' order, the last
    city taking what makes the sum K (``every_city_num``; N = all target train images)."""
    total = total or sum(city_sizes.values())
    quotas: dict[str, int] = {}
    cities = list(city_sizes)
    for i, city in enumerate(cities):
        q = round(budget * (city_sizes[city] - labeled.get(city, 0)) / total)
        if i == len(cities) - 1:
            q = budget - sum(quotas.values())
        quotas[city] = max(q, 0)
    return quotas


def select_by_city(scores: dict[str, float], samples: Sequence[Sample], labeled: Iterable[str], budget: int,
                   order: Sequence[str] | None = None) -> list[str]:
    """The ``budget`` highest-scoring unlabelled images under the city quotas (ties by name). A city with
    fewer unlabelled images than its quota gives its shortfall to the best remaining images of any city
    (never the case for Cityscapes with STAL's budgets)."""
    labeled = set(labeled)
    found = Counter(s.city for s in samples)
    known = [c for c in (order or []) if c in found]
    city_sizes = {c: found[c] for c in sorted(found) if c not in known} | {c: found[c] for c in known}
    counts = Counter(s.city for s in samples if s.rel in labeled)
    quotas = city_quotas(budget, city_sizes, counts, len(samples))
    by_city: dict[str, list[Sample]] = {}
    for s in samples:
        if s.rel not in labeled and s.rel in scores:
            by_city.setdefault(s.city, []).append(s)
    chosen: list[str] = []
    for city, quota in quotas.items():
        ranked = sorted(by_city.get(city, []), key=lambda s: (-scores[s.rel], s.rel))
        chosen += [s.rel for s in ranked[:quota]]
    if len(chosen) < budget:
        rest = sorted((s for s in samples if s.rel not in labeled and s.rel not in set(chosen) and s.rel in scores),
                      key=lambda s: (-scores[s.rel], s.rel))
        chosen += [s.rel for s in rest[: budget - len(chosen)]]
    return chosen[:budget]


def initial_selection(samples: Sequence[Sample], size: int, seed: int) -> list[str]:
    """Round 1: a city-stratified random sample with the same quota rule (seeded scores)."""
    g = np.random.default_rng(seed)
    scores = {s.rel: float(v) for s, v in zip(samples, g.random(len(samples)), strict=True)}
    return select_by_city(scores, samples, (), size, list(CITYSCAPES_TRAIN_CITIES))


def run_selection(loaded: Any, budget: int, out: Path, labeled_file: Path | None = None,
                  montage_size: int = 8) -> dict[str, Any]:
    """``zsk adapt select``: one selection round with a trained checkpoint's teacher. The labelled list is
    ``labeled_file`` or the one the checkpoint was trained with; writes ``out`` (that list + the new images,
    STAL's format) and ``<out stem>-montage.png`` (selected images beside their score maps)."""
    from zsk.core.errors import ZskError
    from zsk.core.io import atomic_open
    from zsk.data.images import read_image
    from zsk.tasks.adapt.data import cityscapes_split, read_list
    from zsk.tasks.adapt.predict import selection_montage
    from zsk.tasks.adapt.train import score_images

    cfg = loaded.cfg
    if cfg.train.al.selector == "ripu_regions":
        raise ZskError("train.al.selector=ripu_regions annotates regions inside the training rounds; select images "
                       "with --set train.al.selector=entropy or ripu")
    if budget < 1:
        raise ZskError(f"--budget must be >= 1, got {budget}")
    out = Path(out)
    if out.is_dir():
        raise ZskError(f"--out {out} is a folder; give the list file to write, e.g. labeled.txt")
    target = cityscapes_split(cfg.data, "train")
    known = {s.rel for s in target}
    if labeled_file is not None:
        labeled = [s.rel for s in read_list(labeled_file, cfg.data) if s.kind == "cityscapes"]
    else:
        labeled = list(loaded.extra.get("labeled") or [])
    unknown = [r for r in labeled if r not in known]
    if unknown:
        raise ZskError(f"labelled image {unknown[0]} is not a Cityscapes train image under data.root = {cfg.data.root}")
    unl = [s for s in target if s.rel not in set(labeled)]
    if budget > len(unl):
        raise ZskError(f"--budget {budget} is more than the {len(unl)} unlabelled target images")
    scores, _ = score_images(loaded.model.teacher, unl, cfg, loaded.device)
    new = select_by_city(scores, target, labeled, budget, list(CITYSCAPES_TRAIN_CITIES))
    out.parent.mkdir(parents=True, exist_ok=True)
    with atomic_open(out, "w") as f:
        f.write("".join(f"{r}\n" for r in labeled + new))
    by_rel = {s.rel: s for s in target}
    items = []
    for rel in new[:montage_size]:
        image = read_image(by_rel[rel].image)
        x = to_tensor(image, cfg.data).to(loaded.device)
        score, smap = image_uncertainty(loaded.model.teacher, x, cfg.train.al.select_size, cfg.train.al.selector,
                                        cfg.train.al.ripu_radius)
        items.append((rel, image, smap.cpu(), score))
    montage = out.with_name(f"{out.stem}-montage.png")
    selection_montage(montage, items)
    return {"selected": new, "scores": {r: scores[r] for r in new}, "labeled_before": len(labeled),
            "labeled_after": len(labeled) + len(new), "list": str(out), "montage": str(montage),
            "selector": cfg.train.al.selector}
