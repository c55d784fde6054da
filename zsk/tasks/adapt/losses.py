"""STAL's loss terms (licongguan/ILM-ASSL core/utils/loss_helper.py, from U2PL and AEL):
L = L_sup + L_cons + 0.1 L_contra, with OHEM cross-entropy for L_sup, the confidence-weighted
class-sampled consistency for L_cons and the U2PL memory-bank contrastive loss for L_contra."""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import Tensor

from zsk.tasks.adapt.config import ConsConfig, ContraConfig

IGNORE = 255


def ohem_cross_entropy(logits: Tensor, target: Tensor, thresh: float = 0.7, min_kept: int = 100000,
                       ignore_index: int = IGNORE) -> Tensor:
    """OHEM CE (``OhemCrossEntropy2dTensor``): keep the valid pixels whose true-class probability is
    <= max(thresh, the min_kept-th smallest such probability); with fewer than min_kept valid pixels,
    every valid pixel is kept."""
    b, c, h, w = logits.shape
    target = target.reshape(-1).clone()
    valid = target.ne(ignore_index)
    num_valid = int(valid.sum())
    if min_kept <= num_valid and num_valid > 0:
        prob = F.softmax(logits.detach(), 1).transpose(0, 1).reshape(c, -1)
        prob = prob.masked_fill(~valid, 1.0)
        true_prob = prob[target * valid.long(), torch.arange(target.numel(), device=target.device)]
        threshold = torch.tensor(thresh, device=logits.device, dtype=true_prob.dtype)
        if min_kept > 0:
            kth = torch.sort(true_prob).values[min(true_prob.numel(), min_kept) - 1]
            threshold = torch.maximum(threshold, kth)
        valid = valid & true_prob.le(threshold)
    target = target.masked_fill(~valid, ignore_index).view(b, h, w)
    return F.cross_entropy(logits, target, ignore_index=ignore_index)


def supervised_loss(pred: Tensor, aux: Tensor, target: Tensor, aux_weight: float, thresh: float,
                    min_kept: int) -> Tensor:
    """L_sup = OHEM(main) + aux_weight x OHEM(aux), both upsampled to the label size (``CriterionOhem``)."""
    return (ohem_cross_entropy(pred, target, thresh, min_kept)
            + aux_weight * ohem_cross_entropy(aux, target, thresh, min_kept))


def class_sampling_mask(student_pred: Tensor, class_conf: Tensor, generator: torch.Generator | None = None) -> Tensor:
    """Keep a pixel the student predicts as class c with probability (1 - conf_c) / max_c(1 - conf_c)
    (AEL ``Criterion_cons`` with sample=True; draws uniform noise per class as the official loop does)."""
    rate = 1 - class_conf
    rate = rate / (rate.max() + 1e-12)
    keep = torch.zeros(student_pred.shape, dtype=torch.float32, device=student_pred.device)
    for c in range(len(rate)):
        noise = torch.rand(student_pred.shape[-2:], generator=generator, device="cpu").to(student_pred.device)
        keep += ((noise * (student_pred == c)) > (1 - rate[c])).float()
    return keep


def consistency_loss(student_logits: Tensor, teacher_conf: Tensor, pseudo: Tensor, cfg: ConsConfig,
                     class_conf: Tensor | None = None, generator: torch.Generator | None = None) -> Tensor:
    """L_cons = sum_pixels w * CE(student, pseudo) with w = conf^gamma x class-sampling mask, normalised
    to sum to 1 (``Criterion_cons``); pseudo-label 255 pixels contribute nothing."""
    ce = F.cross_entropy(student_logits, pseudo, ignore_index=IGNORE, reduction="none")
    w = teacher_conf.pow(cfg.gamma)
    if cfg.sample and class_conf is not None:
        w = w * class_sampling_mask(student_logits.detach().argmax(1), class_conf, generator)
    w = w / (w.sum() + 1e-12)
    return (w * ce).sum()


def entropy(prob: Tensor, eps: float = 1e-10) -> Tensor:
    """Per-pixel entropy of class probabilities (B, C, H, W) -> (B, H, W)."""
    return -(prob * torch.log(prob + eps)).sum(1)


def percentile(x: Tensor, q: float) -> float:
    """NumPy's linear-interpolation percentile (what the official code calls) of all values of x."""
    flat = x.detach().flatten().double().cpu()
    return float(torch.quantile(flat, q / 100.0)) if flat.numel() <= 16_000_000 else float(
        torch.kthvalue(flat, max(1, math.ceil(q / 100.0 * flat.numel()))).values)


def entropy_mask(ent: Tensor, epoch: int, epochs: int, cfg: ConsConfig) -> Tensor:
    """Pixels of the unlabelled pseudo-label set to ignore, q = q0 (1 - epoch / epochs):
    ``drop_uncertain`` ignores entropy above the (100 - q)-th percentile (U2PL's convention, the
    method's intent); ``official_code`` ignores entropy below the q-th percentile (STAL train.py)."""
    q = min(max(cfg.low_entropy_threshold * (1 - epoch / max(epochs, 1)), 0.0), 100.0)
    if cfg.entropy_mask == "none":
        return torch.zeros_like(ent, dtype=torch.bool)
    if cfg.entropy_mask == "official_code":
        return ent < percentile(ent, q)
    return ent > percentile(ent, 100 - q)


def label_onehot(labels: Tensor, num_classes: int) -> Tensor:
    """(B, H, W) ids with 255 -> (B, C, H, W) one-hot with all-zero ignored pixels."""
    valid = labels != IGNORE
    out = F.one_hot(labels.clamp(max=num_classes - 1) * valid, num_classes).permute(0, 3, 1, 2).float()
    return out * valid[:, None]


class MemoryBank:
    """Per-class FIFO queues of negative keys (U2PL ``dequeue_and_enqueue``): new keys are appended and
    only the newest ``size`` kept."""

    def __init__(self, num_classes: int, size: int = 30000, size_first: int = 50000) -> None:
        self.queues: list[Tensor] = [torch.zeros(0, 0) for _ in range(num_classes)]
        self.sizes = [size_first] + [size] * (num_classes - 1)

    @torch.no_grad()
    def push(self, c: int, keys: Tensor) -> None:
        from zsk.core import dist

        keys = keys.detach().cpu()
        if dist.get_dist().world_size > 1:
            keys = torch.cat([k for k in dist.all_gather_object(keys)], 0)
        q = self.queues[c]
        q = keys if q.numel() == 0 else torch.cat([q, keys], 0)
        self.queues[c] = q[-self.sizes[c]:]


def contrastive_loss(rep: Tensor, label_l: Tensor, label_u: Tensor, prob_l: Tensor, prob_u: Tensor,
                     low_mask: Tensor, high_mask: Tensor, cfg: ContraConfig, bank: MemoryBank, rep_teacher: Tensor,
                     generator: torch.Generator | None = None) -> Tensor:
    """The U2PL contrastive loss (``compute_contra_memobank_loss``): per class, anchors are the student
    embeddings of reliable pixels (prob > delta_p), the positive is the teacher prototype of the class,
    negatives come from the class's memory bank of unreliable teacher embeddings whose class ranks in
    [low_rank, high_rank) (labelled pixels: < low_rank, not the true class); InfoNCE at temperature t."""
    num_classes = label_l.shape[1]
    low_valid = torch.cat([label_l, label_u]) * low_mask
    if cfg.negatives == "paper":  # the pixel mask alone: the class conditions below pick the negatives
        high_valid = high_mask.expand(-1, num_classes, -1, -1)
    else:
        high_valid = torch.cat([label_l, label_u]) * high_mask
    rep = rep.permute(0, 2, 3, 1)
    rep_teacher = rep_teacher.permute(0, 2, 3, 1)
    idx_l = torch.sort(prob_l, 1, True)[1].permute(0, 2, 3, 1)
    idx_u = torch.sort(prob_u, 1, True)[1].permute(0, 2, 3, 1)
    prob = torch.cat([prob_l, prob_u])
    anchors, protos, valid_classes = [], [], []
    for c in range(num_classes):
        low_c, high_c = low_valid[:, c].bool(), high_valid[:, c].bool()
        prob_c = prob[:, c]
        anchor_mask = (prob_c > cfg.current_class_threshold) & low_c
        neg_mask = (prob_c < cfg.current_class_negative_threshold) & high_c
        anchors.append(rep[anchor_mask])
        protos.append(rep_teacher[low_c].detach().mean(0, keepdim=True))
        class_u = idx_u[..., cfg.low_rank:cfg.high_rank].eq(c).any(-1)
        class_l = idx_l[..., :cfg.low_rank].eq(c).any(-1) & (label_l[:, c] == 0)
        bank.push(c, rep_teacher[neg_mask & torch.cat([class_l, class_u])].detach())
        if low_c.any():
            valid_classes.append(c)
    if len(valid_classes) <= 1:
        return rep.sum() * 0.0
    loss = rep.sum() * 0.0
    for i, c in enumerate(valid_classes):
        # official_code (U2PL and STAL): anchors and prototype of the i-th class id, negatives of the i-th
        # valid class, which differ once a class is missing from the batch
        a = i if cfg.indexing == "official_code" else c
        feats, negatives, proto = anchors[a], bank.queues[c], protos[a]
        if len(feats) == 0 or negatives.numel() == 0:
            continue
        q, n = cfg.num_queries, cfg.num_negatives
        pick = torch.randint(len(feats), (q,), generator=generator).to(rep.device)
        anchor = feats[pick]
        with torch.no_grad():
            neg = negatives[torch.randint(len(negatives), (q * n,), generator=generator)].to(rep.device)
            neg = neg.reshape(q, n, -1)
            pos = proto.unsqueeze(0).expand(q, 1, -1)
            keys = torch.cat([pos, neg.to(pos.dtype)], 1)
        logits = torch.cosine_similarity(anchor.unsqueeze(1), keys, dim=2)
        loss = loss + F.cross_entropy(logits / cfg.temperature, torch.zeros(q, dtype=torch.long, device=rep.device))
    return loss / len(valid_classes)
