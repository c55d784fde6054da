"""Recipe schema of ``zsk segment`` (ZegCLIP). Defaults are the paper's VOC inductive setting."""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any, ClassVar, Literal

from zsk.core.errors import ZskError, require
from zsk.core.recipe import RuntimeConfig
from zsk.core.trainer import TrainConfig as CoreTrainConfig


def _finite(*values: float) -> bool:
    return all(isinstance(v, (int, float)) and math.isfinite(v) for v in values)


def _unit(key: str, value: float, top_open: bool = False) -> None:
    """``value`` must be a probability: in [0, 1] (or [0, 1) with ``top_open``)."""
    ok = _finite(value) and 0.0 <= value and (value < 1.0 if top_open else value <= 1.0)
    require(ok, key, "in [0, 1)" if top_open else "in [0, 1]", value)


def _scale(key: str, scale: tuple[int, int]) -> None:
    require(len(scale) == 2 and min(scale) >= 1, key, "two sizes >= 1 (long, short), e.g. [2048, 512]", scale)


@dataclass
class DataConfig:
    """Which benchmark, where it lives, and the mmseg augmentation pipeline."""

    dataset: Literal["voc", "coco_stuff", "context", "context60", "folder"] = "voc"
    root: str = "data/VOCdevkit/VOC2012"
    train_split: str = "train_aug"
    val_split: str = "val"
    class_names_file: str | None = None  # folder datasets: one class a line (default <root>/classes.txt)
    reduce_zero_label: bool | None = None  # None: the benchmark's own (VOC, Context: yes)
    unseen_classes: list[str] | None = None  # None: the benchmark's zero-shot split (splits.py)
    crop_size: int = 512
    img_scale: tuple[int, int] = (2048, 512)
    ratio_range: tuple[float, float] = (0.5, 2.0)
    cat_max_ratio: float = 0.75
    flip_prob: float = 0.5
    photometric: bool = True
    normalize: Literal["imagenet", "clip"] = "imagenet"  # ZegCLIP normalises with ImageNet statistics

    def __post_init__(self) -> None:
        for key in ("root", "train_split", "val_split"):
            require(bool(str(getattr(self, key)).strip()), f"data.{key}", "a non-empty name", getattr(self, key))
        require(self.crop_size >= 1, "data.crop_size", ">= 1 (ZegCLIP: 512)", self.crop_size)
        _scale("data.img_scale", self.img_scale)
        lo, hi = self.ratio_range
        require(_finite(lo, hi) and 0.0 < lo <= hi, "data.ratio_range", "[low, high] with 0 < low <= high "
                 "(mmseg: [0.5, 2.0])", self.ratio_range)
        require(_finite(self.cat_max_ratio) and 0.0 < self.cat_max_ratio <= 1.0, "data.cat_max_ratio",
                 "in (0, 1] (1: no limit; mmseg: 0.75)", self.cat_max_ratio)
        _unit("data.flip_prob", self.flip_prob)
        if self.unseen_classes is not None and len(set(self.unseen_classes)) != len(self.unseen_classes):
            raise ZskError(f"data.unseen_classes repeats a class: {list(self.unseen_classes)}")


@dataclass
class ClipConfig:
    """The frozen CLIP: open_clip name + pretrained tag or local file (empty: random weights)."""

    name: str = "ViT-B-16"
    pretrained: str | None = "openai"
    quick_gelu: bool | None = None  # None: what the pretrained tag asks for (QuickGELU for OpenAI; files: True)

    def __post_init__(self) -> None:
        require(bool(self.name.strip()), "model.clip.name", "an open_clip model name (e.g. ViT-B-16)", self.name)


@dataclass
class TextConfig:
    """Class text embeddings: computed with the CLIP text encoder, or read from a .npy file."""

    templates: str | list[str] = "single"  # single | multi | explicit list of templates with {}
    embeddings_file: str | None = None  # precomputed (C, D) .npy in the dataset's class order; a relative
    # path is looked up under data.root first

    def __post_init__(self) -> None:
        t = self.templates
        if isinstance(t, str):
            require(t in ("single", "multi"), "model.text.templates", "single, multi or a list of templates "
                     "with {} (e.g. ['a photo of a {}.'])", t)
        else:
            require(bool(t) and all(isinstance(x, str) and "{}" in x for x in t), "model.text.templates",
                     "a non-empty list of templates that each contain {} (e.g. ['a photo of a {}.'])", t)


@dataclass
class ModelConfig:
    """ZegCLIP: deep prompt tuning, relationship descriptor, 3-layer cross-attention decoder."""

    clip: ClipConfig = field(default_factory=ClipConfig)
    text: TextConfig = field(default_factory=TextConfig)
    num_prompts: int = 10  # N deep prompt tokens per layer
    prompt_dropout: float = 0.1
    # Stochastic depth in the frozen ViT. The official configs set 0.1 and the official block builds a
    # DropPath, but its forward never calls it (models/backbone/utils.py, ResidualAttentionBlock): the
    # paper's models were trained without it. > 0 is a zsk option.
    drop_path_rate: float = 0.0
    decoder_layers: int = 3
    decoder_heads: int = 8
    decoder_ffn_ratio: int = 4
    decoder_dropout: float = 0.1
    # std of the truncated-normal init of the head's linear layers (0.02 official). With L2-normalised
    # features the initial mask logits are ~0 and grow slowly; tiny demo models use a larger value.
    head_init_std: float = 0.02
    # The official backbone adds the class embedding to the CLS token twice (once as the token, once
    # inside its position embedding; models/backbone/img_encoder.py). That is the model the paper's
    # numbers and the released checkpoints come from, so it is the default; false gives CLIP's own
    # single add (the CLS input CLIP was pretrained with), a zsk option.
    cls_embedding_twice: bool = True

    def __post_init__(self) -> None:
        require(self.num_prompts >= 1, "model.num_prompts", ">= 1 (ZegCLIP: 10 deep prompts, 100 on COCO-Stuff)",
                 self.num_prompts)
        _unit("model.prompt_dropout", self.prompt_dropout, top_open=True)
        _unit("model.drop_path_rate", self.drop_path_rate, top_open=True)
        _unit("model.decoder_dropout", self.decoder_dropout, top_open=True)
        require(self.decoder_layers >= 1, "model.decoder_layers", ">= 1 (ZegCLIP: 3)", self.decoder_layers)
        require(self.decoder_heads >= 1, "model.decoder_heads", ">= 1 (ZegCLIP: 8)", self.decoder_heads)
        require(self.decoder_ffn_ratio >= 1, "model.decoder_ffn_ratio", ">= 1 (ZegCLIP: 4)", self.decoder_ffn_ratio)
        require(_finite(self.head_init_std) and self.head_init_std > 0, "model.head_init_std", "> 0 (ZegCLIP: 0.02)",
                 self.head_init_std)


@dataclass
class LossConfig:
    """Non-mutually-exclusive loss: sigmoid focal + dice per class mask."""

    focal_weight: float = 100.0  # official code; an older config comment says 20
    dice_weight: float = 1.0
    focal_alpha: float = 0.25
    focal_gamma: float = 2.0
    focal_ignore: Literal["negative", "mask"] = "negative"  # official: 255 pixels are negatives for every class
    deep_supervision: bool = False  # official: the aux layer losses are configured but not wired

    def __post_init__(self) -> None:
        for key in ("focal_weight", "dice_weight", "focal_gamma"):
            value = getattr(self, key)
            require(_finite(value) and value >= 0, f"train.loss.{key}", "a finite number >= 0", value)
        require(self.focal_weight + self.dice_weight > 0, "train.loss.focal_weight",
                 "> 0 when train.loss.dice_weight is 0 (no loss left to train with)", self.focal_weight)
        _unit("train.loss.focal_alpha", self.focal_alpha)


@dataclass
class TrainConfig(CoreTrainConfig):
    """Core optimisation keys plus ZegCLIP's setting, loss and learning-rate multipliers.

    The transductive setting trains in two stages, ``inductive`` then ``self_training``; each takes
    ``train.*`` with its ``train.stages.<name>`` block on top (e.g. ``steps: 10000`` each for VOC).
    The inductive stage hands on its last weights unless its block sets ``select`` (the official
    self-training config starts from ``iter_10000``, the end of the inductive schedule).
    """

    STAGES: ClassVar[tuple[str, ...]] = ("inductive", "self_training")
    STAGE_DEFAULTS: ClassVar[dict[str, dict[str, Any]]] = {"inductive": {"select": "last"}}

    setting: Literal["inductive", "transductive", "fully"] = "inductive"
    backbone_lr_mult: float = 10.0
    head_lr_mult: float = 10.0
    # weight-decay multiplier of norm parameters: 1 as in the official runs (their configs give 'norm'/'ln'
    # decay_mult 0, but mmcv's custom_keys take only the first, longest key in a name: 'backbone' and
    # 'head' shadow them); 0 is what those configs meant, a zsk option
    norm_decay_mult: float = 1.0
    loss: LossConfig = field(default_factory=LossConfig)

    def __post_init__(self) -> None:
        super().__post_init__()  # the shared train.* checks and the stage blocks
        for key in ("backbone_lr_mult", "head_lr_mult", "norm_decay_mult"):
            value = getattr(self, key)
            require(_finite(value) and value >= 0, f"train.{key}", "a finite number >= 0", value)


@dataclass
class EvalConfig:
    """Inference: keep-ratio resize, sliding window or whole image, seen-score calibration."""

    mode: Literal["slide", "whole"] = "slide"
    crop_size: int = 512
    stride: int = 426
    img_scale: tuple[int, int] = (2048, 512)
    # mmseg Resize(keep_ratio=True, min_size=512) of every ZegCLIP test pipeline: the short side goes to
    # max(min(img_scale), min_size) and the long side follows the aspect ratio, past max(img_scale).
    # None: plain keep-ratio rescale into img_scale.
    min_size: int | None = 512
    seen_calibration: float | None = None  # None: 0.1 for inductive models, 0 otherwise
    max_images: int | None = None  # evaluate on the first N images only (smoke runs)

    def __post_init__(self) -> None:
        require(self.crop_size >= 1, "eval.crop_size", ">= 1 (ZegCLIP: 512)", self.crop_size)
        _scale("eval.img_scale", self.img_scale)
        require(self.min_size is None or self.min_size >= 1, "eval.min_size", ">= 1 (or unset; ZegCLIP: 512)",
                 self.min_size)
        require(self.seen_calibration is None or _finite(self.seen_calibration), "eval.seen_calibration",
                 "a finite number (or unset: 0.1 for inductive models)", self.seen_calibration)
        require(self.max_images is None or self.max_images >= 1, "eval.max_images", ">= 1 (or unset: every image)",
                 self.max_images)
        if self.mode == "slide" and not 1 <= self.stride <= self.crop_size:
            raise ZskError(f"eval.stride={self.stride} must be between 1 and eval.crop_size={self.crop_size} "
                           "(a larger stride leaves pixels no window covers)")


@dataclass
class Config:
    data: DataConfig = field(default_factory=DataConfig)
    model: ModelConfig = field(default_factory=ModelConfig)
    train: TrainConfig = field(default_factory=TrainConfig)
    eval: EvalConfig = field(default_factory=EvalConfig)
    runtime: RuntimeConfig = field(default_factory=RuntimeConfig)
