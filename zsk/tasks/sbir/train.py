"""ACNet training (Ren et al., IEEE TCSVT 2023; leftthomas/ACNet ``train.py``): G, D and E trained jointly,
one stage through the shared Trainer.

The official loop runs three Adam optimisers: E (lr 1e-5) with the proxies (1e-3), G (1e-3, betas 0.5, 0.999)
on L_G + 0.1 L_id + 10 L_cls, then D (1e-4, betas 0.5, 0.999) on the LSGAN loss of the same step's fake
photos. Adam is per-parameter, so here they are one Adam with four parameter groups and one backward of
the sum of both objectives: D's weights are held constant in the generator's adversarial term and the
fake photos are detached in D's term, so each network receives exactly the gradient the official code
gives it (tools/parity/sbir.py checks one step against it).
"""

from __future__ import annotations

from typing import Any

import torch
from torch import nn

from zsk.core import dist
from zsk.core.run import RunContext
from zsk.core.stages import Stage, run_stages
from zsk.core.trainer import TrainConfig, Trainer, batches_per_epoch, grad_accum_for, make_loader
from zsk.tasks.sbir.config import Config
from zsk.tasks.sbir.data import SketchPhotoPairs, load_split
from zsk.tasks.sbir.losses import discriminator_loss, identity_loss, lsgan_loss, normalized_softmax_loss
from zsk.tasks.sbir.model import ACNet

METRICS = ("mAP@all", "mAP@200", "P@100", "P@200")


def build_model(cfg: Config, num_classes: int) -> ACNet:
    """ACNet's networks for the recipe, with one proxy per seen class (``num_classes``)."""
    m = cfg.model
    return ACNet(num_classes, backbone=m.backbone, emb_dim=m.emb_dim, pretrained=m.pretrained,
                 generator_channels=m.generator_channels, generator_blocks=m.generator_blocks,
                 discriminator_channels=m.discriminator_channels, frozen_bn=m.frozen_bn, norm=m.norm)


def param_groups(model: ACNet, t: TrainConfig) -> list[dict]:
    """ACNet's optimisers as parameter groups of one Adam: E at ``train.lr``, the proxies at ``proxy_lr`` (both
    with Adam's default betas), G at ``generator_lr`` and D at ``discriminator_lr`` with ``gan_betas``."""
    gan = tuple(t.gan_betas)
    return [{"params": list(model.extractor.parameters()), "lr_mult": 1.0},
            {"params": [model.proxies], "lr_mult": t.proxy_lr / t.lr},
            {"params": list(model.generator.parameters()), "lr_mult": t.generator_lr / t.lr, "betas": gan},
            {"params": list(model.discriminator.parameters()), "lr_mult": t.discriminator_lr / t.lr, "betas": gan}]


def acnet_losses(out: dict[str, torch.Tensor], photo: torch.Tensor, label: torch.Tensor, proxies: torch.Tensor,
                 t: TrainConfig) -> dict[str, torch.Tensor]:
    """The loss terms of one step from :meth:`ACNet.forward`'s tensors: L_G (LSGAN), L_id (L1), L_cls (proxy
    normalised softmax averaged over sketch, photo and fake photo), L_D; ``loss`` = L_G + w_id L_id +
    w_cls L_cls + L_D (D's weights see only L_D, see the module docstring)."""
    g_loss = lsgan_loss(out["pred_fake"], True)
    i_loss = identity_loss(out["reconstructed"], photo)
    c_loss = sum(normalized_softmax_loss(out[k], label, proxies, t.temperature)
                 for k in ("emb_sketch", "emb_photo", "emb_fake")) / 3
    d_loss = discriminator_loss(out["pred_photo"], out["pred_fake_detached"])
    total = g_loss + t.identity_weight * i_loss + t.class_weight * c_loss + d_loss
    return {"loss": total, "generator": g_loss, "identity": i_loss, "class": c_loss, "discriminator": d_loss}


def make_step_fn(cfg: Config, steps_per_epoch: int):
    """step_fn(model, batch, step) for the trainer; the first ``warmup_epochs`` epochs train only E's last layer
    (and G, D and the proxies)."""
    t = cfg.train
    warm_steps = t.warmup_epochs * steps_per_epoch

    def step_fn(model: nn.Module, batch: dict[str, torch.Tensor], step: int) -> dict[str, torch.Tensor]:
        net: ACNet = dist.unwrap(model)
        net.extractor.set_warmup(step < warm_steps)
        out = model(batch["sketch"], batch["photo"])
        return acnet_losses(out, batch["photo"], batch["label"], net.proxies, t)

    return step_fn


def train(ctx: RunContext) -> dict[str, Any]:
    """Train ACNet with the recipe in ``ctx`` and return the final evaluation metrics (mAP@all, mAP@200,
    P@100, P@200 and their mean ``precise`` on the unseen split)."""
    from zsk.tasks.sbir.evaluate import evaluate_split

    cfg: Config = ctx.cfg
    d = cfg.data
    seen = load_split(d, "train")
    unseen = load_split(d, cfg.eval.split) if cfg.eval.split else None
    dataset = SketchPhotoPairs(seen, d.image_size, d.flip)
    seed = cfg.runtime.seed

    def build(tcfg: TrainConfig) -> Trainer:
        steps = batches_per_epoch(len(dataset), tcfg.batch_size, drop_last=tcfg.drop_last)

        def loader_fn(epoch: int, start_batch: int):
            return make_loader(dataset, tcfg.batch_size, epoch=epoch, seed=seed, drop_last=tcfg.drop_last,
                               start_batch=start_batch, workers=cfg.runtime.workers)

        def eval_fn(m: nn.Module) -> dict[str, float]:
            assert unseen is not None
            res = evaluate_split(m, cfg, unseen, ctx.device, cache=False)
            return {"precise": res["precise"], **{k: res[k] for k in METRICS}}

        model = build_model(cfg, len(seen.classes))
        extra = {"seen_classes": list(seen.classes), "unseen_classes": list(unseen.classes) if unseen else [],
                 "num_seen": len(seen.classes)}
        return Trainer(ctx, model, tcfg, make_step_fn(cfg, max(1, steps // grad_accum_for(tcfg))), loader_fn, steps,
                       eval_fn=eval_fn if unseen is not None else None, param_groups=param_groups(model, tcfg),
                       extra=extra, find_unused_parameters=tcfg.warmup_epochs > 0)

    return run_stages(ctx, [Stage("", build)])  # train.select: last makes best.pt the final weights
