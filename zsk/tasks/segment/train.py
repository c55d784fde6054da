"""ZegCLIP training (Zhou et al., CVPR 2023): the prompted CLIP model, its step function, and the
settings of the paper as stages: inductive or fully supervised (one stage), or transductive, an
inductive stage followed by self-training on online pseudo-labels of the unseen classes."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import replace
from pathlib import Path
from typing import Any

import torch
from torch import Tensor, nn

from zsk.core.errors import ZskError
from zsk.core.progress import log
from zsk.core.run import RunContext
from zsk.core.stages import Stage, run_stages
from zsk.core.trainer import TrainConfig, Trainer, batches_per_epoch, make_loader
from zsk.data.seg_transforms import SegTrainTransform
from zsk.models.clip import (
    CLIPTextEncoder,
    LoadedCLIP,
    cached_class_embeddings,
    load_clip,
    load_npy_embeddings,
    weights_identity,
)
from zsk.tasks.segment import splits
from zsk.tasks.segment.config import Config
from zsk.tasks.segment.data import SegEvalDataset, SegTrainDataset, load_benchmark
from zsk.tasks.segment.losses import NonMutuallyExclusiveLoss, transductive_pseudo_labels
from zsk.tasks.segment.model import PromptedVisionTransformer, ZegCLIP

# Frozen pretrained parts: not copied into checkpoints when they come from pretrained weights.
PRETRAINED_PREFIXES = ("image_encoder.visual.", "text_encoder.")

StepFn = Callable[[nn.Module, Any, int], dict[str, Tensor]]


# ----------------------------------------------------------------------------- model building
def build_model(cfg: Config, pretrained: bool = True) -> tuple[ZegCLIP, LoadedCLIP]:
    """ZegCLIP around the recipe's CLIP (``pretrained=False`` builds random weights, for info/bench)."""
    mc = cfg.model
    loaded = load_clip(mc.clip.name, mc.clip.pretrained if pretrained else None, mc.clip.quick_gelu)
    visual = loaded.model.visual
    patch = visual.conv1.kernel_size[0]
    if cfg.data.crop_size % patch:
        raise ZskError(f"data.crop_size={cfg.data.crop_size} must be a multiple of the CLIP patch size {patch}")
    grid = (cfg.data.crop_size // patch, cfg.data.crop_size // patch)
    encoder = PromptedVisionTransformer(visual, mc.num_prompts, grid, mc.drop_path_rate, mc.prompt_dropout,
                                        mc.cls_embedding_twice)
    embed_dim = int(visual.proj.shape[1])
    text = CLIPTextEncoder(loaded.model, loaded.tokenizer)
    model = ZegCLIP(encoder, text, embed_dim, mc.decoder_layers, mc.decoder_heads, mc.decoder_ffn_ratio,
                    mc.decoder_dropout, mc.head_init_std)
    return model, loaded


def excluded_prefixes(loaded: LoadedCLIP) -> tuple[str, ...]:
    """Prefixes left out of checkpoints: the frozen CLIP when it comes from pretrained weights."""
    return () if loaded.random_init else PRETRAINED_PREFIXES


def text_embeddings_for(model: ZegCLIP, loaded: LoadedCLIP, cfg: Config, class_names: Sequence[str],
                        embeddings_file: str | None = None) -> Tensor:
    """Class embeddings (C, D) on CPU: from ``model.text.embeddings_file`` or the frozen text encoder (cached)."""
    if not class_names:
        raise ZskError("the class name list is empty; give at least one class name")
    if embeddings_file:
        path = Path(embeddings_file).expanduser()
        if not path.is_absolute() and (Path(cfg.data.root).expanduser() / path).is_file():
            path = Path(cfg.data.root).expanduser() / path
        try:
            emb = load_npy_embeddings(path, len(class_names), model.embed_dim)
        except (ValueError, TypeError) as e:  # e.g. an array of strings
            raise ZskError(f"class embedding file {path} (model.text.embeddings_file) does not hold numbers: "
                           f"{e}") from None
        if not torch.isfinite(emb).all():
            rows = torch.nonzero(~torch.isfinite(emb).all(dim=1)).flatten().tolist()
            raise ZskError(f"class embedding file {path} (model.text.embeddings_file) has NaN or inf values in the "
                           f"rows of class(es) {[class_names[i] for i in rows[:5]]}")
        return emb
    assert model.text_encoder is not None
    key = weights_identity(model.text_encoder, loaded.source, loaded.random_init)
    return cached_class_embeddings(model.text_encoder, list(class_names), cfg.model.text.templates, key)


# ----------------------------------------------------------------------------- optimisation
def param_groups(model: ZegCLIP, tcfg: Any) -> list[dict]:
    """AdamW groups: prompts (backbone) and head at their lr multipliers; norm parameters without decay."""
    groups = []
    for part, params in model.trainable_groups().items():
        mult = tcfg.backbone_lr_mult if part == "backbone" else tcfg.head_lr_mult
        norm = [p for n, p in params if "norm" in n]
        rest = [p for n, p in params if "norm" not in n]
        if rest:
            groups.append({"params": rest, "lr_mult": mult, "weight_decay": tcfg.weight_decay})
        if norm:
            groups.append({"params": norm, "lr_mult": mult, "weight_decay": tcfg.weight_decay * tcfg.norm_decay_mult})
    return groups


def make_step_fn(cfg: Config, text: Tensor, self_training_seen: Sequence[int] | Tensor | None = None) -> StepFn:
    """step_fn(model, batch, step): mask logits for the classes of ``text`` and the non-mutually-exclusive
    loss (sigmoid focal + dice). With ``self_training_seen`` (the transductive stage) every pixel that is
    not a seen class takes the online pseudo-label of :func:`transductive_pseudo_labels`."""
    lc = cfg.train.loss
    criterion = NonMutuallyExclusiveLoss(lc.focal_weight, lc.dice_weight, lc.focal_alpha, lc.focal_gamma,
                                         lc.focal_ignore)

    def step_fn(m: nn.Module, batch: dict[str, Tensor], step: int) -> dict[str, Tensor]:
        logits = m(batch["image"], text, all_layers=lc.deep_supervision)
        labels = batch["label"]
        if self_training_seen is not None:
            last = logits[-1] if isinstance(logits, list) else logits
            labels = transductive_pseudo_labels(last, labels, self_training_seen)
        return criterion(logits, labels)

    return step_fn


# ----------------------------------------------------------------------------- the settings as stages
def stage_settings(cfg: Config) -> list[tuple[str, str]]:
    """(stage name, setting it trains in): one unnamed stage for the inductive and fully supervised
    settings; the transductive setting is an ``inductive`` stage, then ``self_training`` (each with its
    ``train.stages.<name>`` block, e.g. its number of steps)."""
    setting = cfg.train.setting
    if setting != "transductive":
        if cfg.train.stages:
            log(f"warning: train.stages.{next(iter(cfg.train.stages))} is ignored: stage blocks apply to the "
                "transductive setting")
        return [("", setting)]
    return [("inductive", "inductive"), ("self_training", "transductive")]


def train(ctx: RunContext) -> dict[str, Any]:
    """Train ZegCLIP in the recipe's setting (inductive, transductive in two stages, or fully supervised)."""
    from zsk.tasks.segment.evaluate import calibration_for, evaluate_model

    stage_list = stage_settings(ctx.cfg)
    cfg: Config = ctx.cfg
    device = ctx.device
    bench = load_benchmark(cfg.data)
    model, loaded = build_model(cfg)
    model.to(device)
    all_text = text_embeddings_for(model, loaded, cfg, bench.class_names, cfg.model.text.embeddings_file)
    seen = list(bench.seen)
    if cfg.train.setting != "fully" and not bench.unseen:
        log("warning: no unseen classes are defined; the zero-shot settings train on every class")
    eval_ds = SegEvalDataset(bench, cfg.data.val_split, cfg.eval.max_images)
    d = cfg.data
    transform = SegTrainTransform((d.crop_size,) * 2, tuple(d.img_scale), tuple(d.ratio_range), d.cat_max_ratio,
                                  d.flip_prob, d.photometric, d.normalize)
    best_metric = cfg.train.best_metric or ("hIoU" if bench.unseen else "mIoU")
    exclude = excluded_prefixes(loaded)

    def builder(stage: str, setting: str) -> Callable[[TrainConfig], Trainer]:
        def build(stage_cfg: TrainConfig) -> Trainer:
            if setting == "inductive":
                lut, text = splits.inductive_label_lut(bench.num_classes, seen), all_text[seen]
            else:
                lut, text = splits.identity_label_lut(bench.num_classes), all_text
            text = text.to(device)
            train_ds = SegTrainDataset(bench, d.train_split, lut, transform)
            tcfg = replace(stage_cfg, best_metric=best_metric)
            calibration = calibration_for(setting, cfg.eval)
            pseudo = torch.as_tensor(seen, device=device) if setting == "transductive" else None

            def loader_fn(epoch: int, start: int):
                return make_loader(train_ds, tcfg.batch_size, epoch=epoch, seed=cfg.runtime.seed,
                                   workers=cfg.runtime.workers, start_batch=start)

            panels: dict[str, Any] = {}  # the evaluation's preview pictures, for the trackers

            def eval_fn(m: nn.Module) -> dict[str, Any]:
                panels.clear()
                return evaluate_model(m, eval_ds, all_text, bench, cfg, calibration, device, cfg.runtime.workers,
                                      panels)

            def preview_fn(m: nn.Module) -> dict[str, Any]:
                return dict(panels)  # made by the evaluation that just ran

            extra = {"class_names": list(bench.class_names), "seen": seen, "unseen": list(bench.unseen),
                     "setting": setting, "text_embeddings": all_text.cpu(), "clip": loaded.source,
                     "clip_random_init": loaded.random_init}
            trainer = Trainer(ctx, model, tcfg, make_step_fn(cfg, text, pseudo), loader_fn,
                              batches_per_epoch(len(train_ds), tcfg.batch_size), eval_fn=eval_fn,
                              param_groups=param_groups(model, tcfg), extra=extra, exclude_prefixes=exclude,
                              stage=stage, find_unused_parameters=True, preview_fn=preview_fn)
            if stage:
                log(f"stage {stage}: {setting} setting, {trainer.total_steps} steps")
            return trainer

        return build

    stages = [Stage(name, builder(name, setting)) for name, setting in stage_list]
    return run_stages(ctx, stages, final_model=model, exclude_prefixes=exclude)
