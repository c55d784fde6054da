"""ACNet's losses (Ren et al., IEEE TCSVT 2023; leftthomas/ACNet ``train.py``): the LSGAN generator and
discriminator losses, the identity L1 of photos through the generator, and the proxy-based normalised
softmax ("centralizing": every domain of a class is pulled to one proxy) of pytorch-metric-learning's
``NormalizedSoftmaxLoss``."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor


def normalized_softmax_loss(embeddings: Tensor, labels: Tensor, proxies: Tensor, temperature: float = 0.05) -> Tensor:
    """l(x, y) = -log softmax_y(x^T p_c / sigma) with x and the proxies p_c L2-normalised, averaged over the
    batch (NormSoftmax, Zhai & Wu 2019; pytorch-metric-learning ``NormalizedSoftmaxLoss``). ``proxies``:
    (classes, d)."""
    logits = F.normalize(embeddings, dim=1) @ F.normalize(proxies, dim=1).T / temperature
    return F.cross_entropy(logits, labels)


def lsgan_loss(pred: Tensor, real: bool) -> Tensor:
    """Least-squares GAN loss MSE(D(x), 1) for real targets, MSE(D(x), 0) for fake ones."""
    target = torch.ones_like(pred) if real else torch.zeros_like(pred)
    return F.mse_loss(pred, target)


def identity_loss(reconstructed: Tensor, photo: Tensor) -> Tensor:
    """L_id = mean |G(p) - p|: photos should pass through the generator unchanged."""
    return F.l1_loss(reconstructed, photo)


def discriminator_loss(pred_photo: Tensor, pred_fake: Tensor) -> Tensor:
    """L_D = 1/2 [MSE(D(p), 1) + MSE(D(G(s)).detach, 0)]."""
    return (lsgan_loss(pred_photo, True) + lsgan_loss(pred_fake, False)) / 2
