"""The incremental SegFormer of SATS: a MiT encoder that returns the last block's attention map of each
stage, the simplified MLP decoder, and one 1x1 classifier per incremental step whose outputs are
concatenated (MiB's ``IncrementalSegmentationModule``).

Qiu et al., "SATS: Self-Attention Transfer for Continual Semantic Segmentation", Pattern Recognition 2023
(QIU023/SATS_Continual_Semantic_Seg ``segmentation_module.py``, ``modules/segformer.py``).
"""

from __future__ import annotations

import copy
import math
from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from zsk.models.segformer import MiTConfig, MixVisionTransformer, SegFormerHead


class IncrementalSegFormer(nn.Module):
    """SegFormer with per-step classifiers. All steps' classifiers are built up front; ``active_step``
    says how many take part (steps 0..active_step), so one module holds every step of a run.

    ``forward(x, return_attn=True)`` also returns the four attention maps [B, h, N, M] of SATS.
    """

    def __init__(self, mit: MiTConfig, classes_per_step: Sequence[int], drop_path_rate: float = 0.1,
                 decoder_dim: int = 256) -> None:
        super().__init__()
        self.body = MixVisionTransformer(mit, drop_path_rate=drop_path_rate)
        self.head = SegFormerHead(mit.embed_dims, decoder_dim)
        self.cls = nn.ModuleList([nn.Conv2d(decoder_dim, c, 1) for c in classes_per_step])
        self.classes_per_step = list(classes_per_step)
        self.active_step = len(classes_per_step) - 1

    def num_classes(self, step: int | None = None) -> int:
        """Outputs of the model at ``step`` (default: the active step): background + every class seen."""
        s = self.active_step if step is None else step
        return sum(self.classes_per_step[: s + 1])

    def forward(self, x: Tensor, return_attn: bool = False,
                return_features: bool = False) -> Tensor | tuple[Tensor, list[Tensor]]:
        """Logits at the input size; with ``return_attn`` also the four attention maps (or, with
        ``return_features``, the four encoder feature maps)."""
        feats, attns = self.body(x)
        dec = self.head(feats)
        logits = torch.cat([c(dec) for c in self.cls[: self.active_step + 1]], dim=1)
        logits = F.interpolate(logits, size=x.shape[-2:], mode="bilinear", align_corners=False)
        if return_features:
            return logits, feats
        return (logits, attns) if return_attn else logits

    @torch.no_grad()
    def init_new_classifier(self, step: int) -> None:
        """MiB initialisation of step ``step``'s classifier (Cermelli et al., CVPR 2020, Sec. 3.4): new weights
        = background weights, new bias = background bias - log(|C_new| + 1), and the background bias is set
        to the same value, so the background probability is shared evenly with the new classes."""
        bg_w, bg_b = self.cls[0].weight[0], self.cls[0].bias[0]
        new = self.cls[step]
        new_bias = bg_b - math.log(self.classes_per_step[step] + 1)
        new.weight.copy_(bg_w.expand_as(new.weight))
        new.bias.fill_(float(new_bias))
        self.cls[0].bias[0] = new_bias


def frozen_copy(model: IncrementalSegFormer, step: int) -> IncrementalSegFormer:
    """The old model for distillation: a copy at ``step`` (classes seen up to it), eval mode, no gradients."""
    old = copy.deepcopy(model)
    old.active_step = step
    old.eval()
    for p in old.parameters():
        p.requires_grad_(False)
    return old
