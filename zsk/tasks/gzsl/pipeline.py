"""gzsl pipeline: DGP / SGCN / GCNZ training on the knowledge graph, optional CNN fine-tuning (stage two),
ImageNet hit@k evaluation (ZSL and GZSL), prediction, ``info``, and the ``zsk demo`` / ``zsk bench`` hooks."""

from __future__ import annotations

import sys
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import Tensor, nn

from zsk.core import dist
from zsk.core.bench import BenchSpec, count_params
from zsk.core.checkpoint import load_checkpoint, load_model_state
from zsk.core.device import resolve_device
from zsk.core.errors import ZskError
from zsk.core.progress import log, progress, warn
from zsk.core.run import RunContext, config_from_checkpoint
from zsk.core.trainer import TrainConfig as CoreTrainConfig
from zsk.core.trainer import Trainer, make_eval_loader, make_loader
from zsk.data.embeddings import embed_synsets, load_glove
from zsk.data.graphs import (
    KnowledgeGraph,
    ancestor_groups,
    merge_groups,
    read_dense_grouped_graph,
    read_induced_graph,
    read_names,
    wordnet_lemma_names,
)
from zsk.tasks.gzsl.config import Config
from zsk.tasks.gzsl.data import (
    ImageList,
    eval_transform,
    list_images,
    predicted_snapshot,
    read_awa2_split,
    read_fc_weights,
    read_features,
    read_rgb,
    read_snapshot,
    read_split,
    read_testsets,
    resolve,
    train_transform,
    write_sample,
)
from zsk.tasks.gzsl.losses import LOSSES
from zsk.tasks.gzsl.metrics import (
    HitAtK,
    append_bias_input,
    candidate_indices,
    keep_per_class,
    per_class_top1,
)
from zsk.tasks.gzsl.model import DGP, GCN, DenseGraph, symmetric_adjacency

TASK = "gzsl"
IMAGENET_NODES = 32_295  # wnids of ImageNet's structure_released.xml: the size of DGP's induced graph


# ----------------------------------------------------------------------------- graph data


@dataclass
class GraphData:
    """The knowledge graph with its input vectors, the seen classes and where everything came from."""

    graph: KnowledgeGraph
    seen: list[str]
    seen_idx: np.ndarray
    unseen: list[str]
    groups: list[np.ndarray]  # unmerged (u, ancestor) pairs by hop distance
    graph_file: Path
    split_file: Path

    def index(self) -> dict[str, int]:
        return self.graph.index()

    @property
    def vectors(self) -> np.ndarray:
        assert self.graph.vectors is not None
        return self.graph.vectors


def node_lemmas(cfg: Config, wnids: Sequence[str]) -> list[list[str]]:
    """Lemma names per node: ``data.names`` (words.txt) when it exists, else nltk's WordNet."""
    names_path = resolve(cfg.data.root, cfg.data.names) if cfg.data.names else None
    if names_path is not None and names_path.is_file():
        table = read_names(names_path)
        missing = [w for w in wnids if w not in table]
        if missing:
            raise ZskError(f"{names_path} has no name for {missing[0]} ({len(missing)} graph nodes missing)")
        return [[n.replace(" ", "_") for n in table[w]] for w in wnids]
    return wordnet_lemma_names(wnids, cfg.model.nltk_data)


def load_graph_data(cfg: Config) -> GraphData:
    """Read the split, the induced graph (and the dense grouped graph when given) and validate that
    every split wnid is a graph node."""
    root = cfg.data.root
    split_file = resolve(root, cfg.data.split)
    split = read_split(split_file)
    graph_file = resolve(root, cfg.data.graph)
    graph = read_induced_graph(graph_file)
    if cfg.data.dense_graph:
        dense_file = resolve(root, cfg.data.dense_graph)
        dense, groups = read_dense_grouped_graph(dense_file)
        if dense.wnids != graph.wnids:
            raise ZskError(f"{dense_file} lists other nodes than {graph_file}: build both from the same graph "
                           f"(zsk gzsl make-graph)")
        if graph.vectors is not None and dense.vectors is not None and dense.vectors.shape != graph.vectors.shape:
            raise ZskError(f"{dense_file} has {dense.vectors.shape[1]}-d vectors but {graph_file} has "
                           f"{graph.vectors.shape[1]}-d (embedding dimension mismatch)")
    else:
        groups = ancestor_groups(graph.num_nodes, graph.edges)
    if cfg.model.word_vectors:
        glove = load_glove(resolve(root, cfg.model.word_vectors))
        graph.vectors = embed_synsets(glove, node_lemmas(cfg, graph.wnids))
    if graph.vectors is None or graph.vectors.shape[0] == 0:
        raise ZskError(f"{graph_file} carries no 'vectors': rebuild it with word vectors (zsk gzsl make-graph "
                       f"--glove FILE) or set model.word_vectors to a GloVe file")
    index = graph.index()
    for kind, wnids in (("train", split.train), ("test", split.test)):
        missing = [w for w in wnids if w not in index]
        if missing:
            raise ZskError(f"{kind} wnid {missing[0]} of {split_file} is missing from the graph {graph_file} "
                           f"({len(missing)} missing): rebuild the graph from this split")
    seen_idx = np.asarray([index[w] for w in split.train], dtype=np.int64)
    return GraphData(graph=graph, seen=split.train, seen_idx=seen_idx, unseen=split.test, groups=groups,
                     graph_file=graph_file, split_file=split_file)


def build_operators(cfg: Config, data: GraphData) -> DenseGraph | Tensor:
    """DGP: ancestor/descendant operators per merged distance group; SGCN/GCNZ: one adjacency."""
    n = data.graph.num_nodes
    if cfg.model.name == "dgp":
        return DenseGraph.from_groups(merge_groups(data.groups, cfg.model.max_distance), n)
    return symmetric_adjacency(data.graph.edges, n)


def operators_to(ops: DenseGraph | Tensor, device: torch.device) -> DenseGraph | Tensor:
    return ops.to(device)


# ----------------------------------------------------------------------------- models


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
    return GCN(in_dim, out_dim, hidden=m.hidden, dropout=m.dropout, negative_slope=m.negative_slope,
               normalize_output=m.normalize_output)


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


class ZeroShotModel(nn.Module):
    """The graph network that predicts classifiers, and optionally the CNN that extracts image features.

    ``forward(x=..., ops=...)`` -> predicted classifiers for every node (stage one);
    ``forward(images=...)`` -> logits of the fixed seen-class classifiers (stage two).
    """

    def __init__(self, gnn: nn.Module, cnn: nn.Module | None = None) -> None:
        super().__init__()
        self.gnn = gnn
        self.cnn = cnn
        self.register_buffer("fixed_classifiers", torch.zeros(0), persistent=False)

    def forward(self, x: Tensor | None = None, ops: Any = None, images: Tensor | None = None) -> Tensor:
        if images is not None:
            if self.cnn is None or self.fixed_classifiers.numel() == 0:
                raise RuntimeError("stage two needs the CNN and the fixed seen classifiers")
            w = self.fixed_classifiers
            feats = self.cnn(images).float()
            return feats @ w[:, : feats.shape[1]].T + (w[:, -1] if w.shape[1] == feats.shape[1] + 1 else 0.0)
        return self.gnn(x, ops)

    @torch.no_grad()
    def classifiers(self, x: Tensor, ops: Any) -> Tensor:
        """Predicted classifiers in eval mode (no dropout)."""
        was = self.gnn.training
        self.gnn.eval()
        out = self.gnn(x, ops)
        self.gnn.train(was)
        return out


# ----------------------------------------------------------------------------- targets


def load_targets(cfg: Config, data: GraphData, fc: nn.Linear | None) -> Tensor:
    """The seen classes' classifiers [W | b] (or W alone when model.target_bias is false), rows L2-normalised
    (spec "Regression targets")."""
    if cfg.data.fc_weights:
        path = resolve(cfg.data.root, cfg.data.fc_weights)
        w = torch.from_numpy(read_fc_weights(path, data.seen))
        if not cfg.model.target_bias:
            w = w[:, :-1]
    else:
        if fc is None:
            raise ZskError("data.fc_weights is null, so the targets come from the CNN's last layer, but no CNN was built")
        if fc.out_features != len(data.seen):
            raise ZskError(f"the CNN {cfg.model.cnn} has {fc.out_features} classes but {data.split_file} has "
                           f"{len(data.seen)} train wnids: they must be its fc rows, in order")
        w = fc.weight.detach().float().cpu()
        if cfg.model.target_bias:
            w = torch.cat([w, fc.bias.detach().float().cpu().view(-1, 1)], dim=1)
    return torch.nn.functional.normalize(w, dim=1)


# ----------------------------------------------------------------------------- training


def _needs_cnn_in_training(cfg: Config) -> bool:
    return cfg.data.fc_weights is None or cfg.train.finetune.enabled


def _snapshot_dir(ctx: RunContext) -> Path:
    return ctx.run_dir / "snapshots"


def _write_snapshot(ctx: RunContext, wnids: Sequence[str], pred: Tensor, epoch: int) -> Path:
    path = _snapshot_dir(ctx) / f"epoch-{epoch}.pred"
    if dist.is_main():
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_suffix(".pred.tmp")
        torch.save(predicted_snapshot(wnids, pred), tmp)
        tmp.replace(path)
    return path


def train(ctx: RunContext) -> dict[str, Any]:
    """Stage one: regress the seen classifiers with the graph network (full-graph Adam, one step per
    epoch, snapshots every ``train.checkpoint_every`` epochs); stage two when ``train.finetune.enabled``."""
    cfg: Config = ctx.cfg
    device = ctx.device
    data = load_graph_data(cfg)
    ft = cfg.train.finetune
    cnn, fc = (None, None)
    if _needs_cnn_in_training(cfg):
        if cfg.model.pretrained is None and cfg.data.fc_weights is None:
            raise ZskError("data.fc_weights is null, so the targets are the CNN's fc layer, but model.pretrained is "
                           "null (random weights): set model.pretrained to 'imagenet' or a weights file")
        cnn, fc = build_cnn(cfg)
        for p in cnn.parameters():
            p.requires_grad_(False)
    targets = load_targets(cfg, data, fc).to(device)
    x = torch.from_numpy(data.vectors).to(device)
    ops = operators_to(build_operators(cfg, data), device)
    gnn = build_gnn(cfg, x.shape[1], targets.shape[1])
    model = ZeroShotModel(gnn, cnn).to(device)
    seen_idx = torch.from_numpy(data.seen_idx).to(device)
    loss_fn = LOSSES[cfg.train.loss]
    # frozen CNN weights from a pretrained source are not copied into checkpoints (DESIGN.md)
    exclude = ("cnn.",) if cnn is not None and cfg.model.pretrained is not None else ()
    extra = {"seen": list(data.seen), "num_nodes": data.graph.num_nodes, "in_dim": int(x.shape[1]),
             "out_dim": int(targets.shape[1]), "finetuned": False}
    log(f"graph: {data.graph.num_nodes} nodes, {len(data.graph.edges)} edges, {len(data.seen)} seen classes; "
        f"model {cfg.model.name}: {count_params(gnn)[0]:,} parameters")

    def step_fn(m: nn.Module, batch: Any, step: int) -> dict[str, Tensor]:
        every = cfg.train.checkpoint_every
        if every and step > 0 and step % every == 0:
            _write_snapshot(ctx, data.graph.wnids, dist.unwrap(m).classifiers(x, ops), step)
        pred = m(x=x, ops=ops)
        return {"loss": loss_fn(pred[seen_idx], targets)}

    def loader_fn(epoch: int, start_batch: int):
        return [] if start_batch > 0 else [0]  # the whole graph is one batch

    eval_source = _eval_source_available(cfg)

    def eval_fn(m: nn.Module) -> dict[str, float]:
        pred = m.classifiers(x, ops)
        out: dict[str, float] = {}
        if eval_source:
            r = evaluate_classifiers(cfg, data, pred, cnn=None, device=device)
            out.update({k: v for k, v in r.items() if k.startswith("hit@")})
        out["seen_loss"] = float(loss_fn(pred[seen_idx], targets))
        return out

    stage1_cfg = cfg.train
    if ft.enabled and ft.classifiers:
        log(f"stage one skipped: fine-tuning under the classifiers of {ft.classifiers}")
        metrics: dict[str, Any] = {}
    else:
        trainer = Trainer(ctx, model, stage1_cfg, step_fn, loader_fn, steps_per_epoch=1, eval_fn=eval_fn,
                          extra=extra, exclude_prefixes=exclude)
        metrics = dict(trainer.fit())
        final = _write_snapshot(ctx, data.graph.wnids, model.classifiers(x, ops), trainer.step)
        metrics["snapshot"] = str(final)
    if not ft.enabled:
        return metrics
    return {**metrics, **finetune(ctx, cfg, data, model, x, ops, extra)}


def snapshot_classifiers(path: Path, data: GraphData) -> Tensor:
    """The classifiers of an ``epoch-N.pred`` snapshot, in the graph's node order."""
    wnids, pred = read_snapshot(path)
    index = {w: i for i, w in enumerate(wnids)}
    missing = [w for w in data.graph.wnids if w not in index]
    if missing:
        raise ZskError(f"{path} has no classifier for graph node {missing[0]} ({len(missing)} missing): "
                       f"use a snapshot predicted on {data.graph_file}")
    return pred[[index[w] for w in data.graph.wnids]]


def predicted_classifiers(model: ZeroShotModel, data: GraphData, cfg: Config, extra: dict,
                          device: torch.device) -> Tensor:
    """Every node's classifier: the graph network's prediction, or the snapshot that stage two was
    trained under when stage one was skipped."""
    if extra.get("classifiers_file"):
        return snapshot_classifiers(Path(extra["classifiers_file"]), data).to(device)
    x = torch.from_numpy(data.vectors).to(device)
    return model.classifiers(x, operators_to(build_operators(cfg, data), device))


def _eval_source_available(cfg: Config) -> bool:
    """Whether training can report hit@k cheaply: a features file is configured and present."""
    return bool(cfg.eval.features) and resolve(cfg.data.root, cfg.eval.features).is_file()


def finetune(ctx: RunContext, cfg: Config, data: GraphData, model: ZeroShotModel, x: Tensor, ops: Any,
             extra: dict) -> dict[str, Any]:
    """Stage two (spec "Stage 2"): train the CNN backbone with cross-entropy under the fixed predicted
    seen-class classifiers; the graph network is not retrained."""
    ft = cfg.train.finetune
    device = ctx.device
    if ft.classifiers:
        path = resolve(cfg.data.root, ft.classifiers)
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
    tcfg = CoreTrainConfig(batch_size=ft.batch_size, lr=ft.lr, optimizer="sgd", momentum=ft.momentum,
                           weight_decay=ft.weight_decay, epochs=ft.epochs, max_steps=ft.max_steps,
                           log_every=ft.log_every, best_metric=None)
    workers = cfg.runtime.workers
    from zsk.core.trainer import batches_per_epoch

    def loader_fn(epoch: int, start_batch: int):
        return make_loader(dataset, ft.batch_size, epoch=epoch, seed=cfg.runtime.seed, workers=workers,
                           start_batch=start_batch)

    def step_fn(m: nn.Module, batch: Any, step: int) -> dict[str, Tensor]:
        images, target = batch
        logits = m(images=images)
        return {"loss": nn.functional.cross_entropy(logits.float(), target)}

    model.cnn.train()
    trainer = Trainer(ctx, model, tcfg, step_fn, loader_fn, batches_per_epoch(len(dataset), ft.batch_size),
                      eval_fn=None, extra={**extra, "finetuned": True}, stage="finetune")
    trainer.fit()
    return {"finetune_steps": trainer.step, "finetune_checkpoint": str(trainer.last_path)}


# ----------------------------------------------------------------------------- evaluation


def _testset(cfg: Config, data: GraphData) -> tuple[str, list[str], list[str] | None]:
    """(name, wnids, image folder names or None) of ``eval.testset``."""
    name = cfg.eval.testset
    if name == "awa2":
        wnids, folders = read_awa2_split(resolve(cfg.data.root, cfg.data.awa2_split))
        return name, wnids, folders
    path = resolve(cfg.data.root, cfg.data.testsets)
    sets = read_testsets(path)
    if name not in sets:
        raise ZskError(f"eval.testset {name!r} is not in {path}; choose one of {', '.join(sets)} or awa2")
    return name, sets[name], None


def extract_features(cnn: nn.Module, dataset: ImageList, cfg: Config, device: torch.device) -> tuple[Tensor, Tensor]:
    """Pooled CNN features of every image (this rank's shard) and their class indices."""
    loader = make_eval_loader(dataset, cfg.eval.batch_size, workers=cfg.runtime.workers)
    feats, labels = [], []
    cnn.eval()
    with torch.no_grad():
        for images, target in progress(loader, desc="features"):
            feats.append(cnn(images.to(device)).float().cpu())
            labels.append(target)
    if not feats:
        return torch.zeros(0, 1), torch.zeros(0, dtype=torch.long)
    return torch.cat(feats), torch.cat(labels)


def evaluate_classifiers(cfg: Config, data: GraphData, pred: Tensor, cnn: nn.Module | None,
                         device: torch.device) -> dict[str, Any]:
    """hit@k of the predicted classifiers on ``eval.testset`` (spec "Protocol"): ZSL candidates = the test
    set's classes, GZSL (``eval.generalized``) adds the seen classes; ties pessimistic; micro-averaged over
    images; ``eval.keep_ratio`` of each class's images. AwA2 adds the per-class mean top-1."""
    name, test_wnids, folders = _testset(cfg, data)
    index = data.index()
    missing_graph = [w for w in test_wnids if w not in index]
    if missing_graph:
        raise ZskError(f"test set {name}: wnid {missing_graph[0]} is missing from the graph {data.graph_file} "
                       f"({len(missing_graph)} missing)")
    test_idx = [index[w] for w in test_wnids]
    cand = candidate_indices(test_idx, data.seen_idx.tolist(), cfg.eval.generalized)
    if len(cand) == 0:
        raise ZskError(f"test set {name} holds only seen classes, which zero-shot evaluation masks out: "
                       f"use --generalized")
    cand_pos = {int(c): k for k, c in enumerate(cand)}
    # class position (in test_wnids) -> candidate position; a test class that is a seen class has none in ZSL
    class_to_cand = np.asarray([cand_pos.get(i, -1) for i in test_idx], dtype=np.int64)
    info = dist.get_dist()
    if cfg.eval.features:
        fpath = resolve(cfg.data.root, cfg.eval.features)
        lpath = resolve(cfg.data.root, cfg.eval.labels) if cfg.eval.labels else fpath.with_name(fpath.stem + "-labels.txt")
        feats_np, label_wnids = read_features(fpath, lpath)
        pos = {w: k for k, w in enumerate(test_wnids)}
        rows = np.asarray([i for i, w in enumerate(label_wnids) if w in pos], dtype=np.int64)
        labels_np = np.asarray([pos[label_wnids[i]] for i in rows], dtype=np.int64)
        feats_np = feats_np[rows]
        source = str(fpath)
    else:
        if cnn is None:
            raise ZskError("evaluation on images needs the CNN: set eval.features to precomputed features, or "
                           "model.pretrained to the CNN's weights")
        root = resolve(cfg.data.root, cfg.data.awa2_images if name == "awa2" else cfg.data.images)
        paths, labels, _ = list_images(root, test_wnids, folders)
        labels_np = np.asarray(labels, dtype=np.int64)
        feats_np = None
        source = str(root)
    present = np.unique(labels_np)
    missing = [test_wnids[i] for i in sorted(set(range(len(test_wnids))) - set(present.tolist()))]
    keep = keep_per_class(labels_np, cfg.eval.keep_ratio, cfg.runtime.seed)
    labels_np = labels_np[keep]
    if feats_np is not None:
        shard = np.arange(len(keep))[info.rank :: info.world_size]
        feats = torch.from_numpy(feats_np[keep][shard])
        labels_t = torch.from_numpy(labels_np[shard])
    else:
        dataset = ImageList([paths[i] for i in keep], labels_np.tolist(), eval_transform(cfg.data.resize, cfg.data.crop))
        feats, labels_t = extract_features(cnn, dataset, cfg, device)
    if missing:
        warn(f"test set {name}: {len(missing)} of {len(test_wnids)} classes have no images in {source} "
             f"(e.g. {missing[0]}); evaluating on the {len(present)} present")
    w = pred[torch.from_numpy(cand).to(pred.device)].float().cpu()
    if feats.numel() and feats.shape[1] not in (w.shape[1], w.shape[1] - 1):
        raise ZskError(f"features from {source} are {feats.shape[1]}-d but the classifiers are {w.shape[1]}-d "
                       f"(with bias: features + 1): use features of the CNN whose last layer was regressed")
    hits = HitAtK(cfg.eval.ks)
    cand_labels = torch.from_numpy(class_to_cand)[labels_t] if labels_t.numel() else labels_t
    valid = cand_labels >= 0
    top1, top1_labels = [], []
    for start in range(0, len(feats), 4096):
        f = append_bias_input(feats[start : start + 4096], w.shape[1])
        scores = f @ w.T
        lab = cand_labels[start : start + 4096]
        ok = valid[start : start + 4096]
        hits.update(scores[ok], lab[ok])
        top1.append(scores.argmax(1))
        top1_labels.append(lab)
    result: dict[str, Any] = hits.compute()
    if name == "awa2":
        pred_top = torch.cat(top1) if top1 else torch.zeros(0, dtype=torch.long)
        lab = torch.cat(top1_labels) if top1_labels else torch.zeros(0, dtype=torch.long)
        result["top1_per_class"] = per_class_top1(pred_top[lab >= 0], lab[lab >= 0], len(cand))
    images = dist.all_reduce_sum(valid.sum().double())
    if float(images) == 0 and labels_t.numel():
        raise ZskError(f"test set {name} holds only seen classes, which zero-shot evaluation masks out: "
                       f"use --generalized")
    result.update({"testset": name, "generalized": cfg.eval.generalized, "images": int(images),
                   "classes": int(len(present)), "candidates": int(len(cand)), "missing_classes": len(missing),
                   "keep_ratio": cfg.eval.keep_ratio})
    return result


def load_model(checkpoint: Path, sets: list[str] | None = None, recipe: Path | None = None,
               need_cnn: bool | None = None) -> tuple[Config, ZeroShotModel, GraphData, dict]:
    """Rebuild the graph, the network and (when its weights are saved or needed) the CNN from a checkpoint;
    ``need_cnn`` None: needed when the recipe evaluates images rather than ``eval.features``."""
    ckpt = load_checkpoint(checkpoint)
    if ckpt.get("task") not in (None, TASK):
        raise ZskError(f"{checkpoint} is a {ckpt.get('task')} checkpoint, not gzsl")
    cfg, _ = config_from_checkpoint(ckpt, Config, sets, recipe)
    if need_cnn is None:
        need_cnn = not cfg.eval.features
    data = load_graph_data(cfg)
    extra = ckpt.get("extra") or {}
    in_dim = int(extra.get("in_dim", data.vectors.shape[1]))
    out_dim = int(extra.get("out_dim", 0))
    if data.vectors.shape[1] != in_dim:
        raise ZskError(f"the graph {data.graph_file} has {data.vectors.shape[1]}-d word vectors but {checkpoint} was "
                       f"trained on {in_dim}-d ones (embedding dimension mismatch)")
    state = ckpt["model"]
    has_cnn = any(k.startswith("cnn.") for k in state)
    cnn = None
    if has_cnn:
        cnn, _ = build_cnn(cfg, pretrained=False)
    elif need_cnn:
        if cfg.model.pretrained is None:
            raise ZskError(f"{checkpoint} carries no CNN weights and model.pretrained is null: pass the CNN's weights "
                           f"with --set model.pretrained=/path/to/{cfg.model.cnn}.pth, or evaluate precomputed "
                           f"features (--set eval.features=FILE.npy)")
        cnn, _ = build_cnn(cfg)
    model = ZeroShotModel(build_gnn(cfg, in_dim, out_dim), cnn)
    load_model_state(model, state, () if has_cnn else ("cnn.",), source=str(checkpoint))
    return cfg, model, data, ckpt


def evaluate(checkpoint: Path, sets: list[str] | None = None, recipe: Path | None = None,
             device: str | None = None) -> dict[str, Any]:
    """``zsk gzsl eval``: hit@k of a checkpoint on the recipe's test set."""
    cfg, model, data, ckpt = load_model(checkpoint, sets, recipe)
    if cfg.eval.features and (ckpt.get("extra") or {}).get("finetuned"):
        warn(f"{checkpoint} has a fine-tuned CNN: eval.features must come from it (zsk gzsl features -c {checkpoint})")
    dev = resolve_device(device, cfg.runtime.device)
    model.to(dev).eval()
    pred = predicted_classifiers(model, data, cfg, ckpt.get("extra") or {}, dev)
    return evaluate_classifiers(cfg, data, pred, model.cnn, dev)


def export_features(checkpoint: Path, out: Path, sets: list[str] | None = None,
                    device: str | None = None) -> dict[str, Any]:
    """``zsk gzsl features``: pooled CNN features of every image of ``eval.testset``'s classes, written as
    ``<out>.npy`` (N x F) and ``<out>-labels.txt`` (one wnid per line), so later evaluations (any test set,
    ZSL or GZSL, any keep ratio) skip the CNN."""

    cfg, model, data, _ = load_model(checkpoint, sets, None, need_cnn=True)
    dev = resolve_device(device, cfg.runtime.device)
    assert model.cnn is not None
    cnn = model.cnn.to(dev).eval()
    name, wnids, folders = _testset(cfg, data)
    root = resolve(cfg.data.root, cfg.data.awa2_images if name == "awa2" else cfg.data.images)
    paths, labels, missing = list_images(root, wnids, folders)
    if not paths:
        raise ZskError(f"no images of test set {name} under {root}/<{'name' if folders else 'wnid'}>/")
    if missing:
        warn(f"test set {name}: {len(missing)} of {len(wnids)} classes have no images under {root} (e.g. {missing[0]})")
    loader = make_eval_loader(ImageList(paths, labels, eval_transform(cfg.data.resize, cfg.data.crop)),
                              cfg.eval.batch_size, workers=cfg.runtime.workers, sharded=False)
    feats = []
    with torch.no_grad():
        for images, _ in progress(loader, desc="features"):
            feats.append(cnn(images.to(dev)).float().cpu())
    out = Path(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    fpath, lpath = out.with_suffix(".npy"), out.with_name(out.stem + "-labels.txt")
    np.save(fpath, torch.cat(feats).numpy())
    lpath.write_text("".join(wnids[i] + "\n" for i in labels))
    return {"features": str(fpath), "labels": str(lpath), "images": len(paths), "feature_dim": int(feats[0].shape[1]),
            "testset": name, "classes": len(wnids) - len(missing), "missing_classes": len(missing)}


# ----------------------------------------------------------------------------- prediction


def _display_names(cfg: Config, wnids: Sequence[str]) -> dict[str, str]:
    names_path = resolve(cfg.data.root, cfg.data.names) if cfg.data.names else None
    if names_path is not None and names_path.is_file():
        table = read_names(names_path)
        return {w: (table.get(w) or [w])[0] for w in wnids}
    try:
        lemmas = wordnet_lemma_names(wnids, cfg.model.nltk_data)
        return {w: lem[0].replace("_", " ") for w, lem in zip(wnids, lemmas, strict=True)}
    except ZskError:
        return {w: w for w in wnids}


def read_candidates(path: Path, index: dict[str, int], graph_file: Path) -> list[str]:
    """A file of wnids (one per line) that must all be graph nodes."""
    try:
        wnids = [ln.split()[0] for ln in path.read_text(encoding="utf-8").splitlines() if ln.strip()]
    except FileNotFoundError:
        raise ZskError(f"candidates file not found: {path} (one wnid per line)") from None
    missing = [w for w in wnids if w not in index]
    if missing:
        raise ZskError(f"{path}: wnid {missing[0]} is missing from the graph {graph_file}")
    if not wnids:
        raise ZskError(f"{path} lists no wnid")
    return wnids


def predict(checkpoint: Path, inputs: Sequence[Path], candidates: Path | None = None, top_k: int = 5,
            sets: list[str] | None = None, device: str | None = None) -> list[dict[str, Any]]:
    """Classify images (or rows of ``.npy`` feature files) among the candidates (default: every graph node)."""
    if top_k < 1:
        raise ZskError("--top-k must be >= 1")
    needs_images = any(p.suffix.lower() != ".npy" for p in inputs)
    cfg, model, data, ckpt = load_model(checkpoint, sets, None, need_cnn=needs_images)
    dev = resolve_device(device, cfg.runtime.device)
    model.to(dev).eval()
    pred = predicted_classifiers(model, data, cfg, ckpt.get("extra") or {}, dev).float()
    index = data.index()
    cand = read_candidates(candidates, index, data.graph_file) if candidates else list(data.graph.wnids)
    w = pred[torch.tensor([index[c] for c in cand], device=dev)]
    names = _display_names(cfg, cand)
    transform = eval_transform(cfg.data.resize, cfg.data.crop) if needs_images else None
    results = []
    k = min(top_k, len(cand))
    for path in inputs:
        if path.suffix.lower() == ".npy":
            try:
                arr = np.load(path, allow_pickle=False)
            except (OSError, ValueError) as e:
                raise ZskError(f"cannot read features {path}: {e}") from None
            feats = torch.from_numpy(np.atleast_2d(arr).astype(np.float32)).to(dev)
            rows = [(f"{path}", i) for i in range(len(feats))]
        else:
            assert model.cnn is not None and transform is not None
            with torch.no_grad():
                feats = model.cnn(transform(read_rgb(path)).unsqueeze(0).to(dev)).float()
            rows = [(str(path), None)]
        if feats.ndim != 2 or feats.shape[1] not in (w.shape[1], w.shape[1] - 1):
            raise ZskError(f"{path}: features are {feats.shape[-1]}-d but the classifiers are {w.shape[1]}-d")
        scores = append_bias_input(feats, w.shape[1]) @ w.T
        top = scores.topk(k, dim=1)
        for (src, row), vals, idx in zip(rows, top.values.tolist(), top.indices.tolist(), strict=True):
            rec: dict[str, Any] = {"input": src}
            if row is not None:
                rec["row"] = row
            rec["top"] = [{"wnid": cand[j], "name": names[cand[j]], "score": v} for j, v in zip(idx, vals, strict=True)]
            results.append(rec)
    return results


# ----------------------------------------------------------------------------- info


def forward_flops(gnn: nn.Module, ops: DenseGraph | Tensor, num_nodes: int) -> float:
    """FLOPs of one full-graph forward: 2 N d_in d_out per linear layer plus 2 nnz d_out per sparse
    propagation (computed, not timed, so ``info`` stays instant on the 32K-node graph)."""
    linears = [m for m in gnn.modules() if isinstance(m, nn.Linear)]
    flops = sum(2.0 * num_nodes * m.in_features * m.out_features for m in linears)
    if isinstance(ops, DenseGraph):
        phases = (ops.descendants, ops.ancestors)
        flops += sum(2.0 * op._nnz() * lin.out_features for family, lin in zip(phases, linears, strict=True)
                     for op in family)
    else:
        flops += sum(2.0 * ops._nnz() * lin.out_features for lin in linears)
    return flops


GLOVE_DIM = 300  # GloVe 6B 300-d word vectors, the paper's input features


def info(cfg: Config) -> dict[str, Any]:
    """Graph size, edges per hop-distance group, parameters and FLOPs per epoch, test-set coverage.

    Without the dataset only the network is reported (parameters for GloVe-300 inputs and ResNet-50
    classifier targets, as the paper), with ``gflops`` per node; graph figures need the graph files.
    """
    missing = [f for f in (resolve(cfg.data.root, cfg.data.split), resolve(cfg.data.root, cfg.data.graph)) if not f.is_file()]
    if missing:
        out_dim = 2049 if cfg.model.target_bias else 2048
        gnn = build_gnn(cfg, GLOVE_DIM, out_dim)
        total, trainable = count_params(gnn)
        per_node = sum(2.0 * m.in_features * m.out_features for m in gnn.modules() if isinstance(m, nn.Linear))
        return {"model": cfg.model.name, "word_dim": GLOVE_DIM, "classifier_dim": out_dim,
                "params_total": total, "params_trainable": trainable, "gflops": per_node / 1e9,
                "gflops_unit": "per node, dense layers only (no graph data)",
                "data": f"not available: {', '.join(map(str, missing))} not found"}
    data = load_graph_data(cfg)
    n = data.graph.num_nodes
    merged = merge_groups(data.groups, cfg.model.max_distance)
    out_dim = None
    if cfg.data.fc_weights and resolve(cfg.data.root, cfg.data.fc_weights).is_file():
        out_dim = int(load_targets(cfg, data, None).shape[1])
    out_dim = out_dim or (2049 if cfg.model.target_bias else 2048)
    gnn = build_gnn(cfg, data.vectors.shape[1], out_dim)
    total, trainable = count_params(gnn)
    flops = forward_flops(gnn, build_operators(cfg, data), n)
    x = data.vectors
    res: dict[str, Any] = {
        "model": cfg.model.name, "nodes": n, "edges": int(len(data.graph.edges)), "word_dim": int(x.shape[1]),
        "classifier_dim": out_dim, "seen": len(data.seen), "unseen": len(data.unseen),
        "edges_per_distance": {str(d) if d < cfg.model.max_distance else f">={d}": int(len(g))
                               for d, g in enumerate(merged)},
        "params_total": total, "params_trainable": trainable, "gflops": flops / 1e9,
        "gflops_unit": "per full-graph forward (one epoch)",
    }
    tpath = resolve(cfg.data.root, cfg.data.testsets)
    if tpath.is_file():
        index = data.index()
        images_root = resolve(cfg.data.root, cfg.data.images)
        feature_labels: set[str] | None = None
        if cfg.eval.features:
            fpath = resolve(cfg.data.root, cfg.eval.features)
            lpath = resolve(cfg.data.root, cfg.eval.labels) if cfg.eval.labels else fpath.with_name(fpath.stem + "-labels.txt")
            if lpath.is_file():
                feature_labels = {ln.strip() for ln in lpath.read_text(encoding="utf-8").splitlines() if ln.strip()}
        sets = {}
        for name, wnids in read_testsets(tpath).items():
            entry: dict[str, Any] = {"classes": len(wnids), "missing_from_graph": sum(w not in index for w in wnids)}
            if feature_labels is not None:
                entry["missing_features"] = sum(w not in feature_labels for w in wnids)
            if images_root.is_dir():
                absent = [w for w in wnids if not (images_root / w).is_dir()]
                entry["missing_images"] = len(absent)
                if absent:
                    entry["missing_images_first"] = absent[:5]
            sets[name] = entry
        res["testsets"] = sets
    return res


# ----------------------------------------------------------------------------- demo and bench


def run_demo(workdir: Path, device: str) -> dict[str, Any]:
    """Write the sample, train ``recipes/gzsl/demo.yaml`` on it, evaluate unseen hit@k, predict one row."""
    from zsk.core.recipe import recipes_dir
    from zsk.core.run import start_run

    workdir = Path(workdir)
    root = workdir / "data"
    write_sample(root)
    sets = [f"data.root={root}"]
    ctx = start_run(TASK, Config, recipes_dir() / "gzsl" / "demo.yaml", sets, out=workdir / "run", device=device)
    train(ctx)
    result = evaluate(ctx.run_dir / "last.pt", device=device)
    sample = np.load(root / "features" / "test.npy")[:1]
    np.save(workdir / "one.npy", sample)
    top = predict(ctx.run_dir / "last.pt", [workdir / "one.npy"], top_k=3, device=device)
    log(f"demo prediction: {top[0]['top'][0]['wnid']} ({top[0]['top'][0]['name']})")
    return {"metric": "hit@1", "value": result["hit@1"], "hit@5": result["hit@5"]}


def synthetic_graph(num_nodes: int, seed: int = 0) -> tuple[np.ndarray, list[np.ndarray]]:
    """A random WordNet-like DAG (each node under an earlier one, 5% with a second parent) and its groups."""
    rng = np.random.default_rng(seed)
    children = np.arange(1, num_nodes)
    parents = (rng.random(num_nodes - 1) ** 2 * children).astype(np.int64)
    second = rng.random(num_nodes - 1) < 0.05
    extra = np.stack([children[second], (rng.random(int(second.sum())) * children[second]).astype(np.int64)], 1)
    edges = np.concatenate([np.stack([children, parents], 1), extra])
    edges = np.unique(edges[edges[:, 0] != edges[:, 1]], axis=0)
    return edges, ancestor_groups(num_nodes, edges)


def bench_spec(cfg: Config, device: torch.device, batch_size: int | None) -> BenchSpec:
    """Training epochs/s of the recipe's graph network on the recipe's graph (or a synthetic 32,295-node
    graph when its files are absent) and evaluation images/s (CNN features + hit@k over the unseen nodes)."""
    graph_file = resolve(cfg.data.root, cfg.data.graph)
    if graph_file.is_file() and resolve(cfg.data.root, cfg.data.split).is_file():
        data = load_graph_data(cfg)
        n, in_dim, seen = data.graph.num_nodes, data.vectors.shape[1], len(data.seen)
        edges, groups = data.graph.edges, data.groups
        x = torch.from_numpy(data.vectors)
        source = str(graph_file)
    else:
        n, in_dim, seen = IMAGENET_NODES, 300, 1000
        edges, groups = synthetic_graph(n, cfg.runtime.seed)
        x = torch.nn.functional.normalize(torch.randn(n, in_dim), dim=1)
        source = f"synthetic {n}-node DAG"
    feat_dim = 2048
    out_dim = feat_dim + 1 if cfg.model.target_bias else feat_dim
    gnn = build_gnn(cfg, in_dim, out_dim).to(device)
    if cfg.model.name == "dgp":
        ops: Any = DenseGraph.from_groups(merge_groups(groups, cfg.model.max_distance), n).to(device)
    else:
        ops = symmetric_adjacency(edges, n).to(device)
    x = x.to(device)
    targets = torch.nn.functional.normalize(torch.randn(seen, out_dim, device=device), dim=1)
    seen_idx = torch.arange(seen, device=device)
    optim = torch.optim.Adam(gnn.parameters(), lr=cfg.train.lr, weight_decay=cfg.train.weight_decay)
    loss_fn = LOSSES[cfg.train.loss]

    def train_step() -> None:
        optim.zero_grad(set_to_none=True)
        loss = loss_fn(gnn(x, ops)[seen_idx], targets)
        loss.backward()
        optim.step()

    with torch.no_grad():
        gnn.eval()
        cand = gnn(x, ops)[seen:].float()
        gnn.train()
    b = batch_size or cfg.eval.batch_size
    try:
        import torchvision  # noqa: F401 - probe only
    except (ImportError, RuntimeError) as e:  # a broken torchvision install: time the scoring alone
        warn(f"no CNN for the evaluation benchmark (torchvision: {e}); timing the scoring of 2048-d features only")
        cnn = None
        images = torch.randn(b, feat_dim, device=device)
    else:
        cnn, _ = build_cnn(cfg, pretrained=False)
        cnn = cnn.to(device).eval()
        images = torch.randn(b, 3, cfg.data.crop, cfg.data.crop, device=device)
        if device.type == "cuda":
            cnn = cnn.to(memory_format=torch.channels_last)
            images = images.contiguous(memory_format=torch.channels_last)
        with torch.no_grad():
            cnn_dim = cnn(images[:1]).shape[1]
        if cnn_dim + 1 != cand.shape[1] and cnn_dim != cand.shape[1]:
            cand = torch.nn.functional.normalize(torch.randn(n - seen, cnn_dim + 1, device=device), dim=1)
    labels = torch.randint(0, cand.shape[0], (b,), device=device)
    hits = HitAtK(cfg.eval.ks)

    def infer_step() -> None:
        with torch.no_grad():
            f = cnn(images).float() if cnn is not None else images
            scores = append_bias_input(f, cand.shape[1]) @ cand.T
            hits.update(scores, labels)

    def extra() -> dict[str, Any]:
        return {"graph": source, "nodes": n, "edges_per_distance": [int(len(g)) for g in
                                                                   merge_groups(groups, cfg.model.max_distance)],
                "candidates": int(cand.shape[0]), "cnn": cfg.model.cnn if cnn is not None else None}

    return BenchSpec(train_step=train_step, infer_step=infer_step, train_samples=1, infer_samples=b,
                     unit="epochs", infer_unit="images", extra=extra)


def read_stdin_paths() -> list[Path]:
    """Input paths from standard input, one per line ('-' on the command line)."""
    return [Path(ln.strip()) for ln in sys.stdin.read().splitlines() if ln.strip()]

