"""Recipe schema of ``zsk segment`` (ZegCLIP). Defaults are the paper's VOC inductive setting."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, ClassVar, Literal

from zsk.core.errors import ZskError
from zsk.core.recipe import RuntimeConfig
from zsk.core.trainer import TrainConfig as CoreTrainConfig


@dataclass
class DataConfig:
    """Which benchmark, where it lives, and the mmseg augmentation pipeline."""

    dataset: Literal["voc", "coco_stuff", "context", "folder"] = "voc"
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


@dataclass
class ClipConfig:
    """The frozen CLIP: open_clip name + pretrained tag or local file (empty: random weights)."""

    name: str = "ViT-B-16"
    pretrained: str | None = "openai"
    quick_gelu: bool | None = None  # None: what the pretrained tag asks for (QuickGELU for OpenAI; files: True)


@dataclass
class TextConfig:
    """Class text embeddings: computed with the CLIP text encoder, or read from a .npy file."""

    templates: str | list[str] = "single"  # single | multi | explicit list of templates with {}
    embeddings_file: str | None = None  # precomputed (C, D) .npy in the dataset's class order; a relative
    # path is looked up under data.root first


@dataclass
class ModelConfig:
    """ZegCLIP: deep prompt tuning, relationship descriptor, 3-layer cross-attention decoder."""

    clip: ClipConfig = field(default_factory=ClipConfig)
    text: TextConfig = field(default_factory=TextConfig)
    num_prompts: int = 10  # N deep prompt tokens per layer
    prompt_dropout: float = 0.1
    drop_path_rate: float = 0.1
    decoder_layers: int = 3
    decoder_heads: int = 8
    decoder_ffn_ratio: int = 4
    decoder_dropout: float = 0.1
    # std of the truncated-normal init of the head's linear layers (0.02 official). With L2-normalised
    # features the initial mask logits are ~0 and grow slowly; tiny demo models use a larger value.
    head_init_std: float = 0.02
    # The official backbone adds the class embedding to the CLS token twice (once as the token, once
    # inside its position embedding). Off by default (the intended ViT input); on reproduces the code.
    cls_embedding_twice: bool = False


@dataclass
class LossConfig:
    """Non-mutually-exclusive loss: sigmoid focal + dice per class mask."""

    focal_weight: float = 100.0  # official code; an older config comment says 20
    dice_weight: float = 1.0
    focal_alpha: float = 0.25
    focal_gamma: float = 2.0
    focal_ignore: Literal["negative", "mask"] = "negative"  # official: 255 pixels are negatives for every class
    deep_supervision: bool = False  # official: the aux layer losses are configured but not wired


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
    effective_batch: int | None = None  # keep batch x accumulation x GPUs at this size (16 in the paper)
    backbone_lr_mult: float = 10.0
    head_lr_mult: float = 10.0
    norm_decay_mult: float = 0.0
    loss: LossConfig = field(default_factory=LossConfig)


@dataclass
class EvalConfig:
    """Inference: keep-ratio resize, sliding window or whole image, seen-score calibration."""

    mode: Literal["slide", "whole"] = "slide"
    crop_size: int = 512
    stride: int = 426
    img_scale: tuple[int, int] = (2048, 512)
    seen_calibration: float | None = None  # None: 0.1 for inductive models, 0 otherwise
    max_images: int | None = None  # evaluate on the first N images only (smoke runs)

    def __post_init__(self) -> None:
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
