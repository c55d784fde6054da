"""Zero-shot evaluation on ImageNet (DGP, Kampffmeyer et al. CVPR 2019; protocol of Frome et al. 2013):
hit@k of the predicted classifiers over a test set's images, ZSL or GZSL ("+1K") candidates, ties counted
against the model, micro-averaged over images; AwA2 adds the per-class mean top-1. Images are encoded by
the checkpoint's CNN, or read as precomputed features (``zsk gzsl features``)."""

from __future__ import annotations

import dataclasses
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import Tensor, nn

from zsk.core import dist
from zsk.core.checkpoint import load_model_state
from zsk.core.errors import ZskError
from zsk.core.io import atomic_open
from zsk.core.progress import progress, warn
from zsk.core.task import Loaded, loaded_model, read_trained
from zsk.core.trainer import make_eval_loader
from zsk.tasks.gzsl import train as stages
from zsk.tasks.gzsl.config import Config
from zsk.tasks.gzsl.data import (
    GraphData,
    ImageList,
    eval_transform,
    list_images,
    load_graph_data,
    read_awa2_split,
    read_awa2_train,
    read_features,
    read_testsets,
    resolve,
    snapshot_classifiers,
)
from zsk.tasks.gzsl.metrics import (
    HitAtK,
    append_bias_input,
    candidate_indices,
    keep_per_class,
    per_class_top1,
)
from zsk.tasks.gzsl.model import ZeroShotModel


def eval_source_available(cfg: Config) -> bool:
    """Whether training can report hit@k cheaply: a features file is configured and present."""
    return bool(cfg.eval.features) and resolve(cfg.data.root, cfg.eval.features).is_file()


def _testset(cfg: Config, data: GraphData) -> tuple[str, list[str], list[str] | None, Path]:
    """(name, wnids, image folder names or None, the file listing them) of ``eval.testset``."""
    name = cfg.eval.testset
    if name == "awa2":
        path = resolve(cfg.data.root, cfg.data.awa2_split)
        wnids, folders = read_awa2_split(path)
        return name, wnids, folders, path
    path = resolve(cfg.data.root, cfg.data.testsets)
    sets = read_testsets(path)
    if name not in sets:
        raise ZskError(f"eval.testset {name!r} is not in {path}; choose one of {', '.join(sets)} or awa2")
    if not sets[name]:
        raise ZskError(f"test set {name} of {path} lists no wnid")
    return name, sets[name], None, path


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
    name, test_wnids, folders, list_file = _testset(cfg, data)
    index = data.index()
    missing_graph = [w for w in test_wnids if w not in index]
    if missing_graph:
        raise ZskError(f"test set {name} of {list_file}: wnid {missing_graph[0]} is missing from the graph "
                       f"{data.graph_file} ({len(missing_graph)} missing): use a graph built with these classes")
    test_idx = [index[w] for w in test_wnids]
    seen_idx = data.seen_idx.tolist()
    if name == "awa2":  # evaluate_awa2.py: the seen classes are AwA2's 40 train classes, not the 1,000 of ImageNet
        awa_train = read_awa2_train(list_file)
        missing_train = [w for w in awa_train if w not in index]
        if missing_train:
            raise ZskError(f"AwA2 train wnid {missing_train[0]} of {list_file} is missing from the graph "
                           f"{data.graph_file} ({len(missing_train)} missing)")
        seen_idx = [index[w] for w in awa_train]
    cand = candidate_indices(test_idx, seen_idx, cfg.eval.generalized)
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
        width = pred.shape[1]
        if feats_np.shape[1] not in (width, width - 1):
            raise ZskError(f"features {fpath} are {feats_np.shape[1]}-d but the classifiers are {width}-d (with bias: "
                           f"features + 1): use features of the CNN whose last layer was regressed")
        pos = {w: k for k, w in enumerate(test_wnids)}
        rows = np.asarray([i for i, w in enumerate(label_wnids) if w in pos], dtype=np.int64)
        if len(rows) == 0:
            raise ZskError(f"no row of {fpath} is labelled with a class of test set {name} (labels {lpath}, e.g. "
                           f"{label_wnids[0]}; test classes from {list_file}, e.g. {test_wnids[0]})")
        labels_np = np.asarray([pos[label_wnids[i]] for i in rows], dtype=np.int64)
        feats_np = feats_np[rows]
        source = str(fpath)
    else:
        if cnn is None:
            raise ZskError("evaluation on images needs the CNN: set eval.features to precomputed features, or "
                           "model.pretrained to the CNN's weights")
        root = resolve(cfg.data.root, cfg.data.awa2_images if name == "awa2" else cfg.data.images)
        paths, labels, _ = list_images(root, test_wnids, folders)
        if not paths:
            raise ZskError(f"no images of test set {name} under {root}/<{'name' if folders else 'wnid'}>/ (set "
                           f"data.images, or evaluate precomputed features with --features)")
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


# ----------------------------------------------------------------------------- trained checkpoints


def load(checkpoint: Path, sets: list[str] | None = None, device: str | None = None,
         recipe: Path | None = None) -> Loaded:
    """The graph network of a checkpoint (and its CNN when the checkpoint carries one: fine-tuned, or
    random-init) in eval mode, with the graph it was trained on in ``parts["data"]``. A CNN that comes
    from ``model.pretrained`` is built only when images are encoded (:func:`image_encoder`)."""
    cfg, state = read_trained(stages.TASK, checkpoint, Config, sets, recipe)
    data = load_graph_data(cfg)
    extra = dict(state.get("extra") or {})
    in_dim = int(extra.get("in_dim", data.vectors.shape[1]))
    out_dim = int(extra.get("out_dim", 0))
    if data.vectors.shape[1] != in_dim:
        d = data.vectors.shape[1]
        source = (f"the word vectors {resolve(cfg.data.root, cfg.model.word_vectors)} (model.word_vectors) are {d}-d"
                  if cfg.model.word_vectors else f"the graph {data.graph_file} has {d}-d word vectors")
        raise ZskError(f"{source} but {checkpoint} was trained on {in_dim}-d ones (embedding dimension mismatch): "
                       f"use the vectors it was trained with")
    weights = state.get("model")
    if not isinstance(weights, dict) or not weights:
        raise ZskError(f"{checkpoint} holds no model weights: pass a run's best.pt or last.pt")
    has_cnn = any(k.startswith("cnn.") for k in weights)
    cnn = stages.build_cnn(cfg, pretrained=False)[0] if has_cnn else None
    model = ZeroShotModel(stages.build_gnn(cfg, in_dim, out_dim), cnn)
    load_model_state(model, weights, () if has_cnn else ("cnn.",), source=str(checkpoint))
    return loaded_model(model, cfg, state, checkpoint, device, {"data": data})


def image_encoder(loaded: Loaded) -> nn.Module:
    """The CNN that encodes images: the checkpoint's own, else ``model.pretrained``'s (built on first use)."""
    model: ZeroShotModel = loaded.model
    if model.cnn is None:
        cfg: Config = loaded.cfg
        if cfg.model.pretrained is None:
            raise ZskError(f"{loaded.checkpoint} carries no CNN weights and model.pretrained is null: pass the CNN's "
                           f"weights with --set model.pretrained=/path/to/{cfg.model.cnn}.pth, or evaluate precomputed "
                           f"features (--set eval.features=FILE.npy)")
        model.cnn = stages.build_cnn(cfg)[0].to(loaded.device).eval()
    return model.cnn


def predicted_classifiers(loaded: Loaded) -> Tensor:
    """Every node's classifier: the graph network's prediction, or the snapshot that stage two was
    trained under when stage one was skipped."""
    data: GraphData = loaded.parts["data"]
    if loaded.extra.get("classifiers_file"):
        return snapshot_classifiers(Path(loaded.extra["classifiers_file"]), data).to(loaded.device)
    x = torch.from_numpy(data.vectors).to(loaded.device)
    return loaded.model.classifiers(x, stages.build_operators(loaded.cfg, data).to(loaded.device))


def with_eval_options(cfg: Config, testset: str | None = None, generalized: bool = False,
                      keep_ratio: float | None = None, features: Path | None = None,
                      labels: Path | None = None) -> Config:
    """``cfg`` with the command-line evaluation options on top of the recipe's ``eval`` section."""
    e = cfg.eval
    if testset is not None:
        e = dataclasses.replace(e, testset=testset)
    if generalized:
        e = dataclasses.replace(e, generalized=True)
    if keep_ratio is not None:
        if not 0.0 < keep_ratio <= 1.0:
            raise ZskError(f"--keep-ratio must be in (0, 1], got {keep_ratio}")
        e = dataclasses.replace(e, keep_ratio=keep_ratio)
    if features is not None:
        e = dataclasses.replace(e, features=str(Path(features).resolve()),
                                labels=str(Path(labels).resolve()) if labels is not None else None)
    elif labels is not None:
        raise ZskError("--labels goes with --features (the wnids of its rows)")
    return dataclasses.replace(cfg, eval=e)


def evaluate(loaded: Loaded, split: str | None = None, out: Path | None = None, *, testset: str | None = None,
             generalized: bool = False, keep_ratio: float | None = None, features: Path | None = None,
             labels: Path | None = None) -> dict[str, Any]:
    """hit@k of a checkpoint on a test set (``testset``, or ``split``, default the recipe's
    ``eval.testset``); ``generalized``: GZSL candidates; ``keep_ratio``: that fraction of each class's
    images; ``features``/``labels``: precomputed image features instead of the CNN. Writes nothing."""
    if split is not None and testset is not None and split != testset:
        raise ZskError(f"--split {split} and --testset {testset} disagree: give one of them")
    cfg = with_eval_options(loaded.cfg, testset or split, generalized, keep_ratio, features, labels)
    if cfg.eval.features and loaded.extra.get("finetuned"):
        warn(f"{loaded.checkpoint} has a fine-tuned CNN: eval.features must come from it "
             f"(zsk gzsl features -c {loaded.checkpoint})")
    cnn = loaded.model.cnn if cfg.eval.features else image_encoder(loaded)
    return evaluate_classifiers(cfg, loaded.parts["data"], predicted_classifiers(loaded), cnn, loaded.device)


def check_out_stem(out: Path) -> None:
    """``--out STEM`` of ``zsk gzsl features``: its folder must be a folder (or not exist yet) and the
    stem must not be a folder."""
    for parent in (out.parent, *out.parent.parents):
        if parent.exists():
            if not parent.is_dir():
                raise ZskError(f"--out {out}: {parent} is a file, not a folder")
            break
    if out.with_suffix(".npy").is_dir():
        raise ZskError(f"--out {out}: {out.with_suffix('.npy')} is a folder; give a file stem (writes STEM.npy and "
                       f"STEM-labels.txt)")


def export_features(loaded: Loaded, out: Path, testset: str | None = None) -> dict[str, Any]:
    """``zsk gzsl features``: pooled CNN features of every image of the test set's classes, written as
    ``<out>.npy`` (N x F) and ``<out>-labels.txt`` (one wnid per line), so later evaluations (any test set,
    ZSL or GZSL, any keep ratio) skip the CNN."""
    cfg = with_eval_options(loaded.cfg, testset)
    check_out_stem(Path(out))
    cnn = image_encoder(loaded).eval()
    name, wnids, folders, _ = _testset(cfg, loaded.parts["data"])
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
            feats.append(cnn(images.to(loaded.device)).float().cpu())
    out = Path(out)
    fpath, lpath = out.with_suffix(".npy"), out.with_name(out.stem + "-labels.txt")
    try:
        with atomic_open(fpath) as f:
            np.save(f, torch.cat(feats).numpy())
        with atomic_open(lpath, "w") as f:
            f.write("".join(wnids[i] + "\n" for i in labels))
    except OSError as e:
        raise ZskError(f"cannot write features to {fpath}: {e.strerror or e} (--out is a file stem in a writable "
                       f"folder)") from None
    return {"features": str(fpath), "labels": str(lpath), "images": len(paths), "feature_dim": int(feats[0].shape[1]),
            "testset": name, "classes": len(wnids) - len(missing), "missing_classes": len(missing)}
