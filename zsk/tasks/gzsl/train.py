"""DGP training (Kampffmeyer et al., CVPR 2019) in two stages through the shared Trainer:

* ``propagate``: the graph network (DGP, or the SGCN / GCNZ baselines) regresses the CNN's seen-class
  classifiers from word embeddings, full-graph Adam, one step per epoch, with ``epoch-N.pred``
  snapshots of every node's predicted classifier (a :class:`SnapshotCallback`);
* ``finetune`` (``train.stages.finetune.enabled``): the CNN backbone is trained with cross-entropy under
  the fixed predicted seen-class classifiers; the graph network is not retrained.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import Tensor, nn

from zsk.core import dist
from zsk.core.bench import count_params
from zsk.core.errors import ZskError
from zsk.core.progress import log, warn
from zsk.core.run import RunContext
from zsk.core.stages import Stage, run_stages, stage_config
from zsk.core.trainer import Callback, Trainer, batches_per_epoch, make_loader
from zsk.data.graphs import merge_groups
from zsk.tasks.gzsl.config import Config, TrainConfig
from zsk.tasks.gzsl.data import (
    GraphData,
    ImageList,
    list_images,
    load_graph_data,
    load_targets,
    predicted_snapshot,
    resolve,
    snapshot_classifiers,
    train_transform,
)
from zsk.tasks.gzsl.losses import build_loss
from zsk.tasks.gzsl.model import DGP, GCN, DenseGraph, ZeroShotModel, symmetric_adjacency

TASK = "gzsl"
GLOVE_DIM = 300  # GloVe 6B 300-d word vectors, the paper's input features
RESNET50_FEATURES = 2048  # pooled width of ResNet-50, whose fc layer the paper regresses

StepFn = Callable[[nn.Module, Any, int], dict[str, Tensor]]


# ----------------------------------------------------------------------------- models


def build_operators(cfg: Config, data: GraphData) -> DenseGraph | Tensor:
    """DGP: ancestor/descendant operators per merged distance group; SGCN/GCNZ: one adjacency."""
    return operators_for(cfg, data.graph.num_nodes, data.graph.edges, data.groups)


def operators_for(cfg: Config, n: int, edges: Any, groups: Sequence[Any]) -> DenseGraph | Tensor:
    """The propagation operators of ``model.name`` over a graph of ``n`` nodes: DGP's grouped dense
    operators, GCN_Dense's single group of every (node, ancestor) pair, or the GCN adjacency."""
    if cfg.model.name == "dgp":
        merged = merge_groups(groups, cfg.model.max_distance)
        while len(merged) > 1 and len(merged[-1]) == 0:  # make_dense_grouped_graph.py drops empty far groups
            merged.pop()
        return DenseGraph.from_groups(merged, n)
    if cfg.model.name == "gcn_dense":
        return DenseGraph.from_groups([np.concatenate([np.asarray(g).reshape(-1, 2) for g in groups])], n)
    return symmetric_adjacency(edges, n, cfg.model.adjacency)


def build_gnn(cfg: Config, in_dim: int, out_dim: int) -> nn.Module:
    """The recipe's graph network: DGP (hidden = model.hidden[0]) or a GCN stack (SGCN, GCNZ)."""
    m = cfg.model
    if not m.hidden:
        raise ZskError("model.hidden must list at least one hidden width (DGP/SGCN: [2048])")
    if m.name == "dgp":
        if len(m.hidden) != 1:
            raise ZskError(f"model.hidden: DGP has exactly one hidden layer (two propagation phases), got {m.hidden}")
        return DGP(in_dim, out_dim, hidden=m.hidden[0], num_groups=m.max_distance + 1, dropout=m.dropout,
                   negative_slope=m.negative_slope, attention=m.attention, normalize_output=m.normalize_output)
    if m.name == "gcn_dense":
        if len(m.hidden) != 1:
            raise ZskError(f"model.hidden: GCN_Dense has exactly one hidden layer (two phases), got {m.hidden}")
        return DGP(in_dim, out_dim, hidden=m.hidden[0], num_groups=1, dropout=m.dropout,
                   negative_slope=m.negative_slope, attention=False, normalize_output=m.normalize_output)
    return GCN(in_dim, out_dim, hidden=m.hidden, dropout=m.dropout, negative_slope=m.negative_slope,
               normalize_output=m.normalize_output, bias=m.bias, dropout_layers=m.dropout_layers)


def _pretrained_arg(cfg: Config) -> str | None:
    p = cfg.model.pretrained
    if p is None or p == "imagenet":
        return p
    return str(resolve(cfg.data.root, p) if not Path(p).expanduser().is_absolute() and not Path(p).is_file()
               else Path(p).expanduser())


def build_cnn(cfg: Config, pretrained: bool = True) -> tuple[nn.Module, nn.Linear | None]:
    """The torchvision CNN without its last layer (pooled features) and that layer (the targets' source)."""
    from zsk.models.backbones import build_torchvision_backbone, split_classifier

    return split_classifier(build_torchvision_backbone(cfg.model.cnn, _pretrained_arg(cfg) if pretrained else None))


def default_out_dim(cfg: Config) -> int:
    """The regressed classifier width of the paper's ResNet-50: 2048 weights, plus the bias column."""
    return RESNET50_FEATURES + 1 if cfg.model.target_bias else RESNET50_FEATURES


def build_model(cfg: Config, in_dim: int = GLOVE_DIM, out_dim: int | None = None,
                cnn: nn.Module | None = None) -> ZeroShotModel:
    """The graph network for ``in_dim``-d word vectors and ``out_dim``-d classifiers (default: GloVe-300
    inputs and ResNet-50 targets, as the paper), with the image CNN when given (random init)."""
    return ZeroShotModel(build_gnn(cfg, in_dim, out_dim or default_out_dim(cfg)), cnn)


# ----------------------------------------------------------------------------- step functions


def make_propagate_step(ops: DenseGraph | Tensor, loss_fn: Callable[[Tensor, Tensor], Tensor]) -> StepFn:
    """step_fn of stage one: the whole graph is one batch ``{"x", "seen", "targets"}``; the loss regresses
    the predicted classifiers of the seen nodes onto the CNN's (spec "Loss and training")."""

    def step_fn(m: nn.Module, batch: dict[str, Tensor], step: int) -> dict[str, Tensor]:
        pred = m(x=batch["x"], ops=ops)
        return {"loss": loss_fn(pred[batch["seen"]], batch["targets"])}

    return step_fn


def finetune_step(m: nn.Module, batch: Any, step: int) -> dict[str, Tensor]:
    """step_fn of stage two: cross-entropy of the CNN's features under the fixed seen classifiers."""
    images, target = batch
    logits = m(images=images)
    return {"loss": nn.functional.cross_entropy(logits.float(), target)}


# ----------------------------------------------------------------------------- snapshots


def write_snapshot(folder: Path, wnids: Sequence[str], pred: Tensor, epoch: int) -> Path:
    """``<folder>/epoch-N.pred``: every node's predicted classifier, as DGP's ``save_checkpoint`` (rank 0)."""
    path = folder / f"epoch-{epoch}.pred"
    if dist.is_main():
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_suffix(".pred.tmp")
        torch.save(predicted_snapshot(wnids, pred), tmp)
        tmp.replace(path)
    return path


class SnapshotCallback(Callback):
    """Write ``snapshots/epoch-N.pred`` every ``every`` epochs and after the last one (the reference
    code's ``save_checkpoint`` every 300 epochs), from the classifiers in eval mode."""

    def __init__(self, folder: Path, wnids: Sequence[str], x: Tensor, ops: DenseGraph | Tensor, every: int) -> None:
        self.folder, self.wnids, self.x, self.ops, self.every = folder, list(wnids), x, ops, every

    def on_step_end(self, trainer: Trainer, out: dict[str, Tensor]) -> None:
        step = trainer.step
        if (self.every and step % self.every == 0) or step >= trainer.stop_at:
            write_snapshot(self.folder, self.wnids, dist.unwrap(trainer.model).classifiers(self.x, self.ops), step)


# ----------------------------------------------------------------------------- training


def _stage_summary(run_dir: Path, name: str) -> dict[str, Any]:
    """The metrics a finished stage wrote to ``eval-<name>.json`` ({} when it did not run)."""
    path = run_dir / f"eval-{name}.json"
    if not path.is_file():
        return {}
    return json.loads(path.read_text(encoding="utf-8"))


def train(ctx: RunContext) -> dict[str, Any]:
    """Stage ``propagate``: regress the seen classifiers with the graph network (snapshots every
    ``train.checkpoint_every`` epochs); stage ``finetune`` when ``train.stages.finetune.enabled``
    (skipping ``propagate`` when ``train.stages.finetune.classifiers`` names a snapshot)."""
    from zsk.tasks.gzsl.evaluate import eval_source_available, evaluate_classifiers

    cfg: Config = ctx.cfg
    device = ctx.device
    ft_cfg = stage_config(cfg.train, "finetune")
    finetune_on = ft_cfg.enabled
    from_snapshot = finetune_on and bool(ft_cfg.classifiers)
    if not from_snapshot and not stage_config(cfg.train, "propagate").enabled:
        raise ZskError("train.stages.propagate.enabled is false, but stage two needs classifiers: set "
                       "train.stages.finetune.enabled and train.stages.finetune.classifiers to a snapshot")
    data = load_graph_data(cfg)
    cnn, fc = (None, None)
    if cfg.data.fc_weights is None or finetune_on:
        if cfg.model.pretrained is None and cfg.data.fc_weights is None:
            raise ZskError("data.fc_weights is null, so the targets are the CNN's fc layer, but model.pretrained is "
                           "null (random weights): set model.pretrained to 'imagenet' or a weights file")
        cnn, fc = build_cnn(cfg)
        for p in cnn.parameters():
            p.requires_grad_(False)
    targets = load_targets(cfg, data, fc).to(device)
    x = torch.from_numpy(data.vectors).to(device)
    ops = build_operators(cfg, data).to(device)
    model = build_model(cfg, x.shape[1], targets.shape[1], cnn).to(device)
    seen_idx = torch.from_numpy(data.seen_idx).to(device)
    # frozen CNN weights from a pretrained source are not copied into checkpoints (DESIGN.md)
    exclude = ("cnn.",) if cnn is not None and cfg.model.pretrained is not None else ()
    extra = {"seen": list(data.seen), "num_nodes": data.graph.num_nodes, "in_dim": int(x.shape[1]),
             "out_dim": int(targets.shape[1]), "finetuned": False}
    log(f"graph: {data.graph.num_nodes} nodes, {len(data.graph.edges)} edges, {len(data.seen)} seen classes; "
        f"model {cfg.model.name}: {count_params(model.gnn)[0]:,} parameters")
    eval_source = eval_source_available(cfg)
    snapshots = ctx.run_dir / "snapshots"

    def build_propagate(tcfg: TrainConfig) -> Trainer:
        loss_fn = build_loss(tcfg.loss, data.graph.num_nodes)
        batch = {"x": x, "seen": seen_idx, "targets": targets}

        def loader_fn(epoch: int, start_batch: int) -> list[dict[str, Tensor]]:
            return [] if start_batch > 0 else [batch]  # the whole graph is one batch

        def eval_fn(m: nn.Module) -> dict[str, float]:
            pred = m.classifiers(x, ops)
            out: dict[str, float] = {}
            if eval_source:
                r = evaluate_classifiers(cfg, data, pred, cnn=None, device=device)
                out.update({k: v for k, v in r.items() if k.startswith("hit@")})
            out["seen_loss"] = float(loss_fn(pred[seen_idx], targets))
            return out

        trainer = Trainer(ctx, model, tcfg, make_propagate_step(ops, loss_fn), loader_fn, steps_per_epoch=1,
                          eval_fn=eval_fn, extra=extra, exclude_prefixes=exclude, stage="propagate",
                          callbacks=[SnapshotCallback(snapshots, data.graph.wnids, x, ops, tcfg.checkpoint_every)])
        return trainer

    def build_finetune(tcfg: TrainConfig) -> Trainer:
        return finetune_trainer(ctx, tcfg, data, model, x, ops, extra)

    stages = [Stage("finetune", build_finetune)] if from_snapshot else [Stage("propagate", build_propagate)]
    if from_snapshot:
        log(f"stage one skipped: fine-tuning under the classifiers of {ft_cfg.classifiers}")
    elif finetune_on:
        stages.append(Stage("finetune", build_finetune))

    def final_eval(m: nn.Module) -> dict[str, Any]:
        summary = _stage_summary(ctx.run_dir, "propagate")
        out = {k: v for k, v in summary.items() if k not in ("step", "best", "stage")}
        if summary:
            out["snapshot"] = str(snapshots / f"epoch-{summary['step']}.pred")
        if finetune_on:
            out.update(finetune_steps=_stage_summary(ctx.run_dir, "finetune").get("step", 0),
                       finetune_checkpoint=str(ctx.run_dir / "last-finetune.pt"))
        return out

    return run_stages(ctx, stages, final_model=model, exclude_prefixes=() if finetune_on else exclude,
                      final_eval=final_eval)


def finetune_trainer(ctx: RunContext, tcfg: TrainConfig, data: GraphData, model: ZeroShotModel, x: Tensor,
                     ops: DenseGraph | Tensor, extra: dict) -> Trainer:
    """Stage two (spec "Stage 2"): the Trainer of the CNN backbone under the fixed predicted seen-class
    classifiers (the snapshot ``classifiers`` names, else those the graph network predicts now)."""
    cfg: Config = ctx.cfg
    device = ctx.device
    if tcfg.classifiers:
        path = resolve(cfg.data.root, tcfg.classifiers)
        pred = snapshot_classifiers(path, data)
        extra = {**extra, "classifiers_file": str(path.resolve())}
    else:
        pred = model.classifiers(x, ops)
    seen_cls = pred.to(device)[torch.from_numpy(data.seen_idx).to(device)]
    assert model.cnn is not None
    model.fixed_classifiers = seen_cls.detach().float().to(device)
    for p in model.gnn.parameters():
        p.requires_grad_(False)
    for p in model.cnn.parameters():
        p.requires_grad_(True)
    root = resolve(cfg.data.root, cfg.data.images)
    paths, labels, missing = list_images(root, data.seen)
    if missing:
        warn(f"{len(missing)} of {len(data.seen)} seen classes have no images under {root} (e.g. {missing[0]})")
    if not paths:
        raise ZskError(f"no training images for the seen classes under {root}/<wnid>/: stage two needs them")
    dataset = ImageList(paths, labels, train_transform(cfg.data.crop))
    workers = cfg.runtime.workers

    def loader_fn(epoch: int, start_batch: int):
        return make_loader(dataset, tcfg.batch_size, epoch=epoch, seed=cfg.runtime.seed, workers=workers,
                           start_batch=start_batch)

    model.cnn.train()
    return Trainer(ctx, model, tcfg, finetune_step, loader_fn, batches_per_epoch(len(dataset), tcfg.batch_size),
                   eval_fn=None, extra={**extra, "finetuned": True}, stage="finetune")
