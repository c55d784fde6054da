"""Losses of the refer task: LGFormer's mask loss (ZhichaoWei/LGFormer ``train.py`` ``criterion``: BCE with
logits, pos_weight 1.1, summed over every query state, at the input size) and the cross-modal instance
contrastive loss that the AlignFormer abstract names. Its formula is not published; zsk reconstructs it as
a pixel-level InfoNCE from the center embedding (closest published analogue: CRIS's text-to-pixel loss)."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor

from zsk.tasks.refer.config import ContrastiveConfig, LossConfig


def mask_loss(logits: list[Tensor], target: Tensor, pos_weight: float = 1.1, all_outputs: bool = True) -> Tensor:
    """Σ over query states of mean BCE-with-logits between the upsampled (bilinear) logits and the
    (B, H, W) binary target."""
    target = target[:, None].float()
    pw = torch.tensor([pos_weight], device=target.device)
    total = target.new_zeros(())
    for lg in logits if all_outputs else logits[-1:]:
        lg = F.interpolate(lg.float(), size=target.shape[-2:], mode="bilinear", align_corners=False)
        total = total + F.binary_cross_entropy_with_logits(lg, target, pos_weight=pw)
    return total


def unambiguous_masks(target: Tensor, size: tuple[int, int], boundary_width: int) -> tuple[Tensor, Tensor]:
    """Foreground and background at the feature size (nearest downsampling) without the band between the
    dilation and the erosion by a (2w+1)² square; an image whose foreground vanishes keeps all of it."""
    m = F.interpolate(target[:, None].float(), size=size, mode="nearest")
    if boundary_width > 0:
        k = 2 * boundary_width + 1
        dil = F.max_pool2d(m, k, stride=1, padding=boundary_width)
        ero = -F.max_pool2d(-m, k, stride=1, padding=boundary_width)
        band = (dil - ero) > 0
    else:
        band = torch.zeros_like(m, dtype=torch.bool)
    fg, bg = (m > 0.5) & ~band, (m < 0.5) & ~band
    empty = fg.flatten(1).sum(1) == 0
    fg[empty] = m[empty] > 0.5
    return fg.flatten(1), bg.flatten(1)


def instance_contrastive_loss(anchors: Tensor, pixel_embeds: Tensor, target: Tensor, cfg: ContrastiveConfig) -> Tensor:
    """Cross-modal instance contrastive loss (zsk's reconstruction). ``anchors`` (B, C): each expression's
    final query projected; ``pixel_embeds`` (B, C, h, w) the mask features; ``target`` (B, H, W).

    ``positive="pixels"``: L_i = −mean_{p∈P_i} log e^{s_p/τ} / (e^{s_p/τ} + Σ_{n∈N_i} e^{s_n/τ}), s = cos(c_i, e),
    P_i the unambiguous foreground of image i, N_i its unambiguous background plus (``negatives="batch"``) the
    other expressions' foregrounds. ``positive="instance_mean"``: InfoNCE of c_i against the mean-pooled
    foreground embedding of every expression in the batch (its own is the positive). Mean over expressions
    with a foreground."""
    b, c, h, w = pixel_embeds.shape
    a = F.normalize(anchors.float(), dim=-1)
    e = F.normalize(pixel_embeds.float(), dim=1).flatten(2)  # (B, C, hw)
    fg, bg = unambiguous_masks(target, (h, w), cfg.boundary_width)
    valid = fg.any(1)
    if not valid.any():
        return pixel_embeds.new_zeros(()).float()
    if cfg.positive == "instance_mean":
        inst = F.normalize((e * fg[:, None]).sum(-1) / fg.sum(-1, keepdim=True).clamp(min=1), dim=-1)  # (B, C)
        logits = a @ inst.t() / cfg.tau
        logits = logits.masked_fill(~valid[None], float("-inf"))
        return F.cross_entropy(logits[valid], torch.arange(b, device=a.device)[valid])
    sims = torch.einsum("bc,kcp->bkp", a, e).reshape(b, b * h * w) / cfg.tau  # anchor i vs every pixel
    eye = torch.eye(b, dtype=torch.bool, device=a.device)
    own_bg = (eye[:, :, None] & bg[None]).reshape(b, -1)
    neg = own_bg | ((~eye[:, :, None]) & fg[None]).reshape(b, -1) if cfg.negatives == "batch" else own_bg
    pos = (eye[:, :, None] & fg[None]).reshape(b, -1)
    lse_neg = sims.masked_fill(~neg, float("-inf")).logsumexp(-1, keepdim=True)  # (B, 1)
    per_pixel = torch.logaddexp(sims, lse_neg.expand_as(sims)) - sims
    per_expr = (per_pixel * pos).sum(-1) / pos.sum(-1).clamp(min=1)
    return per_expr[valid].mean()


def refer_loss(out: dict, target: Tensor, cfg: LossConfig, anchor_proj: torch.nn.Module | None) -> dict[str, Tensor]:
    """Total = mask loss + λ_con · contrastive loss; returns every term with ``loss`` the total."""
    bce = mask_loss(out["logits"], target, cfg.pos_weight, cfg.all_outputs)
    terms = {"bce": bce}
    total = bce
    if cfg.contrastive.weight > 0:
        if anchor_proj is None:
            raise RuntimeError("the model has no contrast_proj: build it with the recipe's contrastive weight")
        anchors = anchor_proj(out["queries"][-1][:, 0].float())
        con = instance_contrastive_loss(anchors, out["mask_features"], target, cfg.contrastive)
        terms["contrastive"] = con
        total = total + cfg.contrastive.weight * con
    terms["loss"] = total
    return terms
