"""Seen-pixel share of ZegCLIP training crops, cat_max_ratio checked before or after the label remap.

    python tools/parity/segment_crops.py [--images 400] [--seed 0]

A synthetic VOC-like label set (375 x 500, reduce_zero_label already applied: background 255, 1 to 3
objects of the 20 classes, unseen = the last five), run through zsk's own training transform steps
(``random_resize`` then ``random_crop`` with cat_max_ratio 0.75, crop 512, img_scale (2048, 512), ratio
0.5 to 2.0) in the two orders: remap first (zsk before issue 11: the check sees seen ids only, unseen
pixels are already 255) and crop on global ids, remap after (the official order, zsk now). The same
generator seed gives both orders the same resize ratios and first offsets. Needs no official code.
"""

from __future__ import annotations

import argparse

import numpy as np
import torch

from zsk.data.seg_transforms import random_crop, random_resize
from zsk.tasks.segment.splits import VOC_UNSEEN, inductive_label_lut

NUM_CLASSES = 20
SEEN = [c for c in range(NUM_CLASSES) if c not in VOC_UNSEEN]


def voc_like_labels(n: int, seed: int) -> list[np.ndarray]:
    """n label maps 375 x 500: background 255, 1 to 3 rectangles/ellipses of random classes."""
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[:375, :500]
    out = []
    for _ in range(n):
        lab = np.full((375, 500), 255, np.uint8)
        for _ in range(int(rng.integers(1, 4))):
            c = int(rng.integers(0, NUM_CLASSES))
            cy, cx = rng.uniform(0, 375), rng.uniform(0, 500)
            ry, rx = rng.uniform(40, 190), rng.uniform(50, 250)
            if rng.random() < 0.5:
                m = ((yy - cy) / ry) ** 2 + ((xx - cx) / rx) ** 2 <= 1
            else:
                m = (np.abs(yy - cy) <= ry) & (np.abs(xx - cx) <= rx)
            lab[m] = c
        out.append(lab)
    return out


def seen_share(labels: list[np.ndarray], remap_first: bool, seed: int, crop: int = 512,
               cat_max_ratio: float = 0.75) -> dict[str, float]:
    """Mean over crops of seen pixels / crop pixels and seen pixels / labelled (global, non-255) pixels."""
    lut = torch.from_numpy(inductive_label_lut(NUM_CLASSES, SEEN).astype(np.int64))
    g = torch.Generator().manual_seed(seed)
    of_all, of_labelled = [], []
    for lab in labels:
        glob = torch.from_numpy(lab.astype(np.int64))
        # zsk's transform order: resize (nearest for labels), then crop; the global map rides along as the
        # "image" so both orders can count the crop's labelled pixels
        img, glob_r = random_resize(glob[None].float(), glob, (2048, 512), (0.5, 2.0), g)
        checked = lut[glob_r] if remap_first else glob_r
        img_c, _ = random_crop(glob_r[None], checked, (crop, crop), cat_max_ratio, 255, g)
        gc = img_c[0]
        seen = (lut[gc] != 255).sum().item()
        of_all.append(seen / gc.numel())
        labelled = (gc != 255).sum().item()
        if labelled:
            of_labelled.append(seen / labelled)
    return {"seen / crop pixels": float(np.mean(of_all)), "seen / labelled pixels": float(np.mean(of_labelled))}


def measure(images: int = 400, seed: int = 0) -> dict[str, dict[str, float]]:
    labels = voc_like_labels(images, seed)
    return {"remap then crop (zsk before)": seen_share(labels, True, seed + 1),
            "crop then remap (official, zsk now)": seen_share(labels, False, seed + 1)}


class _Scripted:
    """Proxy of a module whose random integer draw replays a shared list of uniforms in [0, 1):
    ``randint(lo, hi)`` -> lo + floor(u * (hi - lo)); everything else is the real module."""

    def __init__(self, real, uniforms: list[float], torch_style: bool) -> None:
        self._real, self._u, self._torch = real, uniforms, torch_style
        self.random = self

    def randint(self, lo, hi, *args, **kwargs):
        v = lo + int(self._u.pop(0) * (hi - lo))
        return torch.tensor(v) if self._torch else v

    def __getattr__(self, name):
        return getattr(self._real, name)


def compare_with_mmseg(random_crop_cls: type, images: int = 200, seed: int = 0, crop: int = 512,
                       cat_max_ratio: float = 0.75) -> tuple[float, int, int]:
    """zsk's ``random_crop`` against mmseg 0.24.1's ``RandomCrop`` on the same offsets (both draws replay
    one list of uniforms) on the VOC-like labels after zsk's resize: (max abs diff of the cropped labels
    and images, crops compared, crops where the check redrew at least once)."""
    import numpy

    from zsk.data import seg_transforms

    labels = voc_like_labels(images, seed)
    g = torch.Generator().manual_seed(seed + 2)
    rng = np.random.default_rng(seed + 3)
    worst, redrawn = 0.0, 0
    mm = random_crop_cls((crop, crop), cat_max_ratio=cat_max_ratio, ignore_index=255)
    mm_globals = type(mm).get_crop_bbox.__globals__
    real_np, real_torch = mm_globals["np"], seg_transforms.torch
    try:
        for lab in labels:
            glob = torch.from_numpy(lab.astype(np.int64))
            img, glob_r = random_resize(glob[None].float() * 3 + 1, glob, (2048, 512), (0.5, 2.0), g)
            u = list(rng.random(22))
            seg_transforms.torch = _Scripted(real_torch, list(u), True)
            img_z, lab_z = random_crop(img, glob_r, (crop, crop), cat_max_ratio, 255, None)
            left = len(seg_transforms.torch._u)
            seg_transforms.torch = real_torch
            mm_globals["np"] = _Scripted(real_np, list(u), False)
            out = mm({"img": img.permute(1, 2, 0).numpy(), "gt_semantic_seg": glob_r.numpy().astype(np.uint8),
                      "seg_fields": ["gt_semantic_seg"]})
            mm_globals["np"] = real_np
            redrawn += left < 20
            if out["gt_semantic_seg"].shape != tuple(lab_z.shape):
                return float("inf"), len(labels), redrawn
            worst = max(worst, float(numpy.abs(out["gt_semantic_seg"].astype(np.int64) - lab_z.numpy()).max()),
                        float(numpy.abs(out["img"] - img_z.permute(1, 2, 0).numpy()).max()))
    finally:
        seg_transforms.torch, mm_globals["np"] = real_torch, real_np
    return worst, len(labels), redrawn


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--images", type=int, default=400)
    p.add_argument("--seed", type=int, default=0)
    a = p.parse_args()
    for order, res in measure(a.images, a.seed).items():
        print(f"{order:38s} " + "  ".join(f"{k}: {v:.3f}" for k, v in res.items()))


if __name__ == "__main__":
    main()
