"""Ro-CT-BERT training (Chen et al., "Transformer-based Language Model Fine-tuning Methods for COVID-19
Fake News Detection", CONSTRAINT@AAAI 2021, arXiv 2101.05509).

Every branch is fine-tuned with the heated-up softmax loss, FGM on its word embeddings and
(optionally) vocabulary expansion and hard-example augmentation; with two or more branches the
branches are then frozen and the fusion MLP is trained on their concatenated [CLS] features. The
stages are one per branch (named as in ``model.branches``: ``roberta``, ``ctbert``) and ``fusion``,
each set by ``train.*`` plus its ``train.stages.<name>`` block; a single-branch recipe trains in one
stage. ``--resume`` skips finished stages.
"""

from __future__ import annotations

import dataclasses
import json
import random
from collections.abc import Callable, Iterable
from functools import partial
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torch.utils.data import Dataset

from zsk.core import dist
from zsk.core.checkpoint import load_checkpoint
from zsk.core.device import autocast_dtype
from zsk.core.errors import ZskError
from zsk.core.progress import log, warn
from zsk.core.run import RunContext
from zsk.core.stages import Stage, run_stages, stage_config
from zsk.core.trainer import Callback, Trainer, batches_per_epoch, epoch_batches, grad_accum_for, make_loader
from zsk.tasks.fakenews.adversarial import fgm_loss
from zsk.tasks.fakenews.augment import hard_examples, load_synonyms
from zsk.tasks.fakenews.config import (
    PAPER_NEW_TOKENS,
    BranchConfig,
    Config,
    EncoderConfig,
    HardExamplesConfig,
    TrainConfig,
)
from zsk.tasks.fakenews.data import (
    Corpus,
    FeatureSet,
    TokenizedTexts,
    concat_datasets,
    encode_texts,
    load_split,
    split_path,
    tokenize_corpus,
)
from zsk.tasks.fakenews.evaluate import infer, metrics_on, metrics_on_features, model_from_checkpoint
from zsk.tasks.fakenews.losses import heated_alpha, heated_softmax_cross_entropy
from zsk.tasks.fakenews.model import (
    Branch,
    FakeNewsClassifier,
    TransformerBranch,
    _settings_quiet_transformers,
    architecture_config,
    check_positions,
    config_to_json,
    encoder_from_config,
    load_pretrained_encoder,
    random_encoder_config,
    set_heated_alpha,
)
from zsk.tasks.fakenews.tokenization import build_wordpiece_tokenizer, load_tokenizer, tokenizer_files
from zsk.tasks.fakenews.vocab import expand_vocabulary, frequent_multipiece_terms

SUMMARY_KEYS = ("accuracy", "f1_weighted", "precision_weighted", "recall_weighted", "f1_macro")
StepFn = Callable[[nn.Module, dict, int], dict[str, Tensor]]

# ----------------------------------------------------------------------------- building the model


def new_tokens_for(bcfg: BranchConfig, tokenizer: Any, corpus_texts: list[str] | None, name: str) -> list[str]:
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


def head_form(cfg: Config, name: str) -> str:
    """Classifier of branch `name`: `model.heated_softmax` (normalised: alpha cos(f, w) + b; or linear)
    when its stage trains with the heated-up softmax, else the ordinary linear classifier."""
    return cfg.model.heated_softmax if stage_config(cfg.train, name).heated_softmax.enabled else "linear"


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
    check_positions(name, encoder, cfg.data.max_length)
    tokens = new_tokens_for(bcfg, tokenizer, vocab_texts if vocab_texts is not None else corpus_texts, name)
    std = float(getattr(encoder.config, "initializer_range", 0.02))
    added = expand_vocabulary(tokenizer, encoder, tokens, init=bcfg.new_tokens_init, std=std)
    module = TransformerBranch(encoder, num_classes, bcfg.dropout, bcfg.pooling, head_form(cfg, name))
    return Branch(name, module, tokenizer, added, source)


def architecture_branch(cfg: Config, name: str, bcfg: BranchConfig, num_classes: int) -> Branch:
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
    return Branch(name, TransformerBranch(encoder, num_classes, bcfg.dropout, bcfg.pooling, head_form(cfg, name)),
                  None, added, source)


def load_corpora(cfg: Config) -> dict[str, Corpus]:
    """The cleaned train and val splits (classes from the recipe, else from the train file)."""
    train = load_split(cfg.data, "train")
    val = load_split(cfg.data, "val", classes=train.classes)
    return {"train": train, "val": val}


def build_branches(cfg: Config, corpora: dict[str, Corpus] | None) -> dict[str, Branch]:
    """Every branch of the recipe: built on the training corpus (tokenizers, added tokens), or, with
    ``corpora=None``, random-init branches of the recipe's architecture (no data, no weights)."""
    if corpora is None:
        classes = cfg.data.classes or ["class-0", "class-1"]
        return {n: architecture_branch(cfg, n, b, len(classes)) for n, b in cfg.model.branches.items()}
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


def build_model(cfg: Config, branches: dict[str, Branch] | None = None) -> FakeNewsClassifier:
    """The classifier over built branches (default: random-init branches of the recipe's
    architecture): the single branch itself, or the branches fused by the MLP of Figure 1."""
    branches = branches if branches is not None else build_branches(cfg, None)
    num_classes = next(iter(branches.values())).module.classifier.out_features if branches else 0
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
                "added_tokens": list(b.added_tokens), "source": b.source, "head": b.module.head}
            for n, b in branches.items()
        },
    }


# ----------------------------------------------------------------------------- step functions


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


def with_warmup(tcfg: TrainConfig, steps_per_epoch: int) -> tuple[TrainConfig, int]:
    """`train` config with warmup_steps = warmup_fraction x total optimizer steps (spec: warm-up ratio 0.1)."""
    optim_per_epoch = max(1, steps_per_epoch // grad_accum_for(tcfg))
    total = tcfg.steps if tcfg.steps is not None else (tcfg.epochs or 0) * optim_per_epoch
    warmup = tcfg.warmup_steps or int(round(tcfg.warmup_fraction * total))
    return dataclasses.replace(tcfg, warmup_steps=warmup), optim_per_epoch


def make_branch_step_fn(tcfg: TrainConfig, optim_per_epoch: int, embedding_fn: Callable[[nn.Module], nn.Embedding],
                        logits_fn: Callable[[nn.Module, dict], Tensor]) -> StepFn:
    """step_fn(model, batch, step) of a branch stage: the heated-up softmax cross-entropy (Eq. 1, alpha
    by epoch) with FGM on the word embeddings (clean + adversarial loss). With a normalised head
    (`CosineClassifier`) alpha is set in the head, z = alpha cos(f, w) + b, and the loss is CE(z);
    with a linear head the loss is CE(alpha z)."""
    heated, fgm = tcfg.heated_softmax, tcfg.fgm
    if heated.enabled:
        heated_alpha(0, heated.alphas, heated.milestones)  # validate the schedule before training

    def step_fn(model: nn.Module, batch: dict, step: int) -> dict[str, Tensor]:
        alpha = heated_alpha(step // optim_per_epoch, heated.alphas, heated.milestones) if heated.enabled else 1.0
        y = batch["label"]
        in_head = set_heated_alpha(dist.unwrap(model), alpha)

        def loss_fn(m: nn.Module) -> Tensor:
            logits = logits_fn(m, batch)
            return F.cross_entropy(logits.float(), y) if in_head else heated_softmax_cross_entropy(logits, y, alpha)

        out = {"alpha": torch.tensor(alpha)}
        if fgm.enabled:
            total, clean, adv = fgm_loss(model, embedding_fn(dist.unwrap(model)), loss_fn, fgm.epsilon)
            out.update(loss=total, clean=clean, adversarial=adv)
        else:
            out["loss"] = loss_fn(model)
        return out

    return step_fn


def branch_step_fn(tcfg: TrainConfig, optim_per_epoch: int, name: str, fused: bool) -> StepFn:
    """The step function of branch ``name``'s stage: on the branch module itself when the model is
    fused (each branch is its own stage), on the whole single-branch classifier otherwise."""
    if fused:
        return make_branch_step_fn(tcfg, optim_per_epoch, lambda m: m.word_embeddings,
                                   lambda m, batch: m(**batch["inputs"][name]))
    return make_branch_step_fn(tcfg, optim_per_epoch, lambda m: m.branches[name].word_embeddings,
                               lambda m, batch: m(inputs=batch["inputs"]))


def fusion_step_fn(model: nn.Module, batch: dict, step: int) -> dict[str, Tensor]:
    """step_fn of the fusion stage: cross-entropy of the MLP on the frozen branches' features."""
    return {"loss": F.cross_entropy(model(fused=batch["fused"]).float(), batch["label"])}


# ----------------------------------------------------------------------------- hard-example pool


class HardExamplePool(Callback):
    """Iterative hard-example augmentation (spec: Method) as a Trainer callback: after every
    evaluation but the last, the misclassified samples of the pool sources are perturbed (word
    deletion / synonym replacement) and appended to the training set of the following epochs.

    The pool lives in the trainer's ``extra`` (``extra["hard_examples"]``), so it is saved in every
    checkpoint and ``--resume`` continues with the same pool.
    """

    def __init__(self, sources: list[tuple[TokenizedTexts, list[str]]], branches: dict[str, Branch], cfg: Config,
                 hcfg: HardExamplesConfig, tag: str, logits_fn: Callable[[nn.Module, dict], Tensor],
                 device: torch.device) -> None:
        self.store: dict = {}  # set to the trainer's `extra` (restored by --resume before the first use)
        self.sources = sources
        self.branches = branches
        self.cfg = cfg
        self.hcfg = hcfg
        self.tag = tag  # seeds each round's perturbations with the seed and the round
        self.logits_fn = logits_fn
        self.device = device
        self.amp = autocast_dtype(device, cfg.runtime.precision)
        self.synonyms = load_synonyms(hcfg.synonyms) if hcfg.synonyms else None
        self._cached: tuple[int, TokenizedTexts | None] = (-1, None)

    def bind(self, trainer: Trainer) -> HardExamplePool:
        """Keep the pool in ``trainer.extra`` (checkpointed by the trainer, restored on --resume)."""
        self.store = trainer.extra
        return self

    @property
    def data(self) -> dict:
        return self.store.setdefault("hard_examples", {"texts": [], "labels": [], "rounds": 0})

    def __len__(self) -> int:
        return len(self.data["texts"])

    def on_eval_end(self, trainer: Trainer, metrics: dict[str, Any]) -> None:
        """One augmentation round after each evaluation, except after the last step."""
        if trainer.step >= trainer.stop_at:
            return
        model = trainer.model
        was_training = model.training
        model.eval()
        size = self.grow(lambda b: self.logits_fn(model, b))
        model.train(was_training)
        log(f"hard examples: round {self.data['rounds']}, pool of {size} augmented samples")

    def grow(self, logits_fn: Callable[[dict], Tensor]) -> int:
        """One round: predict the pool sources, perturb the misclassified samples, append them."""
        hcfg = self.hcfg
        rng = random.Random(f"{self.cfg.runtime.seed}-{self.tag}-{self.data['rounds']}")
        new_texts: list[str] = []
        new_labels: list[int] = []
        for dataset, texts in self.sources:
            idx, logits = infer(logits_fn, dataset, self.cfg.eval.batch_size, self.device, self.amp,
                                desc="hard examples")
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


# ----------------------------------------------------------------------------- stages


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


def branch_trainer(ctx: RunContext, tcfg: TrainConfig, module: nn.Module, name: str, fused: bool,
                   train_ds: TokenizedTexts, val_ds: TokenizedTexts, branches: dict[str, Branch],
                   corpora: dict[str, Corpus], extra: dict, num_classes: int) -> Trainer:
    """The Trainer of one branch stage (``fused``) or of the single-branch model: heated-up softmax,
    FGM and, with ``train.hard_examples.enabled``, the :class:`HardExamplePool` callback."""
    cfg: Config = ctx.cfg
    steps_per_epoch = batches_per_epoch(len(train_ds), tcfg.batch_size)
    stage_cfg, optim_per_epoch = with_warmup(tcfg, steps_per_epoch)
    step_fn = branch_step_fn(stage_cfg, optim_per_epoch, name, fused)
    logits_fn = (lambda m, b: m(**b["inputs"][name])) if fused else (lambda m, b: m(inputs=b["inputs"]))
    amp = autocast_dtype(ctx.device, cfg.runtime.precision)

    pool = None
    hcfg: HardExamplesConfig = tcfg.hard_examples
    if hcfg.enabled:
        sources = [(train_ds, corpora["train"].clean)]
        if hcfg.source == "train+val":
            sources.append((val_ds, corpora["val"].clean))
            warn("train.hard_examples.source is train+val (as the paper): validation samples leak into training, "
                 "so validation scores and best-checkpoint selection are optimistic; judge on the test file")
        # the rounds' random perturbations are seeded by (seed, stage tag, round) as in earlier versions
        pool = HardExamplePool(sources, branches, cfg, hcfg, f"branch-{name}" if fused else "", logits_fn, ctx.device)

    def eval_fn(model: nn.Module) -> dict[str, Any]:
        metrics, _, _ = metrics_on(lambda b: logits_fn(model, b), val_ds, num_classes, cfg.eval.batch_size, ctx.device, amp)
        if pool is not None:  # the augmented samples trained on so far
            metrics["hard_examples"] = float(len(pool))
        return metrics

    dataset_fn = (lambda: pool.dataset(train_ds)) if pool is not None else (lambda: train_ds)
    trainer = Trainer(ctx, module, stage_cfg, step_fn, _loader_fn(ctx, tcfg.batch_size, steps_per_epoch, dataset_fn),
                      steps_per_epoch, eval_fn, param_groups=param_groups(module, tcfg.weight_decay),
                      extra={**extra, "branch": name} if fused else extra, stage=name if fused else "",
                      callbacks=[pool] if pool is not None else [])
    if pool is not None:
        pool.bind(trainer)
    return trainer


def fusion_features(model: FakeNewsClassifier, dataset: TokenizedTexts, batch_size: int, device: torch.device,
                    amp: torch.dtype | None) -> Tensor:
    """The frozen branches' concatenated outputs for every sample (computed once per stage)."""
    model.eval()
    idx, feats = infer(lambda b: model.fusion_inputs(b["inputs"]), dataset, batch_size, device, amp,
                       sharded=False, desc="fusion features")
    out = torch.empty_like(feats)
    out[idx] = feats
    return out


def fusion_trainer(ctx: RunContext, tcfg: TrainConfig, model: FakeNewsClassifier, train_ds: TokenizedTexts,
                   val_ds: TokenizedTexts, extra: dict, num_classes: int) -> Trainer:
    """The fusion stage: freeze the branches (trained by the earlier stages) and train the MLP on their
    concatenated features, computed once (spec: Open points)."""
    cfg: Config = ctx.cfg
    for p in model.branches.parameters():
        p.requires_grad_(False)
    model.to(ctx.device)
    amp = autocast_dtype(ctx.device, cfg.runtime.precision)
    train_set = FeatureSet(fusion_features(model, train_ds, cfg.eval.batch_size, ctx.device, amp), train_ds.labels)
    val_set = FeatureSet(fusion_features(model, val_ds, cfg.eval.batch_size, ctx.device, amp), val_ds.labels)
    assert model.fusion_head is not None
    model.fusion_head.set_input_stats(train_set.features.to(ctx.device))
    steps_per_epoch = batches_per_epoch(len(train_set), tcfg.batch_size)
    stage_cfg, _ = with_warmup(tcfg, steps_per_epoch)

    def eval_fn(m: nn.Module) -> dict[str, Any]:
        metrics, _, _ = metrics_on_features(m, val_set, num_classes, cfg.eval.batch_size, ctx.device)
        return metrics

    return Trainer(ctx, model, stage_cfg, fusion_step_fn,
                   _loader_fn(ctx, tcfg.batch_size, steps_per_epoch, lambda: train_set), steps_per_epoch, eval_fn,
                   param_groups=param_groups(model, tcfg.weight_decay), extra=extra, stage="fusion")


def _flat(summary: dict[str, Any]) -> dict[str, Any]:
    """What ``train`` returns and prints: the checkpoint, ``val_*`` and ``test_*`` metrics, and the
    test metrics (val without a test file) under their own names for mean ± std over ``--runs``."""
    out: dict[str, Any] = {"checkpoint": summary["checkpoint"]}
    for split in ("val", "test"):
        if split in summary:
            out.update({f"{split}_{k}": v for k, v in summary[split].items() if k in SUMMARY_KEYS})
    final = summary.get("test") or summary["val"]
    out.update({k: final[k] for k in SUMMARY_KEYS})
    return out


def train(ctx: RunContext) -> dict[str, Any]:
    """Train every branch, then the fusion (if several branches); write best.pt / last.pt / eval.json
    (val and test metrics of the final model) and return them flattened."""
    _settings_quiet_transformers()
    cfg: Config = ctx.cfg
    corpora = load_corpora(cfg)
    classes = corpora["train"].classes
    num_classes = len(classes)
    torch.manual_seed(cfg.runtime.seed)
    branches = build_branches(cfg, corpora)
    extra = model_extra(branches, classes, cfg)
    train_ds = tokenize_corpus(branches, corpora["train"].clean, corpora["train"].labels, cfg)
    val_ds = tokenize_corpus(branches, corpora["val"].clean, corpora["val"].labels, cfg)
    model = build_model(cfg, branches)
    amp = autocast_dtype(ctx.device, cfg.runtime.precision)

    def summary_of(final: nn.Module, checkpoint: Path) -> dict[str, Any]:
        final.eval()
        summary: dict[str, Any] = {"checkpoint": str(checkpoint)}
        summary["val"], _, _ = metrics_on(lambda b: final(inputs=b["inputs"]), val_ds, num_classes,
                                          cfg.eval.batch_size, ctx.device, amp)
        test_path = split_path(cfg.data, "test")
        if test_path.is_file():
            test = load_split(cfg.data, "test", classes=classes)
            test_ds = tokenize_corpus(branches, test.clean, test.labels, cfg)
            summary["test"], _, _ = metrics_on(lambda b: final(inputs=b["inputs"]), test_ds, num_classes,
                                               cfg.eval.batch_size, ctx.device, amp)
        else:
            log(f"no test file at {test_path}: skipping the test evaluation")
        return summary

    common = dict(train_ds=train_ds, val_ds=val_ds, branches=branches, corpora=corpora, num_classes=num_classes)
    if model.fusion_head is None:
        (name,) = branches
        # one stage; a `train.stages.<branch>` block still applies to it
        run_stages(ctx, [Stage("", lambda t: branch_trainer(ctx, stage_config(t, name), module=model, name=name,
                                                            fused=False, extra=extra, **common))])
        select = stage_config(cfg.train, name).select
        final_path = ctx.run_dir / ("best.pt" if select == "best" else "last.pt")
        final_model, _, _ = model_from_checkpoint(load_checkpoint(final_path), cfg, str(final_path))
        summary = summary_of(final_model.to(ctx.device), final_path)
        if dist.is_main():
            (ctx.run_dir / "eval.json").write_text(json.dumps(summary, indent=2))
        return _flat(summary)
    stages = [Stage(name, partial(branch_trainer, ctx, module=b.module, name=name, fused=True, extra=extra, **common))
              for name, b in branches.items()]
    stages.append(Stage("fusion", lambda t: fusion_trainer(ctx, t, model, train_ds, val_ds, extra, num_classes)))
    summary = run_stages(ctx, stages, final_model=model, extra=extra,
                         final_eval=lambda m: summary_of(m, ctx.run_dir / "best.pt"))
    return _flat(summary)
