"""Recipe schema of the refer task (AlignFormer / LGFormer). Defaults are the official LGFormer settings
(ZhichaoWei/LGFormer ``args.py``, ``scrips/train_scripts/train_refcoco.sh``, ``lib/lgformer.py``,
``lib/mask_predictor.py``); the contrastive loss is zsk's reconstruction of the AlignFormer abstract."""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Literal

from zsk.core.errors import ZskError
from zsk.core.recipe import RuntimeConfig
from zsk.core.trainer import TrainConfig as CoreTrainConfig
from zsk.core.trainer import check_ranges

SPLITS_BY = {"refcoco": ("unc", "google"), "refcoco+": ("unc",), "refcocog": ("umd", "google"),
             "refclef": ("unc", "berkeley")}


@dataclass
class DataConfig:
    """The ``refer`` layout (lichengunc/refer, used by LAVT and LGFormer): ``{root}/{dataset}/refs({split_by}).p``,
    ``{root}/{dataset}/instances.json`` and the COCO train2014 images under ``image_dir``."""

    root: str = "data/refer"
    dataset: Literal["refcoco", "refcoco+", "refcocog", "refclef"] = "refcoco"
    split_by: Literal["unc", "umd", "google", "berkeley"] = "unc"
    image_dir: str = "{root}/images/mscoco/images/train2014"
    train_split: str = "train"
    image_size: int = 480  # images and masks resized to a square (no other augmentation)
    max_tokens: int = 20  # BERT tokens per expression, [CLS]/[SEP] included, truncated after encoding
    mean: tuple[float, float, float] = (0.485, 0.456, 0.406)
    std: tuple[float, float, float] = (0.229, 0.224, 0.225)
    # a ref's mask is the union of its annotation's parts; "official" keeps refer.getMask's sum == 1, which
    # drops pixels where two polygons of one annotation overlap (LAVT/LGFormer dataset_refer_bert.py)
    mask_parts: Literal["union", "official"] = "union"
    max_train_refs: int | None = None  # the first N training refs (quick runs)

    def __post_init__(self) -> None:
        if self.split_by not in SPLITS_BY[self.dataset]:
            raise ZskError(f"data.split_by = {self.split_by!r} does not exist for {self.dataset}; choose one of "
                           f"{list(SPLITS_BY[self.dataset])}")
        if self.image_size < 64 or self.image_size % 32:
            raise ZskError(f"data.image_size must be a multiple of 32 (the Swin stride) and at least 64 (VLBA's "
                           f"instance norm needs 2x2 tokens in the last stage), got {self.image_size}")
        if self.max_tokens < 3:
            raise ZskError(f"data.max_tokens must be >= 3 ([CLS], a word, [SEP]), got {self.max_tokens}")
        if any(s <= 0 for s in self.std):
            raise ZskError(f"data.std must be positive, got {list(self.std)}")
        check_ranges("data", self, at_least_one=("max_train_refs",))


@dataclass
class ModelConfig:
    """Swin image encoder with VLBA after every stage, BERT text encoder, MSDeformAttn pixel decoder with
    pixel-to-word attention, and the linguistic query decoder (LGFormer ``lib/``)."""

    # Swin (LGFormer swin_cfgs['base'], window 12, drop-path 0.3)
    embed_dim: int = 128
    depths: list[int] = field(default_factory=lambda: [2, 2, 18, 2])
    num_heads: list[int] = field(default_factory=lambda: [4, 8, 16, 32])
    window_size: int = 12
    drop_path: float = 0.3
    # the official Swin pads to whole windows and then shifts; timm shifts and then pads (they differ
    # where a stage's size is not a multiple of the window: 30 and 15 at 480 px)
    swin_padding: Literal["pad_then_shift", "timm"] = "pad_then_shift"
    # a Swin checkpoint (.pth of microsoft/Swin-Transformer, timm .pth/.safetensors) or a timm hub id
    # (timm/swin_base_patch4_window12_384.ms_in22k); null = random
    swin_weights: str | None = None
    # BERT: a Hugging Face name or folder; null = random init from the sizes below (tests, demo)
    text_encoder: str | None = "bert-base-uncased"
    tokenizer: str = "bert-base-uncased"  # name, folder, or a vocab.txt file ({root} is data.root)
    lowercase: bool = True  # vocab.txt tokenizers only (bert-base-uncased lowercases)
    text_dim: int = 768
    text_layers: int = 12
    text_heads: int = 12
    text_ffn: int = 3072
    vocab_size: int = 30522
    # the official optimizer holds BERT's 12 encoder layers only, so the word embeddings never change
    train_text_embeddings: bool = False
    fusion_heads: list[int] = field(default_factory=lambda: [1, 1, 1, 1])  # VLBA heads per stage (--mha)
    # the gates are zero-initialised in MMBasicLayer, then the official init_weights draws every Linear of the
    # backbone again (trunc_normal, std 0.02), gates included; zsk keeps the intended zero init by default
    gate_init: Literal["zero", "trunc_normal"] = "zero"
    fusion_dropout: float = 0.0
    # pixel decoder (Mask2Former MSDeformAttnPixelDecoder as configured in LGFormer)
    mask_dim: int = 256
    enc_layers: int = 6
    enc_heads: int = 8
    enc_ffn: int = 1024
    enc_points: int = 4
    word_attn_heads: int = 8
    word_attn_ffn: int = 2048
    gn_groups: int = 32
    # linguistic query decoder
    dec_layers: int = 6
    dec_heads: int = 8
    dec_ffn: int = 2048

    def __post_init__(self) -> None:
        if not (len(self.depths) == len(self.num_heads) == len(self.fusion_heads) == 4):
            raise ZskError("model.depths, model.num_heads and model.fusion_heads need 4 values (one per Swin stage)")
        for i, (h, f) in enumerate(zip(self.num_heads, self.fusion_heads, strict=True)):
            c = self.embed_dim * 2 ** i
            if c % h or c % f or self.text_dim % f:
                raise ZskError(f"model.num_heads[{i}] = {h} / model.fusion_heads[{i}] = {f} must divide the stage "
                               f"width {c} (and fusion heads model.text_dim = {self.text_dim})")
        if self.mask_dim % self.gn_groups or self.mask_dim % self.enc_heads or self.mask_dim % 2:
            raise ZskError(f"model.mask_dim = {self.mask_dim} must be even and divisible by model.gn_groups and "
                           "model.enc_heads")
        if self.text_dim % self.dec_heads or self.mask_dim % self.word_attn_heads:
            raise ZskError("model.dec_heads must divide model.text_dim and model.word_attn_heads model.mask_dim")
        if self.text_dim % self.text_heads:
            raise ZskError(f"model.text_heads = {self.text_heads} must divide model.text_dim = {self.text_dim}")
        if not 0.0 <= self.drop_path < 1.0 or not 0.0 <= self.fusion_dropout < 1.0:
            raise ZskError("model.drop_path and model.fusion_dropout must be in [0, 1)")
        for key in ("window_size", "enc_layers", "dec_layers", "enc_points", "vocab_size", "text_layers"):
            if getattr(self, key) < 1:
                raise ZskError(f"model.{key} must be >= 1, got {getattr(self, key)}")


@dataclass
class ContrastiveConfig:
    """Cross-modal instance contrastive loss (AlignFormer abstract; formula reconstructed by zsk)."""

    weight: float = 1.0  # λ_con; 0 reproduces the LGFormer code (mask loss only)
    tau: float = 0.1
    boundary_width: int = 2  # stride-4 pixels each side of the GT boundary left out (ambiguous pixels)
    negatives: Literal["batch", "image"] = "batch"  # + the other expressions' instances, or own background only
    positive: Literal["pixels", "instance_mean"] = "pixels"
    dim: int = 256  # the anchor projection Linear(text_dim -> dim); equals model.mask_dim

    def __post_init__(self) -> None:
        check_ranges("train.loss.contrastive", self, positive=("tau",), non_negative=("weight", "boundary_width"))
        if self.positive == "instance_mean" and self.negatives == "image":
            raise ZskError("train.loss.contrastive.positive=instance_mean contrasts each expression with the other "
                           "expressions' instances; it needs negatives=batch")


@dataclass
class LossConfig:
    pos_weight: float = 1.1  # BCE-with-logits pos_weight (LGFormer train.py criterion)
    all_outputs: bool = True  # sum the BCE over the 7 query states (official); false: the last one only
    contrastive: ContrastiveConfig = field(default_factory=ContrastiveConfig)

    def __post_init__(self) -> None:
        check_ranges("train.loss", self, positive=("pos_weight",))


@dataclass
class TrainConfig(CoreTrainConfig):
    """AdamW lr 5e-5, weight decay 0.01 (0 for Swin norms, position tables), poly 0.9 per iteration,
    40 epochs, 32 expressions per optimizer step (the official script runs 2 processes with ``--batch_size 16``
    each): ``batch_size`` 16 per process and ``effective_batch`` 32, so one GPU accumulates 2 micro-batches and
    two GPUs none (:func:`zsk.core.trainer.grad_accum_for`), best checkpoint by val oIoU."""

    batch_size: int = 16
    effective_batch: int | None = 32  # expressions per optimizer step over all processes; null: grad_accum as set
    lr: float = 5e-5
    optimizer: Literal["sgd", "adam", "adamw"] = "adamw"
    weight_decay: float = 0.01
    schedule: Literal["constant", "poly", "cosine", "step"] = "poly"
    poly_power: float = 0.9
    epochs: int | None = 40
    best_metric: str | None = "oIoU"
    loss: LossConfig = field(default_factory=LossConfig)


@dataclass
class EvalConfig:
    """Every sentence of every ref; sigmoid > threshold of the last output; IoU at the network's input
    size (LAVT/LGFormer) or, with ``resolution: original``, at the image's own size (CRIS)."""

    split: str | None = "val"  # null: no evaluation during training (best = last)
    threshold: float = 0.5
    resolution: Literal["input", "original"] = "input"
    prec_rule: Literal[">=", ">"] = ">="
    output: int = -1  # which query state's mask is evaluated (-1: the last, as the official test)
    expressions_per_batch: int = 8
    max_refs: int | None = None  # the first N refs of the split (evaluation during training)

    def __post_init__(self) -> None:
        if not (math.isfinite(self.threshold) and 0.0 < self.threshold < 1.0):
            raise ZskError(f"eval.threshold is a probability in (0, 1), got {self.threshold}")
        check_ranges("eval", self, at_least_one=("expressions_per_batch", "max_refs"))


@dataclass
class Config:
    data: DataConfig = field(default_factory=DataConfig)
    model: ModelConfig = field(default_factory=ModelConfig)
    train: TrainConfig = field(default_factory=TrainConfig)
    eval: EvalConfig = field(default_factory=EvalConfig)
    runtime: RuntimeConfig = field(default_factory=RuntimeConfig)

    def __post_init__(self) -> None:
        if self.train.loss.contrastive.weight > 0 and self.train.loss.contrastive.dim != self.model.mask_dim:
            raise ZskError(f"train.loss.contrastive.dim = {self.train.loss.contrastive.dim} must equal model.mask_dim "
                           f"= {self.model.mask_dim} (anchors are compared with the mask features)")
        if not -(self.model.dec_layers + 1) <= self.eval.output <= self.model.dec_layers:
            raise ZskError(f"eval.output = {self.eval.output}: the model has {self.model.dec_layers + 1} outputs")
