"""FGM adversarial training on the word-embedding matrix (Miyato et al. 2017; spec: Adversarial training).

One training step with FGM:

1. clean pass: L1 = L(E), g = dL1/dE;
2. r = epsilon * g / ||g||_2 (one L2 norm over the whole matrix);
3. adversarial pass with E + r: L2 = L(E + r);
4. parameter gradients = dL1/dtheta + dL2/dtheta; E itself is never changed (nothing to restore).

The perturbation is applied through a forward hook on the embedding module that adds r[input_ids]
to its output, which equals a lookup in E + r without touching E. To keep the cost at two backward
passes (as the classic "backup, add r, backward, restore" recipe), the clean pass's gradients are
taken with `torch.autograd.grad` and injected into the adversarial loss as a linear surrogate
sum(theta * g1.detach()), whose gradient is g1 and whose value is subtracted again, so the trainer's
single `backward()` produces g1 + g2 and the logged loss is L1 + L2.
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Iterator

import torch
import torch.nn.functional as F
from torch import Tensor, nn


def fgm_perturbation(grad: Tensor, epsilon: float) -> Tensor:
    """r = epsilon * g / ||g||_2; zero when the gradient is zero or not finite."""
    norm = torch.linalg.vector_norm(grad.float())
    if not bool(torch.isfinite(norm)) or float(norm) == 0.0:
        return torch.zeros_like(grad)
    return (epsilon * grad.float() / norm).to(grad.dtype)


@contextlib.contextmanager
def perturbed_embedding(embedding: nn.Embedding, r: Tensor) -> Iterator[None]:
    """Inside the block, `embedding(ids)` returns (E + r)[ids]; E is untouched before and after."""

    def hook(module: nn.Module, inputs: tuple[Tensor, ...], output: Tensor) -> Tensor:
        return output + F.embedding(inputs[0], r).to(output.dtype)

    handle = embedding.register_forward_hook(hook)
    try:
        yield
    finally:
        handle.remove()


def fgm_loss(
    model: nn.Module,
    embedding: nn.Embedding,
    loss_fn: Callable[[nn.Module], Tensor],
    epsilon: float,
) -> tuple[Tensor, Tensor, Tensor]:
    """One FGM step: returns (total, clean, adversarial) losses; `total.backward()` gives g1 + g2.

    `loss_fn(model)` runs the forward pass and returns the scalar loss. `model` may be DDP-wrapped:
    the clean pass then runs under `no_sync()` so only the final backward synchronises gradients.
    """
    params = [p for p in model.parameters() if p.requires_grad]
    weight = embedding.weight
    if not any(p is weight for p in params):
        raise ValueError("FGM: the word-embedding matrix is not among the trainable parameters")
    sync_off = model.no_sync if hasattr(model, "no_sync") else contextlib.nullcontext
    with sync_off():
        clean = loss_fn(model)
        grads = torch.autograd.grad(clean, params, allow_unused=True)
    g_embed = next(g for p, g in zip(params, grads, strict=True) if p is weight)
    if g_embed is None:
        g_embed = torch.zeros_like(weight)
    r = fgm_perturbation(g_embed.detach(), epsilon)
    with perturbed_embedding(embedding, r):
        adversarial = loss_fn(model)
    surrogate = sum(
        ((p * g.detach().to(p.dtype)).sum() for p, g in zip(params, grads, strict=True) if g is not None),
        torch.zeros((), device=clean.device),
    )
    total = adversarial + (surrogate - surrogate.detach()) + clean.detach()
    return total, clean.detach(), adversarial.detach()
