"""fakenews: train (branches, then fusion), evaluate, predict, info, demo and bench hooks.

Training follows the paper (spec: Method / Training): every branch is fine-tuned with the
heated-up softmax loss, FGM on its word embeddings and (optionally) vocabulary expansion and
hard-example augmentation; with two or more branches the branches are then frozen and the fusion
MLP is trained on their concatenated [CLS] features (Ro-CT-BERT). Each part is one Trainer stage
(`branch-<name>`, `fusion`), so `--resume` skips finished stages.
"""

from __future__ import annotations

import dataclasses
import json
import random
import sys
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torch.utils.data import Dataset

from zsk.core import dist
from zsk.core.bench import BenchSpec, count_flops, count_params
from zsk.core.checkpoint import load_checkpoint, load_model_state
from zsk.core.device import autocast, autocast_dtype
from zsk.core.errors import ZskError
from zsk.core.progress import log, progress, warn
from zsk.core.run import RunContext, config_from_checkpoint, start_run
from zsk.core.trainer import (
    Trainer,
    batches_per_epoch,
    epoch_batches,
    export_checkpoint,
    make_eval_loader,
    make_loader,
    move_to,
)
from zsk.data.tables import decode_text, read_table, select_texts, table_format
from zsk.metrics.classification import accuracy, precision_recall_f1
from zsk.metrics.confusion import ConfusionMatrix
from zsk.tasks.fakenews.adversarial import fgm_loss
from zsk.tasks.fakenews.augment import hard_examples, load_synonyms
from zsk.tasks.fakenews.config import PAPER_NEW_TOKENS, BranchConfig, Config, EncoderConfig
from zsk.tasks.fakenews.data import (
    Corpus,
    TokenizedTexts,
    encode_cached,
    encode_texts,
    load_split,
    split_path,
)
from zsk.tasks.fakenews.losses import heated_alpha, heated_softmax_cross_entropy
from zsk.tasks.fakenews.model import (
    FakeNewsClassifier,
    TransformerBranch,
    architecture_config,
    config_from_dict,
    config_to_json,
    encoder_from_config,
    load_pretrained_encoder,
    random_encoder_config,
)
from zsk.tasks.fakenews.preprocess import clean_texts
from zsk.tasks.fakenews.tokenization import (
    build_wordpiece_tokenizer,
    load_tokenizer,
    tokenizer_files,
    tokenizer_fingerprint,
    tokenizer_from_files,
)
from zsk.tasks.fakenews.vocab import expand_vocabulary, frequent_multipiece_terms

TASK = "fakenews"


# ----------------------------------------------------------------------------- building the model


@dataclass
class Branch:
    """A branch with its tokenizer and where it came from."""

    name: str
    module: TransformerBranch
    tokenizer: Any
    added_tokens: list[str]
    source: str


def _check_positions(name: str, encoder: nn.Module, max_length: int) -> None:
    config = encoder.config
    limit = int(config.max_position_embeddings) - (2 if config.model_type in ("roberta", "xlm-roberta") else 0)
    if max_length > limit:
        raise ZskError(f"data.max_length={max_length} exceeds what branch {name!r} can encode ({limit} positions); "
                       f"lower data.max_length or raise model.branches.{name}.encoder.max_position_embeddings")


def new_tokens_for(bcfg: BranchConfig, tokenizer, corpus_texts: list[str] | None, name: str) -> list[str]:
    """The tokens a branch adds: the paper's six, an explicit list, or the top-N frequent multi-piece terms."""
    if bcfg.new_tokens == "none":
        return []
    if bcfg.new_tokens == "paper":
        return list(PAPER_NEW_TOKENS)
    if bcfg.new_tokens == "list":
        if not bcfg.new_tokens_list:
            raise ZskError(f"model.branches.{name}.new_tokens is 'list' but new_tokens_list is empty")
        return list(bcfg.new_tokens_list)
    if corpus_texts is None:
        raise ZskError(f"model.branches.{name}.new_tokens 'frequent' needs the training corpus (data.root)")
    return frequent_multipiece_terms(tokenizer, corpus_texts, bcfg.new_tokens_n, bcfg.new_tokens_min_count)


def build_branch(name: str, bcfg: BranchConfig, cfg: Config, num_classes: int,
                 corpus_texts: list[str] | None, vocab_texts: list[str] | None = None) -> Branch:
    """Tokenizer + encoder (pretrained or random) + vocabulary expansion + classifier for one branch.

    `corpus_texts` (cleaned training texts) train a `build` tokenizer; `vocab_texts` (train, or
    train + val) are counted for `new_tokens: frequent`.
    """
    option = f"model.branches.{name}"
    tok_source = bcfg.tokenizer.source or bcfg.pretrained or "build"
    if tok_source == "build":
        if corpus_texts is None:
            raise ZskError(f"{option}.tokenizer: building a tokenizer needs the training corpus (data.root)")
        tokenizer = build_wordpiece_tokenizer(corpus_texts, bcfg.tokenizer.build_vocab_size, bcfg.tokenizer.build_lowercase)
    else:
        key = f"{option}.tokenizer.source" if bcfg.tokenizer.source else f"{option}.pretrained"
        tokenizer = load_tokenizer(tok_source, option=key)
    if bcfg.pretrained:
        if bcfg.encoder != EncoderConfig():
            warn(f"{option}.encoder is ignored: the architecture comes from {bcfg.pretrained}")
        encoder = load_pretrained_encoder(bcfg.pretrained, option=f"{option}.pretrained")
        rows = encoder.get_input_embeddings().num_embeddings
        if len(tokenizer) > rows:
            raise ZskError(f"{option}: the tokenizer has {len(tokenizer)} tokens but the encoder {bcfg.pretrained} has "
                           f"{rows} embedding rows; use the model's own tokenizer")
        source = bcfg.pretrained
    else:
        encoder = encoder_from_config(random_encoder_config(bcfg.encoder, len(tokenizer), tokenizer.pad_token_id))
        source = "random-init"
    _check_positions(name, encoder, cfg.data.max_length)
    tokens = new_tokens_for(bcfg, tokenizer, vocab_texts if vocab_texts is not None else corpus_texts, name)
    std = float(getattr(encoder.config, "initializer_range", 0.02))
    added = expand_vocabulary(tokenizer, encoder, tokens, init=bcfg.new_tokens_init, std=std)
    module = TransformerBranch(encoder, num_classes, bcfg.dropout, bcfg.pooling)
    return Branch(name, module, tokenizer, added, source)


def assemble(cfg: Config, branches: dict[str, Branch], num_classes: int) -> FakeNewsClassifier:
    """The full classifier over the built branches."""
    return FakeNewsClassifier({n: b.module for n, b in branches.items()}, num_classes, cfg.model.fusion,
                              cfg.model.fusion_hidden, cfg.model.fusion_dropout, cfg.model.fusion_standardize)


def model_extra(branches: dict[str, Branch], classes: list[str], cfg: Config) -> dict:
    """What a checkpoint needs besides weights to predict on its own: classes, encoder configs,
    tokenizers (as file texts) and the added tokens."""
    return {
        "classes": list(classes),
        "fusion": cfg.model.fusion,
        "branches": {
            n: {"encoder_config": config_to_json(b.module.encoder.config), "tokenizer_files": tokenizer_files(b.tokenizer),
                "added_tokens": list(b.added_tokens), "source": b.source}
            for n, b in branches.items()
        },
    }


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
        tokenizer = tokenizer_from_files(info["tokenizer_files"], source)
        module = TransformerBranch(encoder, len(classes), bcfg.dropout, bcfg.pooling)
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


# ----------------------------------------------------------------------------- data


def tokenize_corpus(branches: dict[str, Branch], texts: list[str], labels: list[int] | None, cfg: Config) -> TokenizedTexts:
    """Tokenise cleaned texts for every branch (through the zsk cache when data.cache is on)."""
    encodings = {
        n: encode_cached(b.tokenizer, texts, cfg.data.max_length, tokenizer_fingerprint(b.tokenizer), cfg.data.cache)
        for n, b in branches.items()
    }
    pads = {n: int(b.tokenizer.pad_token_id or 0) for n, b in branches.items()}
    return TokenizedTexts(encodings, labels, pads)


def concat_datasets(a: TokenizedTexts, b: TokenizedTexts) -> TokenizedTexts:
    """One dataset holding the samples of `a` then `b` (padding widened as needed)."""
    encodings = {}
    for n in a.encodings:
        x, y = a.encodings[n], b.encodings[n]
        width = max(x["input_ids"].shape[1], y["input_ids"].shape[1])
        pad = a.pad_ids[n]

        def widen(t: Tensor, width: int = width, pad: int = pad) -> Tensor:
            return F.pad(t, (0, width - t.shape[1]), value=pad)

        encodings[n] = {"input_ids": torch.cat([widen(x["input_ids"]), widen(y["input_ids"])]),
                        "lengths": torch.cat([x["lengths"], y["lengths"]])}
    labels = torch.cat([a.labels, b.labels]).tolist() if a.labels is not None and b.labels is not None else None
    return TokenizedTexts(encodings, labels, a.pad_ids)


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


# ----------------------------------------------------------------------------- training


def param_groups(module: nn.Module, weight_decay: float) -> list[dict]:
    """AdamW groups: weight decay on weight matrices, none on biases and norm weights (spec: Open points)."""
    decay, no_decay = [], []
    for n, p in module.named_parameters():
        if not p.requires_grad:
            continue
        lowered = n.lower()
        if p.ndim < 2 or n.endswith("bias") or "norm" in lowered:
            no_decay.append(p)
        else:
            decay.append(p)
    return [{"params": decay, "weight_decay": weight_decay}, {"params": no_decay, "weight_decay": 0.0}]


def with_warmup(tcfg, steps_per_epoch: int):
    """`train` config with warmup_steps = warmup_fraction x total optimizer steps (spec: warm-up ratio 0.1)."""
    optim_per_epoch = max(1, steps_per_epoch // tcfg.grad_accum)
    total = tcfg.steps if tcfg.steps is not None else (tcfg.epochs or 0) * optim_per_epoch
    warmup = tcfg.warmup_steps or int(round(tcfg.warmup_fraction * total))
    return dataclasses.replace(tcfg, warmup_steps=warmup), optim_per_epoch


class HardExamplePool:
    """Perturbed misclassified samples kept across evaluation rounds (stored in the trainer's `extra`
    so that `--resume` continues with the same pool)."""

    def __init__(self, sources: list[tuple[TokenizedTexts, list[str]]], branches: dict[str, Branch],
                 cfg: Config, stage: str) -> None:
        self.store: dict = {}  # set to the trainer's `extra` (restored by --resume before the first use)
        self.sources = sources
        self.branches = branches
        self.cfg = cfg
        self.stage = stage
        hcfg = cfg.train.hard_examples
        self.synonyms = load_synonyms(hcfg.synonyms) if hcfg.synonyms else None
        self._cached: tuple[int, TokenizedTexts | None] = (-1, None)

    @property
    def data(self) -> dict:
        return self.store.setdefault("hard_examples", {"texts": [], "labels": [], "rounds": 0})

    def grow(self, logits_fn: Callable[[dict], Tensor], device: torch.device, amp: torch.dtype | None) -> int:
        """One round: predict the pool sources, perturb the misclassified samples, append them."""
        hcfg = self.cfg.train.hard_examples
        rng = random.Random(f"{self.cfg.runtime.seed}-{self.stage}-{self.data['rounds']}")
        new_texts: list[str] = []
        new_labels: list[int] = []
        for dataset, texts in self.sources:
            idx, logits = infer(logits_fn, dataset, self.cfg.eval.batch_size, device, amp, desc="hard examples")
            pairs = sorted(p for rank in dist.all_gather_object(list(zip(idx.tolist(), logits.argmax(-1).tolist(), strict=True)))
                           for p in rank)
            order = [i for i, _ in pairs]
            preds = [p for _, p in pairs]
            labels = dataset.labels[order].tolist()
            t, y = hard_examples([texts[i] for i in order], labels, preds, rng, self.synonyms, hcfg.max_edits)
            new_texts += t
            new_labels += y
        room = max(0, hcfg.max_pool - len(self.data["texts"]))
        self.data["texts"] += new_texts[:room]
        self.data["labels"] += new_labels[:room]
        self.data["rounds"] += 1
        return len(self.data["texts"])

    def dataset(self, base: TokenizedTexts) -> TokenizedTexts:
        """The training set with the current pool appended (re-tokenised only when it changed)."""
        n = len(self.data["texts"])
        if n == 0:
            return base
        if self._cached[0] != n:
            encodings = {name: encode_texts(b.tokenizer, self.data["texts"], self.cfg.data.max_length)
                         for name, b in self.branches.items()}
            extra = TokenizedTexts(encodings, list(self.data["labels"]), base.pad_ids)
            self._cached = (n, concat_datasets(base, extra))
        return self._cached[1]  # type: ignore[return-value]


def _loader_fn(ctx: RunContext, batch_size: int, steps_per_epoch: int,
               dataset_fn: Callable[[], Dataset]) -> Callable[[int, int], Iterable]:
    """Exactly `steps_per_epoch` batches per epoch from the current dataset, order fixed by (seed, epoch)."""
    cfg: Config = ctx.cfg

    def loader_fn(epoch: int, start_batch: int) -> Iterable:
        ds = dataset_fn()
        batches = epoch_batches(len(ds), batch_size, epoch=epoch, seed=cfg.runtime.seed)[:steps_per_epoch]
        return make_loader(ds, batch_size, epoch=epoch, seed=cfg.runtime.seed, collate_fn=ds.collate,  # type: ignore[attr-defined]
                           start_batch=start_batch, batch_sampler=batches, workers=cfg.runtime.workers)

    return loader_fn


def train_branch_stage(ctx: RunContext, module: nn.Module, name: str, embedding_fn: Callable[[nn.Module], nn.Embedding],
                       logits_fn: Callable[[nn.Module, dict], Tensor], train_ds: TokenizedTexts, val_ds: TokenizedTexts,
                       branches: dict[str, Branch], corpora: dict[str, Corpus], extra: dict, stage: str,
                       num_classes: int) -> dict[str, Any]:
    """Fine-tune one branch (or the single-branch model) with heated-up softmax, FGM and optional
    hard-example augmentation."""
    cfg: Config = ctx.cfg
    tcfg = cfg.train
    steps_per_epoch = batches_per_epoch(len(train_ds), tcfg.batch_size)
    stage_cfg, optim_per_epoch = with_warmup(tcfg, steps_per_epoch)
    heated, fgm = tcfg.heated_softmax, tcfg.fgm
    if heated.enabled:
        heated_alpha(0, heated.alphas, heated.milestones)  # validate the schedule before training
    amp = autocast_dtype(ctx.device, cfg.runtime.precision)

    def step_fn(model: nn.Module, batch: dict, step: int) -> dict[str, Tensor]:
        alpha = heated_alpha(step // optim_per_epoch, heated.alphas, heated.milestones) if heated.enabled else 1.0
        y = batch["label"]

        def loss_fn(m: nn.Module) -> Tensor:
            return heated_softmax_cross_entropy(logits_fn(m, batch), y, alpha)

        out = {"alpha": torch.tensor(alpha)}
        if fgm.enabled:
            total, clean, adv = fgm_loss(model, embedding_fn(dist.unwrap(model)), loss_fn, fgm.epsilon)
            out.update(loss=total, clean=clean, adversarial=adv)
        else:
            out["loss"] = loss_fn(model)
        return out

    pool = None
    if tcfg.hard_examples.enabled:
        sources = [(train_ds, corpora["train"].clean)]
        if tcfg.hard_examples.source == "train+val":
            sources.append((val_ds, corpora["val"].clean))
            warn("train.hard_examples.source is train+val (as the paper): validation samples leak into training, "
                 "so validation scores and best-checkpoint selection are optimistic; judge on the test file")
        pool = HardExamplePool(sources, branches, cfg, stage)

    holder: list[Trainer] = []

    def eval_fn(model: nn.Module) -> dict[str, Any]:
        metrics, _, _ = metrics_on(lambda b: logits_fn(model, b), val_ds, num_classes, cfg.eval.batch_size, ctx.device, amp)
        finished = holder and holder[0].step >= holder[0].stop_at
        if pool is not None and not finished:  # no augmentation round after the last step
            metrics["hard_examples"] = float(pool.grow(lambda b: logits_fn(model, b), ctx.device, amp))
            model.eval()
        return metrics

    trainer = Trainer(ctx, module, stage_cfg, step_fn,
                      _loader_fn(ctx, tcfg.batch_size, steps_per_epoch,
                                 (lambda: pool.dataset(train_ds)) if pool is not None else (lambda: train_ds)),
                      steps_per_epoch, eval_fn, param_groups=param_groups(module, tcfg.weight_decay),
                      extra=extra, stage=stage)
    holder.append(trainer)
    if pool is not None:
        pool.store = trainer.extra  # checkpointed by the trainer and restored from it on --resume
    metrics = trainer.fit()
    if tcfg.select == "best" and trainer.best_path.is_file():
        state = load_checkpoint(trainer.best_path)
        load_model_state(module, state["model"], source=str(trainer.best_path))
        metrics = dict(state.get("metrics") or metrics)
        log(f"{stage or 'train'}: selected {trainer.best_path.name} (step {state.get('step')})")
    return metrics


class _FeatureSet(Dataset):
    """Precomputed fusion inputs (frozen branches) with labels."""

    def __init__(self, features: Tensor, labels: Tensor) -> None:
        self.features, self.labels = features, labels

    def __len__(self) -> int:
        return len(self.labels)

    def __getitem__(self, i: int) -> int:
        return i

    def collate(self, indices: list[int]) -> dict:
        idx = torch.as_tensor(indices, dtype=torch.long)
        return {"index": idx, "fused": self.features[idx], "label": self.labels[idx]}


def fusion_features(model: FakeNewsClassifier, dataset: TokenizedTexts, batch_size: int, device: torch.device,
                    amp: torch.dtype | None) -> Tensor:
    """The frozen branches' concatenated outputs for every sample (computed once per stage)."""
    model.eval()
    idx, feats = infer(lambda b: model.fusion_inputs(b["inputs"]), dataset, batch_size, device, amp,
                       sharded=False, desc="fusion features")
    out = torch.empty_like(feats)
    out[idx] = feats
    return out


def train_fusion_stage(ctx: RunContext, model: FakeNewsClassifier, train_ds: TokenizedTexts, val_ds: TokenizedTexts,
                       extra: dict, num_classes: int) -> dict[str, Any]:
    """Freeze the branches and train the fusion MLP on their concatenated features (spec: Open points)."""
    cfg: Config = ctx.cfg
    fcfg = cfg.train.fusion
    for p in model.branches.parameters():
        p.requires_grad_(False)
    model.to(ctx.device)
    amp = autocast_dtype(ctx.device, cfg.runtime.precision)
    train_set = _FeatureSet(fusion_features(model, train_ds, cfg.eval.batch_size, ctx.device, amp), train_ds.labels)
    val_set = _FeatureSet(fusion_features(model, val_ds, cfg.eval.batch_size, ctx.device, amp), val_ds.labels)
    assert model.fusion_head is not None
    model.fusion_head.set_input_stats(train_set.features.to(ctx.device))
    batch_size = fcfg.batch_size or cfg.train.batch_size
    steps_per_epoch = batches_per_epoch(len(train_set), batch_size)
    tcfg = dataclasses.replace(cfg.train, epochs=fcfg.epochs, steps=None, lr=fcfg.lr or cfg.train.lr,
                               batch_size=batch_size, warmup_steps=0,
                               max_steps=fcfg.max_steps if fcfg.max_steps is not None else cfg.train.max_steps)
    tcfg, _ = with_warmup(tcfg, steps_per_epoch)

    def step_fn(m: nn.Module, batch: dict, step: int) -> dict[str, Tensor]:
        return {"loss": F.cross_entropy(m(fused=batch["fused"]).float(), batch["label"])}

    def eval_fn(m: nn.Module) -> dict[str, Any]:
        metrics, _, _ = metrics_on_features(m, val_set, num_classes, cfg.eval.batch_size, ctx.device)
        return metrics

    trainer = Trainer(ctx, model, tcfg, step_fn, _loader_fn(ctx, batch_size, steps_per_epoch, lambda: train_set),
                      steps_per_epoch, eval_fn, param_groups=param_groups(model, cfg.train.weight_decay),
                      extra=extra, stage="fusion")
    metrics = trainer.fit()
    if cfg.train.select == "best" and trainer.best_path.is_file():
        state = load_checkpoint(trainer.best_path)
        load_model_state(model, state["model"], source=str(trainer.best_path))
        metrics = dict(state.get("metrics") or metrics)
    for p in model.parameters():
        p.requires_grad_(True)
    return metrics


def metrics_on_features(model: nn.Module, dataset: _FeatureSet, num_classes: int, batch_size: int,
                        device: torch.device) -> tuple[dict[str, Any], Tensor, Tensor]:
    """Metrics of the fusion head on precomputed features (all ranks)."""
    loader = make_eval_loader(dataset, batch_size, collate_fn=dataset.collate)
    cm = ConfusionMatrix(num_classes, device=device)
    for batch in loader:
        batch = move_to(batch, device)
        cm.update(model(fused=batch["fused"]).argmax(-1), batch["label"])
    cm.reduce()
    return classification_metrics(cm), torch.zeros(0), torch.zeros(0)


def _load_corpora(cfg: Config) -> dict[str, Corpus]:
    train = load_split(cfg.data, "train")
    val = load_split(cfg.data, "val", classes=train.classes)
    return {"train": train, "val": val}


def _build_all(cfg: Config, corpora: dict[str, Corpus]) -> dict[str, Branch]:
    classes = corpora["train"].classes
    train_texts = corpora["train"].clean
    out = {}
    for name, bcfg in cfg.model.branches.items():
        vocab_texts = train_texts + corpora["val"].clean if bcfg.new_tokens_corpus == "train+val" else train_texts
        out[name] = build_branch(name, bcfg, cfg, len(classes), train_texts, vocab_texts)
        b = out[name]
        log(f"branch {name}: {b.source}, {sum(p.numel() for p in b.module.parameters()) / 1e6:.2f}M parameters"
            + (f", added tokens {b.added_tokens}" if b.added_tokens else ""))
    return out


def train(ctx: RunContext) -> dict[str, Any]:
    """Train every branch, then the fusion (if several branches); write best.pt / last.pt / eval.json."""
    cfg: Config = ctx.cfg
    corpora = _load_corpora(cfg)
    classes = corpora["train"].classes
    num_classes = len(classes)
    torch.manual_seed(cfg.runtime.seed)
    branches = _build_all(cfg, corpora)
    extra = model_extra(branches, classes, cfg)
    train_ds = tokenize_corpus(branches, corpora["train"].clean, corpora["train"].labels, cfg)
    val_ds = tokenize_corpus(branches, corpora["val"].clean, corpora["val"].labels, cfg)
    model = assemble(cfg, branches, num_classes)

    if model.fusion_head is None:
        (name,) = branches
        train_branch_stage(ctx, model, name, lambda m: m.branches[name].word_embeddings,
                           lambda m, b: m(inputs=b["inputs"]), train_ds, val_ds, branches, corpora, extra, "", num_classes)
        final_path = ctx.run_dir / ("best.pt" if cfg.train.select == "best" else "last.pt")
    else:
        for name, b in branches.items():
            train_branch_stage(ctx, b.module, name, lambda m: m.word_embeddings,
                               lambda m, batch, n=name: m(**batch["inputs"][n]), train_ds, val_ds, branches, corpora,
                               {**extra, "branch": name}, f"branch-{name}", num_classes)
        train_fusion_stage(ctx, model, train_ds, val_ds, extra, num_classes)
        # inference checkpoints of the fused model: best.pt (selected per train.select), last.pt
        for fname in ("best", "last"):
            src = ctx.run_dir / f"{fname}-fusion.pt"
            if src.is_file():
                state = load_checkpoint(src)
                fused = assemble(cfg, branches, num_classes)
                load_model_state(fused, state["model"], source=str(src))
                export_checkpoint(ctx, fused, ctx.run_dir / f"{fname}.pt", extra=extra, metrics=state.get("metrics"))
        dist.barrier()  # rank 0 wrote the exports; every rank reads the final one below
        final_path = ctx.run_dir / ("best.pt" if cfg.train.select == "best" else "last.pt")

    summary: dict[str, Any] = {"checkpoint": str(final_path)}
    amp = autocast_dtype(ctx.device, cfg.runtime.precision)
    final_model, _, _ = model_from_checkpoint(load_checkpoint(final_path), cfg, str(final_path))
    final_model.to(ctx.device).eval()
    summary["val"], _, _ = metrics_on(lambda b: final_model(inputs=b["inputs"]), val_ds, num_classes,
                                      cfg.eval.batch_size, ctx.device, amp)
    test_path = split_path(cfg.data, "test")
    if test_path.is_file():
        test = load_split(cfg.data, "test", classes=classes)
        test_ds = tokenize_corpus(branches, test.clean, test.labels, cfg)
        summary["test"], _, _ = metrics_on(lambda b: final_model(inputs=b["inputs"]), test_ds, num_classes,
                                           cfg.eval.batch_size, ctx.device, amp)
    else:
        log(f"no test file at {test_path}: skipping the test evaluation")
    if dist.is_main():
        (ctx.run_dir / "eval.json").write_text(json.dumps(summary, indent=2))
    return summary


# ----------------------------------------------------------------------------- evaluate / predict


def load_for_inference(checkpoint: str | Path, recipe: str | Path | None, sets: list[str] | None,
                       device: torch.device | None = None) -> tuple[Config, FakeNewsClassifier, dict[str, Branch], list[str]]:
    """Config + model + tokenizers from a checkpoint (recipe optional, `--set` overrides on top)."""
    ckpt = load_checkpoint(checkpoint)
    if ckpt.get("task") not in (None, TASK):
        raise ZskError(f"{checkpoint} is a checkpoint of task {ckpt.get('task')!r}; use `zsk {ckpt.get('task')} ...`")
    cfg, _ = config_from_checkpoint(ckpt, Config, sets, recipe)
    model, branches, classes = model_from_checkpoint(ckpt, cfg, str(checkpoint))
    if device is not None:
        model.to(device)
    model.eval()
    return cfg, model, branches, classes


def evaluate(checkpoint: str | Path, recipe: str | Path | None = None, sets: list[str] | None = None,
             split: str | None = None, device: torch.device | None = None) -> dict[str, Any]:
    """Metrics of a checkpoint on a labelled split (default: eval.split, the test file)."""
    device = device or torch.device("cpu")
    cfg, model, branches, classes = load_for_inference(checkpoint, recipe, sets, device)
    split = split or cfg.eval.split
    corpus = load_split(cfg.data, split, classes=classes)
    ds = tokenize_corpus(branches, corpus.clean, corpus.labels, cfg)
    amp = autocast_dtype(device, cfg.runtime.precision)
    metrics, _, _ = metrics_on(lambda b: model(inputs=b["inputs"]), ds, len(classes), cfg.eval.batch_size, device, amp)
    return {"split": split, "samples": len(corpus), **metrics}


def _stdin_lines(stream) -> Iterator[tuple[int, str]]:
    """Non-empty lines of a byte stream, decoded as UTF-8 one at a time (so pipes stream)."""
    for i, raw in enumerate(stream, start=1):
        try:
            text = raw.decode("utf-8").rstrip("\r\n")
        except UnicodeDecodeError as e:
            raise ZskError(f"<stdin>, line {i}: bytes that are not valid utf-8 ({e.reason}); "
                           f"convert the input to UTF-8 (e.g. `iconv -f latin1 -t utf-8`)") from None
        if text.strip():
            yield i, text


def read_inputs(path: str, cfg: Config, fmt: str = "auto") -> Iterator[tuple[str | None, str]]:
    """(id, text) pairs from a CSV/TSV/JSONL/text file, or plain lines from stdin (`-`)."""
    if path == "-":
        if fmt in ("auto", "lines"):
            for _, text in _stdin_lines(sys.stdin.buffer):
                yield None, text
            return
        table = read_table("<stdin>", fmt, text=decode_text(sys.stdin.buffer.read(), "<stdin>"))
    else:
        resolved = table_format(path, fmt)
        table = read_table(path, resolved, cfg.data.encoding)
        if resolved == "lines":
            for row in table.rows:
                yield None, row["text"]
            return
    samples = select_texts(table, cfg.data.text_column, None, cfg.data.id_column, require_labels=False)
    for j, text in enumerate(samples.texts):
        yield (samples.ids[j] if samples.ids is not None else None), text


def predict(inputs: list[str], checkpoint: str | Path, sets: list[str] | None = None, device: torch.device | None = None,
            fmt: str = "auto", batch_size: int | None = None) -> Iterator[dict[str, Any]]:
    """One result per input text {"id"?, "text", "label", "score"}, computed in batches as inputs stream in."""
    device = device or torch.device("cpu")
    cfg, model, branches, classes = load_for_inference(checkpoint, None, sets, device)
    bs = batch_size or cfg.eval.batch_size
    amp = autocast_dtype(device, cfg.runtime.precision)

    def run(chunk: list[tuple[str | None, str]]) -> Iterator[dict[str, Any]]:
        texts = [t for _, t in chunk]
        clean = clean_texts(texts, cfg.data.preprocess)
        encodings = {n: encode_texts(b.tokenizer, clean, cfg.data.max_length) for n, b in branches.items()}
        ds = TokenizedTexts(encodings, None, {n: int(b.tokenizer.pad_token_id or 0) for n, b in branches.items()})
        batch = move_to(ds.collate(list(range(len(ds)))), device)
        with torch.no_grad(), autocast(device, amp):
            probs = torch.softmax(model(inputs=batch["inputs"]).float(), dim=-1).cpu()
        score, label = probs.max(-1)
        for (id_, text), s, y in zip(chunk, score.tolist(), label.tolist(), strict=True):
            row: dict[str, Any] = {"id": id_} if id_ is not None else {}
            row.update(text=text, label=classes[y], score=s)
            yield row

    for path in inputs:
        chunk: list[tuple[str | None, str]] = []
        for item in read_inputs(path, cfg, fmt):
            chunk.append(item)
            if len(chunk) == bs:
                yield from run(chunk)
                chunk = []
        if chunk:
            yield from run(chunk)


# ----------------------------------------------------------------------------- info / bench / demo


def _architecture_only(cfg: Config, name: str, bcfg: BranchConfig, num_classes: int) -> Branch:
    """A random-init branch of the recipe's architecture without data or weights (info, bench)."""
    if bcfg.pretrained:
        config = architecture_config(bcfg, name)
        encoder = encoder_from_config(config)
        source = f"{bcfg.pretrained} (architecture only)"
    else:
        enc = bcfg.encoder
        encoder = encoder_from_config(random_encoder_config(enc, bcfg.tokenizer.build_vocab_size, 0))
        source = "random-init"
    tokens = list(PAPER_NEW_TOKENS) if bcfg.new_tokens == "paper" else list(bcfg.new_tokens_list) if bcfg.new_tokens == "list" else []
    if tokens:
        encoder.resize_token_embeddings(encoder.get_input_embeddings().num_embeddings + len(tokens), mean_resizing=False)
    added = tokens if tokens else ([f"<top-{bcfg.new_tokens_n} frequent terms, chosen at train time>"]
                                   if bcfg.new_tokens == "frequent" else [])
    return Branch(name, TransformerBranch(encoder, num_classes, bcfg.dropout, bcfg.pooling), None, added, source)


def info(cfg: Config) -> dict[str, Any]:
    """Classes, splits, parameters per branch and the added tokens, GFLOPs per input of max_length."""
    try:
        corpora: dict[str, Corpus] | None = _load_corpora(cfg)
    except ZskError as e:
        log(f"data not readable ({e}); describing the architecture only")
        corpora = None
    classes = corpora["train"].classes if corpora else (cfg.data.classes or ["class-0", "class-1"])
    if corpora:
        branches = _build_all(cfg, corpora)
    else:
        branches = {n: _architecture_only(cfg, n, b, len(classes)) for n, b in cfg.model.branches.items()}
    model = assemble(cfg, branches, len(classes))
    total, trainable = count_params(model)
    L = cfg.data.max_length
    inputs = {n: {"input_ids": torch.ones(1, L, dtype=torch.long), "attention_mask": torch.ones(1, L, dtype=torch.long)}
              for n in branches}
    model.eval()
    with torch.no_grad():
        flops = count_flops(lambda: model(inputs=inputs))
    splits = {}
    for split in ("train", "val", "test"):
        p = split_path(cfg.data, split)
        splits[split] = str(p) + ("" if p.is_file() else " (missing)")
    if corpora:
        splits["sizes"] = {k: len(v) for k, v in corpora.items()}
    return {
        "task": TASK,
        "classes": classes,
        "splits": splits,
        "max_length": L,
        "params_total": total,
        "params_trainable": trainable,
        "branches": {n: {"source": b.source, "params": sum(p.numel() for p in b.module.parameters()),
                         "hidden_size": b.module.feature_dim, "added_tokens": b.added_tokens} for n, b in branches.items()},
        "fusion": (f"{cfg.model.fusion}: MLP {model.fusion_dim()} -> {cfg.model.fusion_hidden} -> {len(classes)}"
                   if model.fusion_head is not None else "none (single branch)"),
        "fusion_params": sum(p.numel() for p in model.fusion_head.parameters()) if model.fusion_head is not None else 0,
        "gflops": flops / 1e9,
        "gflops_unit": "per input text (all branches + fusion)",
    }


def bench_spec(cfg: Config, device: torch.device, batch_size: int | None) -> BenchSpec:
    """One optimizer step of every branch stage (heated softmax + FGM) on a batch of max_length
    sequences, and one fused prediction call on an eval batch."""
    classes = cfg.data.classes or ["class-0", "class-1"]
    branches = {n: _architecture_only(cfg, n, b, len(classes)) for n, b in cfg.model.branches.items()}
    model = assemble(cfg, branches, len(classes)).to(device)
    bs = batch_size or cfg.train.batch_size
    ebs = batch_size or cfg.eval.batch_size
    L = cfg.data.max_length
    g = torch.Generator().manual_seed(0)

    def batch_inputs(n: int) -> dict:
        out = {}
        for name, b in branches.items():
            vocab = b.module.word_embeddings.num_embeddings
            ids = torch.randint(5, vocab, (n, L), generator=g)
            out[name] = {"input_ids": ids.to(device), "attention_mask": torch.ones(n, L, dtype=torch.long, device=device)}
        return out

    train_inputs, infer_inputs = batch_inputs(bs), batch_inputs(ebs)
    labels = torch.randint(0, len(classes), (bs,), generator=g).to(device)
    optimizers = {n: torch.optim.AdamW(param_groups(b.module, cfg.train.weight_decay), lr=cfg.train.lr)
                  for n, b in branches.items()}
    heated, fgm = cfg.train.heated_softmax, cfg.train.fgm
    alpha = heated.alphas[0] if heated.enabled else 1.0

    def train_step() -> None:
        model.train()
        for name, b in branches.items():
            def loss_fn(m: nn.Module, name: str = name) -> Tensor:
                return heated_softmax_cross_entropy(m(**train_inputs[name]), labels, alpha)

            if fgm.enabled:
                loss = fgm_loss(b.module, b.module.word_embeddings, loss_fn, fgm.epsilon)[0]
            else:
                loss = loss_fn(b.module)
            loss.backward()
            optimizers[name].step()
            optimizers[name].zero_grad(set_to_none=True)

    @torch.no_grad()
    def infer_step() -> None:
        model.eval()
        model(inputs=infer_inputs)

    return BenchSpec(train_step=train_step, infer_step=infer_step, train_samples=bs, infer_samples=ebs,
                     unit="samples", infer_unit="texts")


def run_demo(workdir: Path, device: str) -> dict[str, Any]:
    """Write the sample corpus, train recipes/fakenews/demo.yaml on it, evaluate on its test file,
    predict two texts; returns the test weighted F1."""
    from zsk.core.recipe import recipes_dir
    from zsk.tasks.fakenews.data import write_sample

    workdir = Path(workdir)
    data_dir = workdir / "data"
    write_sample(data_dir)
    ctx = start_run(TASK, Config, recipes_dir() / TASK / "demo.yaml", [f"data.root={data_dir}"],
                    out=workdir / "run", device=device)
    summary = train(ctx)
    ckpt = Path(summary["checkpoint"])
    lines = workdir / "texts.txt"
    lines.write_text("ministry confirmed new tests and recovered cases\nmiracle garlic cure exposed as secret hoax\n",
                     encoding="utf-8")
    preds = list(predict([str(lines)], ckpt, device=ctx.device))
    metrics = evaluate(ckpt, split="test", device=ctx.device)
    return {"metric": "f1_weighted", "value": metrics["f1_weighted"], "accuracy": metrics["accuracy"],
            "predictions": [{"text": p["text"], "label": p["label"]} for p in preds]}
