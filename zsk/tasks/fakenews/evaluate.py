"""fakenews evaluation: the paper's metrics (accuracy and weighted precision / recall / F1 on the
CONSTRAINT 2021 test file; Chen et al., CONSTRAINT@AAAI 2021, Tables 1-2), batched inference over
tokenised corpora, and loading a checkpoint that carries its own tokenizers and encoder configs."""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch
from torch import Tensor, nn
from torch.utils.data import Dataset

from zsk.core.checkpoint import load_model_state
from zsk.core.device import autocast, autocast_dtype
from zsk.core.errors import ZskError
from zsk.core.progress import progress
from zsk.core.recipe import config_to_dict, parse_config
from zsk.core.task import Loaded, loaded_model, read_trained
from zsk.core.trainer import make_eval_loader, move_to
from zsk.metrics.classification import accuracy, precision_recall_f1
from zsk.metrics.confusion import ConfusionMatrix
from zsk.tasks.fakenews.config import BranchConfig, Config, ModelConfig
from zsk.tasks.fakenews.data import FeatureSet, TokenizedTexts, load_split, tokenize_corpus
from zsk.tasks.fakenews.model import (
    Branch,
    FakeNewsClassifier,
    TransformerBranch,
    _settings_quiet_transformers,
    check_positions,
    config_from_dict,
    encoder_from_config,
)
from zsk.tasks.fakenews.tokenization import tokenizer_from_files

TASK = "fakenews"


def classification_metrics(cm: ConfusionMatrix) -> dict[str, Any]:
    """The paper's metrics (spec: Metric): accuracy and weighted P/R/F1, plus macro F1 and the matrix."""
    p_w, r_w, f1_w = precision_recall_f1(cm.matrix, "weighted")
    _, _, f1_m = precision_recall_f1(cm.matrix, "macro")
    return {"accuracy": accuracy(cm.matrix), "f1_weighted": f1_w, "precision_weighted": p_w, "recall_weighted": r_w,
            "f1_macro": f1_m, "confusion": cm.matrix.tolist()}


@torch.no_grad()
def infer(logits_fn: Callable[[dict], Tensor], dataset: Dataset, batch_size: int, device: torch.device,
          amp: torch.dtype | None, sharded: bool = True, desc: str = "eval") -> tuple[Tensor, Tensor]:
    """(indices, logits) over `dataset` (this rank's share when `sharded`), in dataset order."""
    collate = dataset.collate  # type: ignore[attr-defined]
    loader = make_eval_loader(dataset, batch_size, collate_fn=collate, sharded=sharded)
    idx, out = [], []
    for batch in progress(loader, desc=desc):
        batch = move_to(batch, device)
        with autocast(device, amp):
            logits = logits_fn(batch)
        idx.append(batch["index"].cpu())
        out.append(logits.float().cpu())
    if not idx:
        return torch.zeros(0, dtype=torch.long), torch.zeros(0, 0)
    return torch.cat(idx), torch.cat(out)


def metrics_on(logits_fn: Callable[[dict], Tensor], dataset: TokenizedTexts, num_classes: int, batch_size: int,
               device: torch.device, amp: torch.dtype | None) -> tuple[dict[str, Any], Tensor, Tensor]:
    """Metrics over all ranks, plus this rank's (indices, predictions)."""
    idx, logits = infer(logits_fn, dataset, batch_size, device, amp)
    preds = logits.argmax(-1) if logits.numel() else torch.zeros(0, dtype=torch.long)
    cm = ConfusionMatrix(num_classes, device=device)
    if dataset.labels is None:
        raise ZskError("the evaluation split has no labels")
    cm.update(preds.to(device), dataset.labels[idx].to(device))
    cm.reduce()
    return classification_metrics(cm), idx, preds


def metrics_on_features(model: nn.Module, dataset: FeatureSet, num_classes: int, batch_size: int,
                        device: torch.device) -> tuple[dict[str, Any], Tensor, Tensor]:
    """Metrics of the fusion head on precomputed features (all ranks)."""
    loader = make_eval_loader(dataset, batch_size, collate_fn=dataset.collate)
    cm = ConfusionMatrix(num_classes, device=device)
    for batch in loader:
        batch = move_to(batch, device)
        cm.update(model(fused=batch["fused"]).argmax(-1), batch["label"])
    cm.reduce()
    return classification_metrics(cm), torch.zeros(0), torch.zeros(0)


def model_from_checkpoint(ckpt: dict, cfg: Config, source: str = "checkpoint") -> tuple[FakeNewsClassifier, dict[str, Branch], list[str]]:
    """Rebuild the classifier and tokenizers from a checkpoint alone (no hub, no data)."""
    extra = ckpt.get("extra") or {}
    if "branches" not in extra or "classes" not in extra:
        raise ZskError(f"{source} is not a fakenews checkpoint (no branches/classes); pass one written by "
                       f"`zsk fakenews train`")
    classes = list(extra["classes"])
    branches: dict[str, Branch] = {}
    for name, info in extra["branches"].items():
        bcfg = cfg.model.branches.get(name, BranchConfig())
        encoder = encoder_from_config(config_from_dict(json.loads(info["encoder_config"])))
        check_positions(name, encoder, cfg.data.max_length)
        tokenizer = tokenizer_from_files(info["tokenizer_files"], source)
        # checkpoints written before issue 11 hold linear heads and no "head" key
        module = TransformerBranch(encoder, len(classes), bcfg.dropout, bcfg.pooling, info.get("head", "linear"))
        branches[name] = Branch(name, module, tokenizer, list(info.get("added_tokens", [])), info.get("source", ""))
    model = FakeNewsClassifier({n: b.module for n, b in branches.items()}, len(classes), extra.get("fusion", "features"),
                               cfg.model.fusion_hidden, cfg.model.fusion_dropout, cfg.model.fusion_standardize)
    state = ckpt["model"]
    if any(k.startswith("branches.") for k in state):
        load_model_state(model, state, source=source)
    elif len(branches) == 1:  # a branch-stage checkpoint: the single branch's own weights
        load_model_state(model.branches[next(iter(branches))], state, source=source)
    else:
        raise ZskError(f"{source} is a single-branch stage checkpoint of a fused model; evaluate the run's best.pt")
    return model, branches, classes


def _differences(a: Any, b: Any, key: str) -> list[tuple[str, Any, Any]]:
    """Dotted keys where two nested config dicts differ, with both values."""
    if isinstance(a, dict) and isinstance(b, dict):
        out = []
        for k in list(a) + [k for k in b if k not in a]:
            out += _differences(a.get(k), b.get(k), f"{key}.{k}")
        return out
    return [] if a == b else [(key, a, b)]


def check_same_model(ckpt: dict, cfg: Config, source: str) -> None:
    """Refuse a ``--set``/``--recipe`` that changes the model a checkpoint holds: eval and predict
    rebuild the encoders, tokenizers and classes from the checkpoint, so a changed ``model.*`` key
    (dropout rates aside, which do nothing in eval mode) or ``data.classes`` would be silently
    ignored or would not fit the weights."""
    extra = ckpt.get("extra") or {}
    stored = (ckpt.get("recipe") or {}).get("model")
    if isinstance(stored, dict):
        trained = config_to_dict(parse_config(ModelConfig, stored, prefix="model"))
        for key, was, now in _differences(trained, config_to_dict(cfg.model), "model"):
            if not key.endswith("dropout"):
                raise ZskError(f"{key} is {now!r} here but {source} was trained with {was!r}; eval and predict use "
                               f"the model the checkpoint holds: drop the --set/--recipe that changes it")
    classes = [str(c) for c in extra.get("classes") or []]
    if cfg.data.classes and classes and [c.strip().lower() for c in cfg.data.classes] != [c.lower() for c in classes]:
        raise ZskError(f"data.classes is {list(cfg.data.classes)} here but {source} was trained on {classes}; "
                       f"drop the --set data.classes (the checkpoint's classes are used)")


def load(checkpoint: Path, sets: list[str] | None = None, device: str | None = None,
         recipe: Path | None = None) -> Loaded:
    """A trained classifier in eval mode, rebuilt from the checkpoint alone (encoder configs and
    tokenizers travel in it); ``parts`` holds ``branches`` (tokenizers) and ``classes``."""
    _settings_quiet_transformers()
    cfg, ckpt = read_trained(TASK, checkpoint, Config, sets, recipe)
    if "branches" in (ckpt.get("extra") or {}):
        check_same_model(ckpt, cfg, str(checkpoint))
    model, branches, classes = model_from_checkpoint(ckpt, cfg, str(checkpoint))
    return loaded_model(model, cfg, ckpt, checkpoint, device, {"branches": branches, "classes": classes})


def evaluate(loaded: Loaded, split: str | None = None, out: Path | None = None) -> dict[str, Any]:
    """Metrics of a checkpoint on a labelled split (default: eval.split, the test file): accuracy,
    weighted precision / recall / F1, macro F1 and the confusion matrix. Writes nothing."""
    cfg: Config = loaded.cfg
    classes: list[str] = loaded.parts["classes"]
    split = split or cfg.eval.split
    corpus = load_split(cfg.data, split, classes=classes)
    ds = tokenize_corpus(loaded.parts["branches"], corpus.clean, corpus.labels, cfg)
    amp = autocast_dtype(loaded.device, cfg.runtime.precision)
    model = loaded.model
    metrics, _, _ = metrics_on(lambda b: model(inputs=b["inputs"]), ds, len(classes), cfg.eval.batch_size,
                               loaded.device, amp)
    return {"split": split, "samples": len(corpus), **metrics}
