"""gzsl's hooks for ``info``, ``sample``, ``zsk demo`` and ``zsk bench``."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from zsk.core.bench import BenchSpec, count_params
from zsk.core.progress import log, warn
from zsk.core.stages import stage_config
from zsk.core.task import Loaded, run_demo
from zsk.data.graphs import ancestor_groups, merge_groups
from zsk.tasks.gzsl import train as stages
from zsk.tasks.gzsl.config import Config
from zsk.tasks.gzsl.data import (
    check_out_dir,
    load_graph_data,
    load_targets,
    read_testsets,
    resolve,
    write_sample,
)
from zsk.tasks.gzsl.losses import build_loss
from zsk.tasks.gzsl.metrics import HitAtK, append_bias_input
from zsk.tasks.gzsl.model import DenseGraph, ZeroShotModel

IMAGENET_NODES = 32_295  # wnids of ImageNet's structure_released.xml: the size of DGP's induced graph


# ----------------------------------------------------------------------------- info


def forward_flops(gnn: nn.Module, ops: DenseGraph | torch.Tensor, num_nodes: int) -> float:
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


def info(cfg: Config) -> dict[str, Any]:
    """Graph size, edges per hop-distance group, parameters and FLOPs per epoch, test-set coverage.

    Without the dataset only the network is reported (parameters for GloVe-300 inputs and ResNet-50
    classifier targets, as the paper), with ``gflops`` per node; graph figures need the graph files.
    """
    missing = [f for f in (resolve(cfg.data.root, cfg.data.split), resolve(cfg.data.root, cfg.data.graph)) if not f.is_file()]
    if missing:
        out_dim = stages.default_out_dim(cfg)
        gnn = stages.build_gnn(cfg, stages.GLOVE_DIM, out_dim)
        total, trainable = count_params(gnn)
        per_node = sum(2.0 * m.in_features * m.out_features for m in gnn.modules() if isinstance(m, nn.Linear))
        return {"model": cfg.model.name, "word_dim": stages.GLOVE_DIM, "classifier_dim": out_dim,
                "params_total": total, "params_trainable": trainable, "gflops": per_node / 1e9,
                "gflops_unit": "per node, dense layers only (no graph data)",
                "data": f"not available: {', '.join(map(str, missing))} not found"}
    data = load_graph_data(cfg)
    n = data.graph.num_nodes
    merged = merge_groups(data.groups, cfg.model.max_distance)
    out_dim = None
    if cfg.data.fc_weights and resolve(cfg.data.root, cfg.data.fc_weights).is_file():
        out_dim = int(load_targets(cfg, data, None).shape[1])
    out_dim = out_dim or stages.default_out_dim(cfg)
    gnn = stages.build_gnn(cfg, data.vectors.shape[1], out_dim)
    total, trainable = count_params(gnn)
    flops = forward_flops(gnn, stages.build_operators(cfg, data), n)
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


# ----------------------------------------------------------------------------- sample and demo


def sample(out: Path, seed: int = 0) -> dict[str, Any]:
    """Write a small synthetic hierarchy in DGP's file formats (the data of ``recipes/gzsl/demo.yaml``)."""
    check_out_dir(Path(out), "sample OUT_DIR")
    summary = write_sample(out, seed=seed)
    log(f"sample written to {out}: train with `zsk gzsl train --recipe gzsl/demo --set data.root={out}`")
    return summary


def sample_data(root: Path) -> dict[str, Any]:
    """The demo's data (``data.root: "@sample"``): the default sample hierarchy. Every file the demo recipe
    names (split, test sets, induced and dense graphs with their word vectors, fc weights, words.txt,
    precomputed features) is written under ``root``, where the recipe's relative paths point."""
    write_sample(root)
    return {"data.root": str(root)}


def demo(workdir: Path, device: str) -> dict[str, Any]:
    """Train ``gzsl/demo`` on the sample hierarchy, evaluate unseen hit@1 and predict one feature row."""
    workdir = Path(workdir)

    def inputs(loaded: Loaded, data: dict) -> list[Path]:
        one = workdir / "one.npy"
        np.save(one, np.load(Path(data["root"]) / "features" / "test.npy")[:1])
        return [one]

    return run_demo(_task(), workdir, device, "hit@1", inputs)


def _task() -> Any:
    from zsk.tasks.gzsl.cli import TASK

    return TASK


# ----------------------------------------------------------------------------- bench


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
    """The Trainer's ``propagate`` step (one full-graph epoch) on the recipe's graph (or a synthetic
    32,295-node graph when its files are absent), and evaluation images/s (CNN features + hit@k over the
    unseen nodes)."""
    graph_file = resolve(cfg.data.root, cfg.data.graph)
    if graph_file.is_file() and resolve(cfg.data.root, cfg.data.split).is_file():
        data = load_graph_data(cfg)
        n, in_dim, seen = data.graph.num_nodes, data.vectors.shape[1], len(data.seen)
        edges, groups = data.graph.edges, data.groups
        x = torch.from_numpy(data.vectors)
        source = str(graph_file)
    else:
        n, in_dim, seen = IMAGENET_NODES, stages.GLOVE_DIM, 1000
        edges, groups = synthetic_graph(n, cfg.runtime.seed)
        x = torch.nn.functional.normalize(torch.randn(n, in_dim), dim=1)
        source = f"synthetic {n}-node DAG"
    feat_dim = stages.RESNET50_FEATURES
    out_dim = stages.default_out_dim(cfg)
    model = ZeroShotModel(stages.build_gnn(cfg, in_dim, out_dim)).to(device)
    ops: Any = stages.operators_for(cfg, n, edges, groups).to(device)
    tcfg = stage_config(cfg.train, "propagate")
    batch = {"x": x.to(device), "seen": torch.arange(seen, device=device),
             "targets": torch.nn.functional.normalize(torch.randn(seen, out_dim, device=device), dim=1)}
    cand = model.classifiers(batch["x"], ops)[seen:].float()
    b = batch_size or cfg.eval.batch_size
    try:
        import torchvision  # noqa: F401 - probe only
    except (ImportError, RuntimeError) as e:  # a broken torchvision install: time the scoring alone
        warn(f"no CNN for the evaluation benchmark (torchvision: {e}); timing the scoring of 2048-d features only")
        cnn = None
        images = torch.randn(b, feat_dim, device=device)
    else:
        cnn, _ = stages.build_cnn(cfg, pretrained=False)
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

    return BenchSpec(model=model, step_fn=stages.make_propagate_step(ops, build_loss(tcfg.loss, n)), batch=batch,
                     train_cfg=tcfg, infer_step=infer_step, train_samples=1, infer_samples=b, unit="epochs",
                     infer_unit="images", extra=extra)
