"""AlignFormer training (LGFormer ``train.py``): AdamW over four parameter groups (Swin norms and position
tables without weight decay, the rest of the backbone, the decoders, BERT's encoder layers), poly decay
per iteration, one random sentence per ref per epoch, evaluation on val after every epoch and the best
checkpoint by oIoU; one stage through the shared Trainer."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch
from torch import nn

from zsk.core.checkpoint import read_state_dict
from zsk.core.errors import ZskError
from zsk.core.progress import log
from zsk.core.run import RunContext
from zsk.core.stages import Stage, run_stages
from zsk.core.trainer import TrainConfig, Trainer, make_loader
from zsk.tasks.refer.config import Config
from zsk.tasks.refer.data import Tokenizer, TrainSet, check_root, refs_of
from zsk.tasks.refer.losses import refer_loss
from zsk.tasks.refer.model import AlignFormer

NO_DECAY_KEYS = ("norm", "absolute_pos_embed", "relative_position_bias_table")


def build_text_encoder(cfg: Config, pretrained: bool) -> nn.Module:
    """BERT without its pooler: pretrained weights from ``model.text_encoder`` (name or folder) when
    ``pretrained``, otherwise a random model of the recipe's sizes (BertConfig defaults = bert-base)."""
    from transformers import BertConfig, BertModel

    m = cfg.model
    if pretrained and m.text_encoder:
        from zsk.models.hf import load_hf_model

        bert = load_hf_model(m.text_encoder, option="model.text_encoder", loader=BertModel, add_pooling_layer=False)
        if bert.config.hidden_size != m.text_dim or bert.config.vocab_size != m.vocab_size:
            raise ZskError(f"model.text_encoder {m.text_encoder!r} has hidden size {bert.config.hidden_size} and "
                           f"{bert.config.vocab_size} tokens; set model.text_dim / model.vocab_size to match")
        return bert
    config = BertConfig(vocab_size=m.vocab_size, hidden_size=m.text_dim, num_hidden_layers=m.text_layers,
                        num_attention_heads=m.text_heads, intermediate_size=m.text_ffn)
    return BertModel(config, add_pooling_layer=False)


HUB_PREFIXES = ("hf-hub:", "timm/")
HUB_FILES = ("model.safetensors", "pytorch_model.bin")


def swin_weights_file(spec: str) -> Path:
    """The local file of ``model.swin_weights``: a path, or a Hugging Face hub id of timm weights
    (``timm/swin_base_patch4_window12_384.ms_in22k`` or ``hf-hub:owner/name``) taken from the HF cache,
    or downloaded into it when the hub is reachable (:func:`zsk.models.hf.hub_file`)."""
    p = Path(spec).expanduser()
    if p.is_file() or not spec.startswith(HUB_PREFIXES):
        return p
    from zsk.models.hf import hub_file

    return hub_file(spec.removeprefix("hf-hub:"), HUB_FILES, "model.swin_weights")


def load_swin_weights(model: AlignFormer, path: str) -> None:
    """Swin weights from a microsoft/Swin-Transformer ``.pth`` (e.g. swin_base_patch4_window12_384_22k.pth,
    as the official training script), a timm state dict (``.pth``, ``.bin`` or ``.safetensors``) or a timm
    hub id (:func:`swin_weights_file`), converted by timm's ``checkpoint_filter_fn``."""
    from timm.models.swin_transformer import checkpoint_filter_fn

    p = swin_weights_file(path)
    state = read_state_dict(p, "model.swin_weights:", "download swin_base_patch4_window12_384_22k.pth "
                            "(microsoft/Swin-Transformer), give a timm hub id (timm/swin_base_patch4_window12_384."
                            "ms_in22k) or set model.swin_weights=null for random init", unwrap=False)
    swin = model.backbone.swin
    state = {k: v for k, v in checkpoint_filter_fn(state, swin).items() if not k.startswith(("head", "norm."))}
    own = swin.state_dict()
    bad = [k for k, v in state.items() if k in own and own[k].shape != v.shape]
    if bad:
        raise ZskError(f"model.swin_weights: {p}: {bad[0]} has shape {tuple(state[bad[0]].shape)}, the model "
                       f"{tuple(own[bad[0]].shape)}; check model.embed_dim / depths / window_size")
    result = swin.load_state_dict(state, strict=False)
    if not set(state) & set(own):
        raise ZskError(f"model.swin_weights: {p} has no Swin parameter of this model")
    missing = [k for k in result.missing_keys if "relative_position_index" not in k]
    if missing:
        log(f"swin weights {p.name}: {len(missing)} parameters not in the file (e.g. {missing[0]}) keep their init")


def build_model(cfg: Config, pretrained: bool = False) -> AlignFormer:
    """AlignFormer as the recipe describes; ``pretrained`` loads BERT and the Swin weights file."""
    m = cfg.model
    con = cfg.train.loss.contrastive
    model = AlignFormer(build_text_encoder(cfg, pretrained), m.embed_dim, m.depths, m.num_heads, m.window_size,
                        m.drop_path, m.text_dim, cfg.data.max_tokens, m.fusion_heads, m.fusion_dropout, m.mask_dim,
                        m.enc_layers, m.enc_heads, m.enc_ffn, m.enc_points, m.word_attn_heads, m.word_attn_ffn,
                        m.gn_groups, m.dec_layers, m.dec_heads, m.dec_ffn, cfg.data.image_size, m.swin_padding,
                        con.dim if con.weight > 0 else None, m.gate_init)
    if pretrained and m.swin_weights:
        load_swin_weights(model, m.swin_weights)
    if not m.train_text_embeddings:
        model.text_encoder.embeddings.requires_grad_(False)
    return model


def param_groups(model: AlignFormer) -> list[dict[str, Any]]:
    """LGFormer's groups: backbone (with VLBA) without decay for norms / position tables, backbone with
    decay, the decoders, BERT (its encoder layers unless the embeddings are trained too)."""
    no_decay, decay, decoder, text = [], [], [], []
    for name, p in model.named_parameters():
        if not p.requires_grad:
            continue
        if name.startswith("backbone."):
            (no_decay if any(k in name for k in NO_DECAY_KEYS) else decay).append(p)
        elif name.startswith("text_encoder."):
            text.append(p)
        else:
            decoder.append(p)
    return [{"params": no_decay, "weight_decay": 0.0}, {"params": decay}, {"params": decoder}, {"params": text}]


def make_step_fn(cfg: Config):
    """step_fn(model, batch, step): forward and the mask (+ contrastive) loss terms."""
    loss_cfg = cfg.train.loss

    def step_fn(model: nn.Module, batch: dict[str, torch.Tensor], step: int) -> dict[str, torch.Tensor]:
        out = model(batch["image"], batch["input_ids"], batch["attention_mask"])
        return refer_loss(out, batch["mask"], loss_cfg, getattr(model, "module", model).contrast_proj)

    return step_fn


def make_tokenizer(cfg: Config) -> Tokenizer:
    tok = Tokenizer.from_spec(cfg.model.tokenizer, cfg.data.root, cfg.data.max_tokens, cfg.model.lowercase)
    n = len(tok.vocab())
    if n > cfg.model.vocab_size:
        raise ZskError(f"model.tokenizer has {n} tokens but model.vocab_size = {cfg.model.vocab_size}; raise it")
    return tok


def train(ctx: RunContext) -> dict[str, Any]:
    """Train AlignFormer with the recipe in ``ctx``; returns the final (best-checkpoint) evaluation metrics."""
    from zsk.tasks.refer.evaluate import METRICS, evaluate_refs, preview_refs

    cfg: Config = ctx.cfg
    check_root(cfg.data)
    tokenizer = make_tokenizer(cfg)
    items = refs_of(cfg, cfg.data.train_split, cfg.data.max_train_refs)
    eval_items = refs_of(cfg, cfg.eval.split, cfg.eval.max_refs) if cfg.eval.split else []
    log(f"refer: {len(items)} {cfg.data.train_split} refs ({sum(len(i.sentences) for i in items)} expressions), "
        f"{len(eval_items)} {cfg.eval.split} refs for evaluation")
    dataset = TrainSet(items, tokenizer, cfg.data)
    seed = cfg.runtime.seed
    model = build_model(cfg, pretrained=True)
    extra = {"vocab": tokenizer.vocab(), "lowercase": cfg.model.lowercase, "dataset": cfg.data.dataset,
             "split_by": cfg.data.split_by}

    def build(tcfg: TrainConfig) -> Trainer:
        steps_per_epoch = len(dataset) // (tcfg.batch_size * ctx.dist.world_size)
        if steps_per_epoch < 1:
            raise ZskError(f"train.batch_size = {tcfg.batch_size} is larger than the {len(dataset)} training refs")

        def loader_fn(epoch: int, start_batch: int):
            return make_loader(dataset, tcfg.batch_size, epoch=epoch, seed=seed, start_batch=start_batch,
                               workers=cfg.runtime.workers)

        def eval_fn(m: nn.Module) -> dict[str, float]:
            res = evaluate_refs(m, cfg, eval_items, tokenizer, ctx.device)
            return {k: res[k] for k in METRICS}

        def preview_fn(m: nn.Module) -> dict[str, Any]:
            return preview_refs(m, cfg, eval_items, tokenizer, ctx.device)

        return Trainer(ctx, model, tcfg, make_step_fn(cfg), loader_fn, steps_per_epoch,
                       eval_fn=eval_fn if eval_items else None, param_groups=param_groups(model), extra=extra,
                       preview_fn=preview_fn if eval_items else None)

    return run_stages(ctx, [Stage("", build)])
