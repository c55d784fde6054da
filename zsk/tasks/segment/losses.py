"""ZegCLIP's non-mutually-exclusive loss (a sigmoid per class mask) and the transductive pseudo-labels.

L = lambda_f * L_focal + lambda_d * L_dice, lambda_f = 100, lambda_d = 1 (official code). Both terms
are summed over (image, class) and divided by num_masks, the number of (image, present class) pairs
in the batch averaged over GPUs (at least 1).
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from zsk.core import dist

IGNORE_INDEX = 255


def one_hot_masks(labels: Tensor, num_classes: int) -> Tensor:
    """Binary masks (B, C, H, W) of a label map (B, H, W); ignored pixels (255) are 0 for every class."""
    classes = torch.arange(num_classes, device=labels.device).view(1, -1, 1, 1)
    return (labels.unsqueeze(1) == classes).float()


def sigmoid_focal_loss(logits: Tensor, targets: Tensor, alpha: float = 0.25, gamma: float = 2.0,
                       valid: Tensor | None = None) -> Tensor:
    """Binary focal loss per mask (B, C): mean over pixels (or over ``valid`` pixels) of
    -alpha_t (1 - p_t)^gamma log p_t (Lin et al., focal loss Eq. 5)."""
    p = logits.sigmoid()
    ce = F.binary_cross_entropy_with_logits(logits, targets, reduction="none")
    p_t = p * targets + (1 - p) * (1 - targets)
    loss = ce * (1 - p_t) ** gamma
    if alpha >= 0:
        loss = loss * (alpha * targets + (1 - alpha) * (1 - targets))
    loss = loss.flatten(2)
    if valid is None:
        return loss.mean(-1)
    v = valid.flatten(1).unsqueeze(1).to(loss.dtype)  # (B, 1, HW)
    return (loss * v).sum(-1) / v.sum(-1).clamp_min(1.0)


def dice_loss(logits: Tensor, targets: Tensor) -> Tensor:
    """Dice loss per mask (B, C): 1 - (2 sum p t + 1) / (sum p + sum t + 1), p = sigmoid(logits)."""
    p = logits.sigmoid().flatten(2)
    t = targets.flatten(2)
    return 1 - (2 * (p * t).sum(-1) + 1) / (p.sum(-1) + t.sum(-1) + 1)


def num_masks_across_ranks(present: Tensor) -> Tensor:
    """Present (image, class) pairs in the batch, all-reduced and averaged over ranks, at least 1."""
    n = present.sum().float().reshape(1)
    n = dist.all_reduce_sum(n) / max(1, dist.get_dist().world_size)
    return n.clamp_min(1.0)[0]


class NonMutuallyExclusiveLoss(nn.Module):
    """Sigmoid focal + dice over class masks (ZegCLIP's non-mutually-exclusive loss).

    ``focal_ignore='negative'`` (official code) lets 255 pixels count as negatives for every class;
    ``'mask'`` leaves them out of the focal average.
    """

    def __init__(self, focal_weight: float = 100.0, dice_weight: float = 1.0, alpha: float = 0.25, gamma: float = 2.0,
                 focal_ignore: str = "negative", ignore_index: int = IGNORE_INDEX) -> None:
        super().__init__()
        self.focal_weight = focal_weight
        self.dice_weight = dice_weight
        self.alpha = alpha
        self.gamma = gamma
        self.focal_ignore = focal_ignore
        self.ignore_index = ignore_index

    def forward(self, mask_logits: Tensor | Sequence[Tensor], labels: Tensor) -> dict[str, Tensor]:
        """mask_logits (B, C, H, W) or a list of them (deep supervision, summed); labels (B, H, W)."""
        layers = [mask_logits] if isinstance(mask_logits, Tensor) else list(mask_logits)
        num_classes = layers[-1].shape[1]
        targets = one_hot_masks(labels, num_classes)
        present = targets.flatten(2).amax(-1) > 0  # (B, C)
        num_masks = num_masks_across_ranks(present)
        valid = (labels != self.ignore_index) if self.focal_ignore == "mask" else None
        focal = dice = layers[-1].new_zeros((), dtype=torch.float32)
        for logits in layers:
            logits = logits.float()
            focal = focal + sigmoid_focal_loss(logits, targets, self.alpha, self.gamma, valid).sum() / num_masks
            d = dice_loss(logits, targets)
            dice = dice + (d * present).sum() / num_masks
        loss = self.focal_weight * focal + self.dice_weight * dice
        return {"loss": loss, "loss_focal": focal.detach(), "loss_dice": dice.detach(), "num_masks": num_masks.detach()}


@torch.no_grad()
def transductive_pseudo_labels(mask_logits: Tensor, labels: Tensor, seen: Sequence[int] | Tensor,
                               ignore_index: int = IGNORE_INDEX) -> Tensor:
    """Online pseudo-labels of ZegCLIP's transductive stage.

    Every pixel whose label is neither a seen class nor ``ignore_index`` takes the arg-max over the
    unseen classes of the detached sigmoid masks (seen classes set to -1 first); no threshold.
    labels hold global class ids; mask_logits (B, C_all, H, W) are at the label size.
    """
    scores = mask_logits.detach().float().sigmoid()
    seen_t = torch.as_tensor(list(seen) if not isinstance(seen, Tensor) else seen, device=labels.device, dtype=torch.long)
    scores[:, seen_t] = -1.0
    pseudo = scores.argmax(dim=1)
    is_seen = torch.zeros(max(256, scores.shape[1]), dtype=torch.bool, device=labels.device)
    is_seen[seen_t] = True
    needs = (~is_seen[labels.clamp(0, is_seen.numel() - 1)]) & (labels != ignore_index)
    return torch.where(needs, pseudo, labels)
