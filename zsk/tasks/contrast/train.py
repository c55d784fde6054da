"""Training of the contrast task (MetAug, Li et al., ICML 2022): two stages through `zsk.core.stages.run_stages`.

1. `pretrain`: per iteration (jiangmengli/metaug `train_MetAug.py`) the encoder step with the generators fixed
   (the Trainer's SGD step on the MetAug loss), then the meta step (:class:`MetaStep`, a Trainer callback): the
   loss is recomputed, a virtual encoder θ' = θ − lr_v ∇_θ L is taken with the graph kept, the loss is
   recomputed with θ' (`torch.func.functional_call`) and its gradient reaches the generators only (second order).
2. `linear`: a linear classifier on the frozen encoder's features (`LinearProbing_MetAug.py`, or solo-learn's
   offline schedule with `eval.protocol: solo_offline`); skipped with `eval.protocol: online`.
"""

from __future__ import annotations

import dataclasses
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torch.func import functional_call

from zsk.core.errors import ZskError
from zsk.core.progress import log
from zsk.core.run import RunContext
from zsk.core.stages import Stage, run_stages
from zsk.core.trainer import Callback, Trainer, batches_per_epoch, make_eval_loader, make_loader
from zsk.tasks.contrast import data as cdata
from zsk.tasks.contrast.config import SOLO_OFFLINE, Config, TrainConfig
from zsk.tasks.contrast.losses import LossWeights, metaug_objective
from zsk.tasks.contrast.model import LAYERS, MetAugNet

# ----------------------------------------------------------------------------------------------
# Model
# ----------------------------------------------------------------------------------------------


def build_model(cfg: Config, n_data: int, num_classes: int) -> MetAugNet:
    """The recipe's MetAug network for a pretraining set of `n_data` images and `num_classes` probe classes."""
    m = cfg.model
    try:
        return MetAugNet(m.backbone, m.channels, m.fc_dim, m.feat_dim, m.generator_hidden, cfg.data.image_size,
                         n_data, num_classes, m.memory_momentum, cfg.eval.layer, cfg.eval.features, m.online_probe)
    except ValueError as e:
        raise ZskError(f"model / data.image_size: {e}") from None


def loss_weights(tcfg: TrainConfig) -> LossWeights:
    """The `train.loss` numbers as the objective's weights."""
    c = tcfg.loss
    return LossWeights(c.beta, c.eta, c.gamma, c.margins, c.margin_m, c.adaptive_weights, c.alpha_m, c.margin_mode,
                       c.margin_pos_weight, c.margin_reference)


def with_epoch_milestones(tcfg: TrainConfig, steps_per_epoch: int) -> TrainConfig:
    """`train.milestone_epochs` as optimizer-step milestones: the lr of epoch e (1-based) is decayed once per
    milestone m < e (util.py `adjust_learning_rate`), i.e. from step m * steps_per_epoch on."""
    if not tcfg.milestone_epochs:
        return tcfg
    return dataclasses.replace(tcfg, milestones=[m * steps_per_epoch for m in tcfg.milestone_epochs], stages={})


def _set_grad(params: list[nn.Parameter], flag: bool) -> None:
    for p in params:
        p.requires_grad_(flag)


# ----------------------------------------------------------------------------------------------
# Stage 1: the encoder step (Trainer) and the meta step (callback)
# ----------------------------------------------------------------------------------------------


class MetAugStep:
    """The encoder step of one batch (x, y, index): the MetAug loss with the generators frozen (their outputs still
    pass gradient to the encoder); also the online probe's cross-entropy on detached features when present."""

    def __init__(self, net: MetAugNet, cfg: Config, tcfg: TrainConfig) -> None:
        self.net = net
        self.k = cfg.model.nce_k
        self.weights = loss_weights(tcfg)
        self.official_memory = cfg.model.memory_update == "official"
        self.margin_encoder = tcfg.loss.margin_injection == "both"
        self.margin_meta = tcfg.loss.margin_injection in ("both", "meta")
        self.online_keep = 7 if cfg.eval.layer == "pool" else LAYERS[cfg.eval.layer]
        self.last: tuple[Tensor, Tensor] | None = None

    def draw(self, index: Tensor) -> Tensor:
        return self.net.memory.draw(index, self.k)

    def objective(self, feats: tuple[Tensor, Tensor, Tensor], index: Tensor, margin: bool,
                  update_memory: bool) -> dict[str, Tensor]:
        """The MetAug loss of embeddings `feats` (generators applied here); the official memory order updates the
        bank right after the original-feature scores when `update_memory`."""
        gens = self.net.generators
        aug = (gens["l"](feats[0]), gens["ab"](feats[1]), gens["ori"](feats[2]))
        banks = {v: self.net.memory.bank(v) for v in ("l", "ab", "ori")}
        after = (lambda: self.net.memory.update(feats, index)) if update_memory else None
        return metaug_objective(feats, aug, banks, index, self.draw, self.weights, margin, after)

    def __call__(self, model: nn.Module, batch: Any, step: int) -> dict[str, Tensor]:
        x, y, index = batch
        net = self.net
        _set_grad(net.generator_parameters(), False)
        self.last = (x, index)
        if net.online_probe is not None:
            feats, hidden = net.encoder.with_features(x, self.online_keep)
        else:
            feats, hidden = net.encoder(x, 8), None
        out = self.objective(feats, index, self.margin_encoder, self.official_memory)
        if not self.official_memory:
            net.memory.update(feats, index)
        if net.online_probe is not None and hidden is not None:
            keep = y >= 0
            logits = net.online_probe(hidden.detach()[keep])
            out["online_ce"] = F.cross_entropy(logits, y[keep]) if bool(keep.any()) else logits.sum() * 0
            out["online_acc"] = (logits.argmax(1) == y[keep]).float().mean().detach() if bool(keep.any()) \
                else out["online_ce"].detach()
            out["loss"] = out["loss"] + out["online_ce"]
        return out


def virtual_encoder_loss(step: MetAugStep, x: Tensor, index: Tensor, margin: bool, virtual_lr: float,
                         update_memory: bool) -> Tensor:
    """The meta objective: L(θ', φ) with θ' = θ − lr_v ∇_θ L(θ, φ) (graph kept, so L depends on the generators φ
    through θ' too). The virtual pass runs on copies of the BN buffers, as the official fast-weight forward
    (F.batch_norm on fresh running statistics) leaves the model's statistics alone."""
    enc = step.net.encoder
    params = dict(enc.named_parameters())
    first = step.objective(enc(x, 8), index, margin, update_memory)["loss"]
    grads = torch.autograd.grad(first, list(params.values()), create_graph=True, allow_unused=True)
    fast = {k: p if g is None else p - virtual_lr * g for (k, p), g in zip(params.items(), grads, strict=True)}
    buffers = {k: b.clone() for k, b in enc.named_buffers()}
    feats = functional_call(enc, {**fast, **buffers}, (x, 8))
    return step.objective(feats, index, margin, update_memory)["loss"]


class MetaStep(Callback):
    """The generators' update after each encoder step (SGD, `train.generator_*`), its optimizer state kept in
    `trainer.extra` so a resumed run continues it."""

    KEY = "generator_optimizer"

    def __init__(self, step: MetAugStep, tcfg: TrainConfig) -> None:
        self.step = step
        self.virtual_lr = tcfg.virtual_lr
        self.params = step.net.generator_parameters()
        self.optimizer = torch.optim.SGD(self.params, lr=tcfg.generator_lr, momentum=tcfg.generator_momentum,
                                         weight_decay=tcfg.generator_weight_decay)
        self._restored = False

    def meta_update(self, x: Tensor, index: Tensor) -> Tensor:
        """One second-order update of the generators on batch (x, index); returns the meta loss."""
        _set_grad(self.params, True)
        try:
            loss = virtual_encoder_loss(self.step, x, index, self.step.margin_meta, self.virtual_lr,
                                        self.step.official_memory)
            grads = torch.autograd.grad(loss, self.params, allow_unused=True)
        finally:
            _set_grad(self.params, False)
        for p, g in zip(self.params, grads, strict=True):
            p.grad = None if g is None else g.detach()
        self.optimizer.step()
        self.optimizer.zero_grad(set_to_none=True)
        return loss.detach()

    def on_step_end(self, trainer: Trainer, out: dict[str, Tensor]) -> None:
        if not self._restored:
            self._restored = True
            if self.KEY in trainer.extra:
                self.optimizer.load_state_dict(trainer.extra[self.KEY])
        assert self.step.last is not None
        self.meta_update(*self.step.last)
        self.step.last = None
        trainer.extra[self.KEY] = self.optimizer.state_dict()


# ----------------------------------------------------------------------------------------------
# Stage 2: linear evaluation on frozen features
# ----------------------------------------------------------------------------------------------


class ProbeStep:
    """Cross-entropy of the linear probe on features of the frozen network (computed without gradient)."""

    def __init__(self, net: MetAugNet) -> None:
        self.net = net

    def __call__(self, model: nn.Module, batch: Any, step: int) -> dict[str, Tensor]:
        x, y, _ = batch
        with torch.no_grad():
            f = self.net.probe_features(x)
        logits = model(f)
        return {"loss": F.cross_entropy(logits, y), "acc": (logits.argmax(1) == y).float().mean().detach()}


def topk_correct(logits: Tensor, target: Tensor, ks: tuple[int, ...] = (1, 5)) -> dict[int, int]:
    """How many rows have their target among the k highest logits, for each k (k capped at the class count)."""
    top = logits.topk(min(max(ks), logits.shape[1]), 1).indices
    hit = top == target[:, None]
    return {k: int(hit[:, :k].any(1).sum()) for k in ks}


@torch.no_grad()
def probe_accuracy(net: MetAugNet, head: nn.Module, dataset: cdata.LabImages, batch_size: int, device: torch.device,
                   workers: int = 0, online: bool = False) -> dict[str, float]:
    """Top-1 / top-5 accuracy (%) of a probe head on a labelled dataset (frozen network in eval mode)."""
    was = net.training
    net.eval()
    hits = {1: 0, 5: 0}
    n = 0
    for x, y, _ in make_eval_loader(dataset, batch_size, workers=workers, sharded=False):
        x, y = x.to(device), y.to(device)
        if online:
            f = net.encoder.with_features(x, 7 if net.layer == "pool" else LAYERS[net.layer])[1]
        else:
            f = net.probe_features(x)
        for k, v in topk_correct(head(f), y).items():
            hits[k] += v
        n += len(y)
    net.train(was)
    return {"top1": 100.0 * hits[1] / max(1, n), "top5": 100.0 * hits[5] / max(1, n)}


def linear_settings(cfg: Config, tcfg: TrainConfig) -> TrainConfig:
    """The linear stage's settings: `eval.protocol: solo_offline` puts solo-learn's offline schedule under the
    recipe's own `train.stages.linear` keys."""
    if cfg.eval.protocol != "solo_offline":
        return tcfg
    block = cfg.train.stages.get("linear") or {}
    return dataclasses.replace(tcfg, **{k: v for k, v in SOLO_OFFLINE.items() if k not in block}, stages={})


# ----------------------------------------------------------------------------------------------
# Data and the two stages
# ----------------------------------------------------------------------------------------------


@dataclasses.dataclass
class Splits:
    pretrain: cdata.LabImages
    probe_train: cdata.LabImages
    probe_val: cdata.LabImages
    classes: list[str]


def eval_split(cfg: Config) -> str:
    return cfg.eval.split or cfg.data.val_split


def load_splits(cfg: Config) -> Splits:
    """The pretraining set (augmented, with indices), the probe's training set (augmented, labelled) and its
    test set (Resize + CenterCrop)."""
    pre = cdata.read_split(cfg.data, cfg.data.train_split, pretrain=True)
    lab = cdata.labelled(pre)
    val = cdata.read_split(cfg.data, eval_split(cfg))
    if val.classes != pre.classes:
        raise ZskError(f"{val.source}: its classes ({len(val.classes)}) differ from the training split's "
                       f"({len(pre.classes)}, {pre.source}); both splits need the same class folders")
    if len(lab) == 0:
        raise ZskError(f"{pre.source}: no labelled training images for the linear probe")
    tr = cdata.train_transform(cfg.data)
    return Splits(cdata.LabImages(pre, tr), cdata.LabImages(lab, tr),
                  cdata.LabImages(val, cdata.test_transform(cfg.data)), list(pre.classes))


def pretrain_trainer(ctx: RunContext, tcfg: TrainConfig, net: MetAugNet, splits: Splits, extra: dict) -> Trainer:
    """Stage `pretrain`: the encoder's SGD step in the Trainer, the meta step as its callback."""
    cfg: Config = ctx.cfg
    spe = batches_per_epoch(len(splits.pretrain), tcfg.batch_size)
    tcfg = with_epoch_milestones(tcfg, spe)
    step = MetAugStep(net, cfg, tcfg)
    callbacks = [MetaStep(step, tcfg)] if tcfg.meta_step else []
    seed = cfg.runtime.seed

    def loader_fn(epoch: int, start_batch: int):
        return make_loader(splits.pretrain, tcfg.batch_size, epoch=epoch, seed=seed, start_batch=start_batch,
                           workers=cfg.runtime.workers)

    eval_fn = None
    if net.online_probe is not None:
        def eval_fn(model: nn.Module) -> dict[str, float]:
            return probe_accuracy(net, net.online_probe, splits.probe_val, cfg.eval.batch_size, ctx.device,
                                  cfg.runtime.workers, online=True)
    groups = [{"params": net.encoder_parameters()}]
    if net.online_probe is not None:
        groups.append({"params": list(net.online_probe.parameters()), "lr_mult": tcfg.online_probe_lr / tcfg.lr,
                       "weight_decay": 0.0})
    return Trainer(ctx, net, tcfg, step, loader_fn, spe, eval_fn=eval_fn, param_groups=groups, extra=extra,
                   stage="pretrain", callbacks=callbacks)


def linear_trainer(ctx: RunContext, tcfg: TrainConfig, net: MetAugNet, splits: Splits, extra: dict) -> Trainer:
    """Stage `linear`: the probe head on frozen features, scored (top-1/top-5) on the evaluation split."""
    cfg: Config = ctx.cfg
    tcfg = linear_settings(cfg, tcfg)
    spe = batches_per_epoch(len(splits.probe_train), tcfg.batch_size)
    tcfg = with_epoch_milestones(tcfg, spe)
    net.to(ctx.device).eval()
    _set_grad(list(net.parameters()), False)
    _set_grad(list(net.probe.parameters()), True)
    seed = cfg.runtime.seed

    def loader_fn(epoch: int, start_batch: int):
        return make_loader(splits.probe_train, tcfg.batch_size, epoch=epoch, seed=seed + 1, start_batch=start_batch,
                           workers=cfg.runtime.workers)

    def eval_fn(model: nn.Module) -> dict[str, float]:
        return probe_accuracy(net, net.probe, splits.probe_val, cfg.eval.batch_size, ctx.device, cfg.runtime.workers)

    return Trainer(ctx, net.probe, tcfg, ProbeStep(net), loader_fn, spe, eval_fn=eval_fn, extra=extra, stage="linear")


def checkpoint_extra(cfg: Config, splits: Splits) -> dict:
    return {"class_names": splits.classes, "n_data": len(splits.pretrain)}


def final_metrics(cfg: Config, net: MetAugNet, splits: Splits, device: torch.device) -> dict[str, Any]:
    """What eval.json holds: top-1/top-5 (%) of the probe named by eval.protocol, and which protocol it was."""
    online = cfg.eval.protocol == "online"
    head = net.online_probe if online else net.probe
    assert head is not None
    scores = probe_accuracy(net, head, splits.probe_val, cfg.eval.batch_size, device, cfg.runtime.workers, online)
    return {**scores, "protocol": cfg.eval.protocol, "layer": cfg.eval.layer, "features": cfg.eval.features,
            "split": eval_split(cfg), "images": len(splits.probe_val)}


def check_single_process(ctx: RunContext) -> None:
    if ctx.dist.world_size > 1:
        raise ZskError("contrast trains in one process (the memory bank and the meta step are per process, as in "
                       "the official code): run without torchrun")


def train(ctx: RunContext) -> dict:
    """Pretrain MetAug, then the linear evaluation; the run folder gets best.pt/last.pt (the whole network with
    its probe) and eval.json ({"top1", "top5", "protocol", ...})."""
    check_single_process(ctx)
    cfg: Config = ctx.cfg
    splits = load_splits(cfg)
    log(f"pretraining on {len(splits.pretrain)} images; linear probe: {len(splits.probe_train)} train / "
        f"{len(splits.probe_val)} {eval_split(cfg)} images, {len(splits.classes)} classes")
    net = build_model(cfg, len(splits.pretrain), len(splits.classes))
    extra = checkpoint_extra(cfg, splits)
    stages = [Stage("pretrain", lambda t: pretrain_trainer(ctx, t, net, splits, extra))]
    if cfg.eval.protocol != "online":
        stages.append(Stage("linear", lambda t: linear_trainer(ctx, t, net, splits, extra)))
    metrics = run_stages(ctx, stages, final_model=net, extra=extra,
                         final_eval=lambda m: final_metrics(cfg, net, splits, ctx.device))
    log(f"{metrics['split']}: top1={metrics['top1']:.2f} top5={metrics['top5']:.2f} ({metrics['protocol']} "
        f"protocol, {metrics['layer']} features)")
    return metrics


def run_linear(ctx: RunContext, net: MetAugNet) -> dict:
    """`zsk contrast linear`: only the linear stage, on a pretrained network (weights already loaded)."""
    check_single_process(ctx)
    cfg: Config = ctx.cfg
    if cfg.eval.protocol == "online":
        raise ZskError("eval.protocol=online has no linear stage: use metaug or solo_offline")
    splits = load_splits(cfg)
    extra = checkpoint_extra(cfg, splits)
    metrics = run_stages(ctx, [Stage("linear", lambda t: linear_trainer(ctx, t, net, splits, extra))],
                         final_model=net, extra=extra, final_eval=lambda m: final_metrics(cfg, net, splits, ctx.device))
    log(f"{metrics['split']}: top1={metrics['top1']:.2f} top5={metrics['top5']:.2f} ({metrics['protocol']} "
        f"protocol, {metrics['layer']} features)")
    return metrics
