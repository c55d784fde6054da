"""DTC's losses: V-Net Dice on labelled voxels, level-set regression (MSE to the signed distance map),
and the dual-task consistency between the level-set head (through the transform layer) and the
segmentation head on all voxels, weighted by a sigmoid ramp-up (spec "Losses")."""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
import torch.nn.functional as F

from zsk.tasks.medseg.model import foreground_probabilities, transform_layer


def dice_loss(probs: torch.Tensor, target: torch.Tensor, eps: float = 1e-5) -> torch.Tensor:
    """V-Net Dice loss 1 − (2Σpg + ε)/(Σp² + Σg² + ε), summed over batch and voxels, averaged over
    channels. ``probs`` and ``target`` are (B, C, ...) with C foreground channels."""
    dims = [0] + list(range(2, probs.ndim))
    target = target.to(probs.dtype)
    inter = (probs * target).sum(dims)
    denom = (probs * probs).sum(dims) + (target * target).sum(dims)
    return (1.0 - (2.0 * inter + eps) / (denom + eps)).mean()


def level_set_loss(level_set: torch.Tensor, sdf_target: torch.Tensor) -> torch.Tensor:
    """L_lsf: mean squared error between the tanh level-set output and the normalised SDF target."""
    return F.mse_loss(level_set, sdf_target.to(level_set.dtype))


def dual_task_consistency(level_set: torch.Tensor, fg_probs: torch.Tensor, k: float = 1500.0) -> torch.Tensor:
    """L_dtc: mean of (sigmoid(−k·φ) − p)² over all samples and voxels; gradients reach both heads."""
    return ((transform_layer(level_set, k) - fg_probs) ** 2).mean()


def sigmoid_rampup(current: float, length: float) -> float:
    """exp(−5 (1 − t)²) with t = clip(current / length, 0, 1); 1.0 when ``length`` is 0 (Laine & Aila ramp)."""
    if length <= 0:
        return 1.0
    t = min(max(current, 0.0), length) / length
    return math.exp(-5.0 * (1.0 - t) ** 2)


@dataclass
class LossConfig:
    """Weights of the DTC objective L = L_dice + β·L_lsf + λ(t)·L_dtc (+ ce_weight·CE)."""

    beta: float = 0.3  # β of L_lsf (train_la_dtc.py; 1.0 in an older commit) [spec "Losses", open points]
    k: float = 1500.0  # transform-layer steepness [spec "Transform layer"]
    dtc_weight: float = 1.0  # λ_max of the ramp-up (an older script used a constant 0.1)
    rampup_length: float = 40.0  # ramp-up length in ramp "epochs"
    rampup_interval: int = 150  # iterations per ramp "epoch": t = floor(iteration / 150)
    ce_weight: float = 0.0  # BCE/CE is always logged; the official loss does not add it (0.0)
    dice_eps: float = 1e-5

    def __post_init__(self) -> None:
        from zsk.core.errors import ZskError

        for name, lo, strict in (("beta", 0.0, False), ("k", 0.0, True), ("dtc_weight", 0.0, False),
                                 ("rampup_length", 0.0, False), ("ce_weight", 0.0, False), ("dice_eps", 0.0, True)):
            value = getattr(self, name)
            if not math.isfinite(value) or value < lo or (strict and value == lo):
                raise ZskError(f"train.loss.{name} must be {'>' if strict else '>='} {lo:g}, got {value}")
        if self.rampup_interval < 1:
            raise ZskError(f"train.loss.rampup_interval (iterations per ramp epoch) must be >= 1, "
                           f"got {self.rampup_interval}")


def consistency_weight(iteration: int, cfg: LossConfig) -> float:
    """λ(t) = dtc_weight · sigmoid_rampup(⌊iteration / rampup_interval⌋, rampup_length)."""
    return cfg.dtc_weight * sigmoid_rampup(float(iteration // max(cfg.rampup_interval, 1)), cfg.rampup_length)


def dtc_loss(level_set: torch.Tensor, seg_logits: torch.Tensor, label: torch.Tensor, sdf: torch.Tensor,
             labeled: torch.Tensor, iteration: int, num_classes: int, cfg: LossConfig) -> dict[str, torch.Tensor]:
    """The full DTC objective on a two-stream batch.

    ``label`` (B, X, Y, Z) class indices and ``sdf`` (B, C−1, X, Y, Z) level-set targets are used only
    where ``labeled`` (B,) is true; the consistency term uses every sample. Returns the total as
    ``loss`` plus every term for logging.
    """
    level_set, seg_logits = level_set.float(), seg_logits.float()
    fg_probs = foreground_probabilities(seg_logits, num_classes)
    lab = labeled.bool()
    n_lab = int(lab.sum())
    zero = seg_logits.sum() * 0.0
    if n_lab > 0:
        y = label[lab].long()
        onehot = torch.stack([(y == c) for c in range(1, num_classes)], dim=1)
        l_dice = dice_loss(fg_probs[lab], onehot, cfg.dice_eps)
        l_lsf = level_set_loss(level_set[lab], sdf[lab])
        if num_classes == 2:
            l_ce = F.binary_cross_entropy_with_logits(seg_logits[lab][:, 0], y.to(seg_logits.dtype))
        else:
            l_ce = F.cross_entropy(seg_logits[lab], y)
    else:
        l_dice = l_lsf = l_ce = zero
    l_dtc = dual_task_consistency(level_set, fg_probs, cfg.k)
    lam = consistency_weight(iteration, cfg)
    total = l_dice + cfg.beta * l_lsf + lam * l_dtc + cfg.ce_weight * l_ce
    return {"loss": total, "loss_dice": l_dice.detach(), "loss_lsf": l_lsf.detach(),
            "loss_dtc": l_dtc.detach(), "loss_ce": l_ce.detach(),
            "dtc_weight": torch.tensor(lam)}
