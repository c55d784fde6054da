"""Sliding-window inference (spec "Inference"): zero-pad to the patch, tile with fixed strides (the last
window clamped to the end), average the overlapping class scores, threshold (or argmax), keep the
largest connected component, remove the padding. Windows are batched on the device."""

from __future__ import annotations

import itertools
import math
from collections.abc import Sequence

import numpy as np
import torch
from scipy import ndimage
from torch import nn

from zsk.tasks.medseg.model import seg_probabilities


def window_starts(length: int, patch: int, stride: int) -> list[int]:
    """Start offsets along one axis: ceil((L − P) / s) + 1 windows, the last clamped to L − P."""
    if length <= patch:
        return [0]
    n = math.ceil((length - patch) / stride) + 1
    return [min(stride * i, length - patch) for i in range(n)]


def pad_to_patch(image: torch.Tensor, patch: Sequence[int]) -> tuple[torch.Tensor, list[tuple[int, int]]]:
    """Zero-pad a (X, Y, Z) volume symmetrically so each side is at least the patch size."""
    pads = []
    for size, p in zip(image.shape, patch, strict=True):
        total = max(p - size, 0)
        pads.append((total // 2, total - total // 2))
    flat = [v for pair in reversed(pads) for v in pair]  # F.pad wants the last axis first
    return (torch.nn.functional.pad(image, flat) if any(flat) else image), pads


@torch.no_grad()
def sliding_window_scores(model: nn.Module, image: torch.Tensor, patch: Sequence[int], stride: Sequence[int],
                          num_classes: int, window_batch: int = 4) -> torch.Tensor:
    """Averaged class scores of a (X, Y, Z) volume: (1, X, Y, Z) sigmoid scores for a binary model,
    (C, X, Y, Z) softmax scores otherwise. ``window_batch`` windows go through the model at once."""
    device = next(model.parameters()).device
    image = image.to(device=device, dtype=torch.float32)
    padded, pads = pad_to_patch(image, patch)
    shape = padded.shape
    starts = list(itertools.product(*[window_starts(s, p, st) for s, p, st in zip(shape, patch, stride, strict=True)]))
    channels = 1 if num_classes == 2 else num_classes
    scores = torch.zeros((channels, *shape), device=device)
    counts = torch.zeros(shape, device=device)
    px, py, pz = patch
    for i in range(0, len(starts), max(1, window_batch)):
        chunk = starts[i:i + window_batch]
        windows = torch.stack([padded[x:x + px, y:y + py, z:z + pz] for x, y, z in chunk])[:, None]
        _, seg_logits = model(windows)
        probs = seg_probabilities(seg_logits.float(), num_classes)
        for (x, y, z), p in zip(chunk, probs, strict=True):
            scores[:, x:x + px, y:y + py, z:z + pz] += p
            counts[x:x + px, y:y + py, z:z + pz] += 1
    scores /= counts
    crop = tuple(slice(lo, s - hi) for (lo, hi), s in zip(pads, shape, strict=True))
    return scores[(slice(None), *crop)]


def largest_connected_component(mask: np.ndarray) -> np.ndarray:
    """Keep the largest 26-connected foreground component of a binary mask (empty stays empty)."""
    labels, n = ndimage.label(mask, structure=np.ones((3, 3, 3), dtype=bool))
    if n <= 1:
        return mask.astype(bool)
    sizes = np.bincount(labels.ravel())
    sizes[0] = 0
    return labels == int(sizes.argmax())


def scores_to_labels(scores: torch.Tensor, num_classes: int, threshold: float = 0.5,
                     largest_component: bool = True) -> np.ndarray:
    """Class map from averaged scores: threshold (binary) or argmax; optionally the largest component
    of each foreground class."""
    if num_classes == 2:
        pred = (scores[0] > threshold).cpu().numpy().astype(np.uint8)
    else:
        pred = scores.argmax(0).cpu().numpy().astype(np.uint8)
    if largest_component:
        out = np.zeros_like(pred)
        for c in range(1, num_classes):
            out[largest_connected_component(pred == c)] = c
        pred = out
    return pred
