"""LSEH training (Gong & Cosma, Pattern Recognition 2023; official code VSEpp_LSEH / VSEinfty_LSEH / VSRN_LSEH /
SGRAF_LSEH): a VSE++, VSE infinity, VSRN, SGR or SAF network trained with L_MH, L_SH or L_LSEH, one stage
through the shared Trainer. Every network feeds its batch similarity matrix (cosine of the embeddings, or
SGR/SAF's pair scores) to the same loss code; VSRN adds its caption-generation loss.

An optional warm-up that sums over all negatives before taking the hardest (vse_infty's
``--vse_mean_warmup_epochs``; 0 in the LSEH official code and recipes) is a setting of the loss
(``train.loss.warmup_sum_epochs``) inside the one stage. With ``train.eval_every`` the model is validated
every N steps and at every epoch end (the Trainer's ``train.eval_epoch_end``), as the official VSE++ train.py does.
"""

from __future__ import annotations

import dataclasses
import json
from collections.abc import Callable
from typing import Any

from torch import Tensor, nn

from zsk.core import dist
from zsk.core.errors import ZskError
from zsk.core.progress import log
from zsk.core.run import RunContext
from zsk.core.stages import Stage, run_stages
from zsk.core.trainer import Trainer, batches_per_epoch, grad_accum_for, make_loader
from zsk.data.captions import PrecompSplit
from zsk.tasks.retrieve.config import Config, TrainConfig
from zsk.tasks.retrieve.data import (
    MASK,
    BertTokens,
    Collate,
    PrecompPairs,
    RawPairs,
    Vocabulary,
    load_split,
    read_vocab_file,
    subset_split,
)
from zsk.tasks.retrieve.lsa import training_lsa
from zsk.tasks.retrieve.model import (
    AggrGPOImageEncoder,
    BertGPOTextEncoder,
    BiGRUGPOTextEncoder,
    CNNImageEncoder,
    GRUTextEncoder,
    PrecompLinearImageEncoder,
    RankingLoss,
    VSEModel,
    cnn_trunk,
)


def build_tokenizer(cfg: Config, train_captions: list[str] | None = None, vocab_words: list[str] | None = None):
    """The caption tokenizer: a word vocabulary from the training captions (GRU/BiGRU) or BERT's."""
    _, text = cfg.model.resolved()
    if text == "bert":
        from zsk.models.hf import load_hf_tokenizer

        return BertTokens(load_hf_tokenizer(cfg.model.bert, option="model.bert"))
    d = cfg.data
    if vocab_words is not None:
        return Vocabulary(vocab_words, d.tokenizer)
    if d.vocab_file:
        vocab = read_vocab_file(d.vocab_file, d.tokenizer)
        if d.token_aug > 0 and MASK not in vocab.index:
            vocab = Vocabulary(vocab.words + [MASK], d.tokenizer)
        return vocab
    if train_captions is None:
        raise ZskError("a word vocabulary needs the training captions (data.root)")
    return Vocabulary.build(train_captions, d.vocab_threshold, d.tokenizer, mask=d.token_aug > 0)


def build_model(cfg: Config, vocab_size: int, load_pretrained: bool = True) -> nn.Module:
    """The recipe's network. ``load_pretrained`` off builds pretrained parts with random weights."""
    m = cfg.model
    pool, text = m.resolved()
    if m.base == "vsrn":
        from zsk.tasks.retrieve.model_vsrn import CaptionGenerator, VSRNImageEncoder, VSRNModel

        return VSRNModel(VSRNImageEncoder(m.img_dim, m.embed_size, m.gcn_steps, m.vsrn_bn),
                         GRUTextEncoder(vocab_size, m.word_dim, m.embed_size, m.text_layers),
                         CaptionGenerator(vocab_size, m.embed_size, m.caption_hidden, m.caption_word_dim,
                                          m.caption_max_len, m.caption_dropout),
                         end_id=2, caption_weight=m.caption_weight)
    if m.pairwise:
        from zsk.tasks.retrieve.model_sgraf import (
            LocalImageEncoder,
            LocalTextEncoder,
            SGRAFModel,
            SimilarityNetwork,
        )

        return SGRAFModel(LocalImageEncoder(m.img_dim, m.embed_size),
                          LocalTextEncoder(vocab_size, m.word_dim, m.embed_size, m.text_layers, m.text_dropout),
                          SimilarityNetwork(m.embed_size, m.sim_dim, m.base.upper(), m.sgr_steps, m.num_regions,
                                            m.attn_dropout, m.attn_smooth))
    if m.image_encoder == "cnn":
        trunk, feat_dim = cnn_trunk(m.backbone, m.pretrained if load_pretrained else None)
        image = CNNImageEncoder(trunk, feat_dim, m.embed_size, m.finetune)
    elif pool in ("flatten", "mean"):
        image = PrecompLinearImageEncoder(m.img_dim, m.num_regions, m.embed_size, pool)
    else:
        image = AggrGPOImageEncoder(m.img_dim, m.embed_size, m.gpo_dim)
    if text == "gru":
        txt: nn.Module = GRUTextEncoder(vocab_size, m.word_dim, m.embed_size, m.text_layers)
    elif text == "bigru":
        txt = BiGRUGPOTextEncoder(vocab_size, m.word_dim, m.embed_size, m.text_layers, m.gpo_dim)
    else:
        from transformers import AutoConfig, AutoModel

        from zsk.models.hf import load_hf_model

        if load_pretrained:
            bert = load_hf_model(m.bert, option="model.bert")
        else:
            bert = AutoModel.from_config(load_hf_model(m.bert, option="model.bert", loader=AutoConfig))
        txt = BertGPOTextEncoder(bert, m.embed_size, m.gpo_dim)
    return VSEModel(image, txt)


def frozen_prefixes(cfg: Config) -> tuple[str, ...]:
    """Pretrained parts that are not trained and therefore not copied into checkpoints."""
    m = cfg.model
    if m.image_encoder == "cnn" and not m.finetune and m.pretrained:
        return ("image_encoder.backbone.",)
    return ()


def check_split_features(cfg: Config, split) -> None:
    """Per-image feature shape of a precomputed split against the model (names the file on mismatch)."""
    m = cfg.model
    if not isinstance(split, PrecompSplit):
        if m.image_encoder != "cnn":
            raise ZskError(f"data.format={cfg.data.format} reads image files ({split.source}), but "
                           "model.image_encoder=precomp encodes feature files; set model.image_encoder=cnn")
        return
    if m.image_encoder == "cnn":
        raise ZskError(f"data.format=precomp reads feature files ({split.ims_path}), but model.image_encoder=cnn "
                       "encodes image files; set data.format=karpathy (or iapr) or model.image_encoder=precomp")
    pool, _ = m.resolved()
    shape = tuple(split.features.shape[1:])
    if m.pairwise and shape != (m.num_regions, m.img_dim):
        raise ZskError(f"{split.ims_path}: per-image features {shape}, but {m.base.upper()} reads (model.num_regions, "
                       f"model.img_dim) = ({m.num_regions}, {m.img_dim}) regions (its attention BatchNorm is per "
                       "region); set them to the file's shape")
    if pool == "flatten":
        want = (m.num_regions, m.img_dim) if len(shape) == 2 else (m.img_dim * m.num_regions,)
        if shape != want:
            raise ZskError(f"{split.ims_path}: per-image features {shape} do not match the flattened encoder's "
                           f"(model.num_regions={m.num_regions}, model.img_dim={m.img_dim}); set them to the file's shape")
    elif shape[-1] != m.img_dim:
        raise ZskError(f"{split.ims_path}: feature width {shape[-1]} does not match model.img_dim={m.img_dim}; "
                       f"set model.img_dim={shape[-1]}")


def make_dataset(cfg: Config, split, tokenizer, lsa, train: bool) -> PrecompPairs | RawPairs:
    """Caption-indexed (image, caption) pairs of a split, with augmentation and LSA rows in training."""
    d = cfg.data
    if isinstance(split, PrecompSplit):
        return PrecompPairs(split, tokenizer, lsa, train, d.region_drop if train else 0.0,
                            d.token_aug if train else 0.0, d.max_words, cfg.runtime.seed)
    if d.region_drop > 0 or d.token_aug > 0:
        raise ZskError("data.region_drop / data.token_aug apply to precomputed features only (data.format precomp)")
    return RawPairs(split, tokenizer, cfg.model.image_size, lsa, train, d.max_words)


def _with_lr_update(tcfg: TrainConfig, optim_steps_per_epoch: int) -> TrainConfig:
    """VSE++'s decay ``lr * gamma ** (epoch // lr_update)`` as step-schedule milestones."""
    if tcfg.lr_update <= 0:
        return tcfg
    if tcfg.schedule not in ("constant", "step"):
        raise ZskError(f"train.lr_update ({tcfg.lr_update} epochs) defines a step schedule; it cannot be combined "
                       f"with train.schedule={tcfg.schedule} (set train.lr_update=0 or train.schedule=step)")
    if tcfg.epochs is not None:
        total = tcfg.epochs * optim_steps_per_epoch
    elif tcfg.steps is not None:
        total = tcfg.steps
    else:
        raise ZskError("the recipe sets neither train.steps nor train.epochs: set one (e.g. --set train.epochs=30)")
    every = tcfg.lr_update * optim_steps_per_epoch
    return dataclasses.replace(tcfg, schedule="step", milestones=list(range(every, total, every)))


def vocabulary_captions(cfg: Config, train_split) -> list[str]:
    """Captions the word vocabulary is counted over (``data.vocab_splits``; training only by default)."""
    caps: list[str] = []
    for name in cfg.data.vocab_splits:
        caps += train_split.captions if name == cfg.data.train_split else load_split(cfg.data, name).captions
    if not caps:
        raise ZskError("data.vocab_splits is empty; list at least the training split")
    return caps


def param_groups(model: VSEModel, cfg: Config) -> list[dict]:
    """BERT trains at ``lr * model.bert_lr_mult`` (VSE infinity); everything else at ``lr``. With
    ``train.captioner_params: twice`` VSRN's caption generator is a group with ``"repeat": 2``: the official
    VSRN_LSEH optimizer list holds it twice (the Trainer then steps it twice and counts it twice in the clip)."""
    captioner = getattr(model, "captioner", None)
    if cfg.train.captioner_params == "twice":
        if captioner is None:
            raise ZskError("train.captioner_params=twice needs VSRN's caption generator (model.base=vsrn)")
        ids = {id(p) for p in captioner.parameters()}
        return [{"params": [p for p in model.parameters() if id(p) not in ids]},
                {"params": list(captioner.parameters()), "repeat": 2}]
    bert = getattr(model.text_encoder, "bert", None)
    if bert is None:
        return [{"params": list(model.parameters())}]
    bert_ids = {id(p) for p in bert.parameters()}
    rest = [p for p in model.parameters() if id(p) not in bert_ids]
    return [{"params": rest}, {"params": list(bert.parameters()), "lr_mult": cfg.model.bert_lr_mult}]


def batch_scores(m: nn.Module, batch: dict) -> tuple[Tensor, Tensor | None]:
    """(image x caption similarity matrix of a training batch, auxiliary loss or None): the cosine of the
    two embeddings (VSE++, VSE infinity), plus VSRN's caption loss, or SGR/SAF's pair scores."""
    args = (batch["image"], batch["img_lengths"], batch["tokens"], batch["cap_lengths"])
    inner = getattr(m, "module", m)  # DistributedDataParallel
    if getattr(inner, "captioner", None) is not None:
        return m(*args, with_caption_loss=True)
    if getattr(inner, "pairwise", False):
        return m(*args).float(), None
    img, cap = m(*args)
    return img.float() @ cap.float().T, None


def make_step_fn(loss_fn: RankingLoss, optim_per_epoch: int) -> Callable[[nn.Module, dict, int], dict[str, Tensor]]:
    """step_fn(model, batch, step) for the trainer: the batch similarity matrix and its ranking loss (the
    epoch, ``step // optim_per_epoch``, ends VSE infinity's sum-over-negatives warm-up); VSRN adds its
    caption-generation loss (logged as ``caption_loss``)."""

    def step_fn(m: nn.Module, batch: dict, step: int) -> dict[str, Tensor]:
        scores, aux = batch_scores(m, batch)
        epoch = step // optim_per_epoch
        loss = loss_fn.from_scores(scores, batch["img_index"], batch.get("lsa"), epoch, batch.get("index"))
        if aux is None:
            return {"loss": loss}
        return {"loss": loss + aux, "rank_loss": loss.detach(), "caption_loss": aux.detach()}

    return step_fn


def train(ctx: RunContext) -> dict[str, Any]:
    """Train with the recipe's loss; keep the best validation rsum; report epochs to the best model."""
    from zsk.tasks.retrieve.evaluate import flat_metrics, score_split

    cfg: Config = ctx.cfg
    cfg.model.resolved()
    train_split = load_split(cfg.data, cfg.data.train_split)
    val_split = subset_split(load_split(cfg.data, cfg.data.val_split), cfg.eval.val_max_images)
    for s in (train_split, val_split):
        check_split_features(cfg, s)
    tokenizer = build_tokenizer(cfg, vocabulary_captions(cfg, train_split))
    loss_fn = RankingLoss(cfg.train.loss)
    lsa = training_lsa(cfg, train_split) if loss_fn.needs_lsa else None
    dataset = make_dataset(cfg, train_split, tokenizer, lsa, train=True)
    log(f"retrieve: {train_split.num_images} train images / {train_split.num_captions} captions, "
        f"{val_split.num_images} val images; loss {cfg.train.loss.kind}; vocabulary {len(tokenizer)}")
    collate = Collate(tokenizer.pad_id)
    built: list[Trainer] = []

    def build(tcfg: TrainConfig) -> Trainer:
        model = build_model(cfg, len(tokenizer))
        steps_per_epoch = batches_per_epoch(len(dataset), tcfg.batch_size)
        optim_per_epoch = max(1, steps_per_epoch // grad_accum_for(tcfg))

        def loader_fn(epoch: int, start: int):
            return make_loader(dataset, tcfg.batch_size, epoch=epoch, seed=cfg.runtime.seed,
                               workers=cfg.runtime.workers, collate_fn=collate, start_batch=start)

        def eval_fn(m: nn.Module) -> dict[str, float]:
            return flat_metrics(score_split(m, val_split, tokenizer, cfg, ctx.device))

        extra = {"vocab": tokenizer.words if isinstance(tokenizer, Vocabulary) else [],
                 "pretrained": {"backbone": cfg.model.backbone, "weights": cfg.model.pretrained}
                 if frozen_prefixes(cfg) else {}}
        trainer = Trainer(ctx, model, _with_lr_update(tcfg, optim_per_epoch), make_step_fn(loss_fn, optim_per_epoch),
                          loader_fn, steps_per_epoch, eval_fn, param_groups=param_groups(model, cfg), extra=extra,
                          exclude_prefixes=frozen_prefixes(cfg))
        built.append(trainer)
        return trainer

    metrics = run_stages(ctx, [Stage("", build)])
    trainer = built[-1]
    best = dict(trainer.best)
    summary = {"best_rsum": best.get("value"), "best_step": best.get("step")}
    if best.get("step") is not None:
        # the paper's headline: epochs needed to reach the best model (LSEH vs L_MH)
        summary["epochs_to_best"] = best["step"] / trainer.optim_steps_per_epoch
    if dist.is_main():
        path = ctx.run_dir / "eval.json"
        doc = json.loads(path.read_text()) if path.is_file() else {}
        doc.update(summary)
        path.write_text(json.dumps(doc, indent=2))
        log(f"best rsum {summary['best_rsum']} after {summary.get('epochs_to_best', float('nan')):.2f} epochs")
    return {**metrics, **summary}
