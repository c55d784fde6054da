"""Adaptive copy-paste (ACP) on labelled images, adaptive CutMix (ACM) on unlabelled ones and the class
confidence that drives both: AEL (Hu et al., NeurIPS 2021) as used by STAL (licongguan/ILM-ASSL
core/utils/utils.py: dynamic_copy_paste, cal_category_confidence, sample_from_bank, generate_cutmix_mask,
update_cutmix_bank; train.py for the query-class draw)."""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import torch
import torch.nn.functional as F
from scipy import ndimage
from torch import Tensor


def softmax_np(x: np.ndarray) -> np.ndarray:
    e = np.exp(x - x.max())
    return e / e.sum()


def query_classes(class_conf: Tensor, number: int, ignore: Sequence[int], rng: np.random.Generator) -> list[int]:
    """ACP's query classes: ``number`` draws (deduplicated) from the classes not in ``ignore`` with
    probability softmax(sqrt(1 - conf_c))."""
    targets = [c for c in range(len(class_conf)) if c not in set(ignore)]
    if not targets:
        return []
    p = softmax_np(np.sqrt(np.clip((1 - class_conf.detach().cpu().double().numpy())[targets], 0, None)))
    return sorted({int(rng.choice(targets, p=p)) for _ in range(number)})


def copy_paste(images: Tensor, labels: Tensor, paste_images: Tensor, paste_labels: Tensor,
               classes: Sequence[int]) -> tuple[Tensor, Tensor]:
    """Paste the pixels of ``classes`` from each partner onto its image and label; a partner whose label
    sums to 0 (no partner drawn) leaves the image unchanged (``dynamic_copy_paste``)."""
    alpha = torch.zeros_like(paste_labels, dtype=torch.bool)
    for c in classes:
        alpha |= paste_labels == c
    has_partner = paste_labels.flatten(1).sum(1) > 0
    alpha &= has_partner[:, None, None]
    out_img = torch.where(alpha[:, None], paste_images, images)
    out_lab = torch.where(alpha, paste_labels, labels)
    return out_img, out_lab


@torch.no_grad()
def category_confidence(student_logits: Tensor, labels: Tensor, num_classes: int) -> Tensor:
    """conf_c = mean student probability of class c on the labelled pixels of class c (0 when absent)."""
    prob = F.softmax(student_logits.float(), 1)
    out = torch.zeros(num_classes, dtype=torch.float32, device=prob.device)
    for c in range(num_classes):
        m = labels == c
        if m.any():
            out[c] = (prob[:, c] * m).sum() / (m.sum() + 1e-12)
    return out


def sample_from_bank(bank: Tensor, class_conf: Tensor, rng: np.random.Generator) -> tuple[int, int]:
    """ACM's partner: a class with probability softmax(1 - conf), then an image of the cutmix bank
    holding it (any image when none does). Returns (image index, class)."""
    p = softmax_np(1 - class_conf.detach().cpu().double().numpy())
    c = int(rng.choice(len(p), p=p))
    members = torch.nonzero(bank[c]).flatten().tolist()
    idx = int(members[rng.integers(len(members))]) if members else int(rng.integers(bank.shape[1]))
    return idx, c


def random_rectangle(h: int, w: int, rng: np.random.Generator, prop: float = 0.5) -> tuple[int, int, int, int]:
    """A box of area ``prop`` of the image at a random aspect and place (``init_cutmix``)."""
    y_prop = float(np.exp(rng.uniform() * np.log(prop)))
    x_prop = prop / y_prop
    sh, sw = round(y_prop * h), round(x_prop * w)
    y0 = round((h - sh) * rng.uniform())
    x0 = round((w - sw) * rng.uniform())
    return y0, x0, y0 + sh, x0 + sw


def cutmix_box(pred: np.ndarray, cat: int, area_thresh: float, rng: np.random.Generator) -> tuple[int, int, int, int]:
    """The bounding box of a random 8-connected region of class ``cat`` larger than area_thresh x H^2,
    or a random box when there is none (``generate_cutmix`` with no_pad and no_slim, the STAL config)."""
    h, w = pred.shape
    mask = pred == cat
    if mask.any():
        comp, n = ndimage.label(mask, structure=np.ones((3, 3), dtype=bool))
        values = list(range(1, n + 1))
        rng.shuffle(values)
        sizes = np.bincount(comp.ravel(), minlength=n + 1)
        boxes = ndimage.find_objects(comp)
        for v in values:
            if sizes[v] > area_thresh * h * h:
                sy, sx = boxes[v - 1]
                return sy.start, sx.start, sy.stop, sx.stop
    return random_rectangle(h, w, rng)


def cutmix_mask(pred: Tensor, cat: int, area_thresh: float, rng: np.random.Generator) -> Tensor:
    """(H, W) float mask, 1 inside the box cut from the partner (``generate_cutmix_mask``)."""
    y0, x0, y1, x1 = cutmix_box(pred.cpu().numpy(), cat, area_thresh, rng)
    m = torch.zeros(pred.shape, dtype=torch.float32, device=pred.device)
    m[int(y0):int(y1), int(x0):int(x1)] = 1
    return m


@torch.no_grad()
def update_bank(bank: Tensor, teacher_logits: Tensor, ids: Sequence[int], area_thresh: float) -> None:
    """Bank[c, i] = 1 when the teacher predicts class c on more than area_thresh x W^2 pixels of image i
    (``update_cutmix_bank``)."""
    area = teacher_logits.shape[-1] ** 2
    for logits, i in zip(teacher_logits, ids, strict=True):
        counts = torch.bincount(logits.argmax(0).flatten(), minlength=bank.shape[0]).to(bank.device)
        bank[:, i] = ((counts > 0) & (counts >= area_thresh * area)).to(bank.dtype)
