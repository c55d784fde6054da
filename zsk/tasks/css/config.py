"""Recipe schema of ``zsk css`` (SATS continual semantic segmentation). Defaults are the official
``--method SATS`` preset of QIU023/SATS_Continual_Semantic_Seg (``argparser.py``) on VOC 15-1 overlapped."""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import ClassVar, Literal

from zsk.core.errors import require
from zsk.core.recipe import RuntimeConfig
from zsk.core.trainer import TrainConfig as CoreTrainConfig

MAX_STEPS = 151  # ADE20K one class per step is the longest possible sequence (150 steps after the base)


def _finite_nonneg(key: str, value: float) -> None:
    require(isinstance(value, (int, float)) and math.isfinite(value) and value >= 0, key, "a finite number >= 0",
             value)


@dataclass
class DataConfig:
    """Benchmark, continual task, filtering setting and the MiB/PLOP augmentation."""

    dataset: Literal["voc", "ade"] = "voc"
    root: str = "data/PascalVOC12"
    train_split: str = "train_aug"
    val_split: str = "val"
    task: str = "15-1"  # a named task of the dataset (increments.py), ignored when ``steps`` is given
    steps: list[list[int]] | None = None  # explicit classes per step, e.g. [[0, 1, 2, 3], [4], [5]]
    overlap: bool = True  # SATS runs every experiment overlapped (--overlap)
    index_dir: str | None = None  # folder of official per-step index lists (train-<step>.npy, test_on_val-<step>.npy)
    crop_size: int = 512
    scale_range: tuple[float, float] = (0.5, 2.0)  # RandomResizedCrop scale of the MiB/PLOP transform
    flip_prob: float = 0.5

    def __post_init__(self) -> None:
        for key in ("root", "train_split", "val_split", "task"):
            require(bool(str(getattr(self, key)).strip()), f"data.{key}", "a non-empty name", getattr(self, key))
        require(self.crop_size >= 32, "data.crop_size", ">= 32 (SATS: 512)", self.crop_size)
        lo, hi = self.scale_range
        require(0 < lo <= hi, "data.scale_range", "[low, high] with 0 < low <= high (SATS: [0.5, 2.0])",
                 list(self.scale_range))
        require(0 <= self.flip_prob <= 1, "data.flip_prob", "in [0, 1]", self.flip_prob)
        if self.steps is not None:
            require(len(self.steps) >= 1 and all(self.steps), "data.steps", "a non-empty list of non-empty class "
                     "lists, e.g. [[0, 1, 2], [3]]", self.steps)
            flat = [c for s in self.steps for c in s]
            require(len(set(flat)) == len(flat), "data.steps", "lists without repeated classes", self.steps)
            require(0 in self.steps[0], "data.steps", "a first step holding the background 0", self.steps)
            require(all(0 <= c < 255 for c in flat), "data.steps", "class ids in 0..254", self.steps)


@dataclass
class ModelConfig:
    """SegFormer: a MiT encoder (ImageNet weights from a local file) and the simplified MLP decoder."""

    encoder: Literal["mit_b0", "mit_b1", "mit_b2", "mit_b3", "mit_b4", "mit_b5", "custom"] = "mit_b2"
    # the official path; "hf:nvidia/mit-b2" or a save_pretrained folder: a Hugging Face encoder; null: random
    pretrained: str | None = "pretrained/mit_b2.pth"
    # custom encoders (tests, demo): the four stages' widths, heads, depths and reduction ratios
    embed_dims: tuple[int, int, int, int] = (64, 128, 320, 512)
    num_heads: tuple[int, int, int, int] = (1, 2, 5, 8)
    depths: tuple[int, int, int, int] = (3, 4, 6, 3)
    sr_ratios: tuple[int, int, int, int] = (8, 4, 2, 1)
    mlp_ratio: float = 4.0
    drop_path_rate: float = 0.1
    decoder_dim: int = 256

    def __post_init__(self) -> None:
        require(all(d >= 1 for d in self.embed_dims), "model.embed_dims", "four widths >= 1", list(self.embed_dims))
        for d, h in zip(self.embed_dims, self.num_heads, strict=True):
            require(h >= 1 and d % h == 0, "model.num_heads", "four head counts dividing model.embed_dims",
                     list(self.num_heads))
        require(all(d >= 1 for d in self.depths), "model.depths", "four depths >= 1", list(self.depths))
        require(all(r >= 1 for r in self.sr_ratios), "model.sr_ratios", "four ratios >= 1", list(self.sr_ratios))
        require(0 <= self.drop_path_rate < 1, "model.drop_path_rate", "in [0, 1) (SATS: 0.1)", self.drop_path_rate)
        require(self.decoder_dim >= 1, "model.decoder_dim", ">= 1 (SATS: 256)", self.decoder_dim)
        require(self.mlp_ratio > 0, "model.mlp_ratio", "> 0 (SATS: 4)", self.mlp_ratio)


@dataclass
class SATSConfig:
    """The self-attention transfer loss L_SATS (paper Sec. 3.3; official ``train.py``, ``sats-selfattn``)."""

    weight: float = 20.0  # distill_weight_args
    pooling: Literal["class", "global", "none"] = "class"  # class-specific (SATS), GP and NP ablations
    # attention: the self-attention maps (sats-selfattn); features: class pooling of the encoder's feature maps
    # instead (the sats-feature-CNN ablation)
    source: Literal["attention", "features"] = "attention"
    # per_head: permute [B, h, N, M] to [B, N, h, M] before pooling (what the loss formula describes);
    # official_code: the released reshape without permute, which mixes heads and positions when h > 1
    head_layout: Literal["per_head", "official_code"] = "per_head"


@dataclass
class PseudoLabelConfig:
    """PLOP entropy pseudo-labels for old classes (Douillard et al., CVPR 2021, Sec. 3.2)."""

    enabled: bool = True
    min_threshold: float = 0.001  # opts.threshold: tau_c = max(median, 0.001)
    nb_bins: int = 100
    entropy_norm: Literal["all_classes", "old_classes"] = "all_classes"  # official: log of every class
    # histogram: the median of the 100-bin histogram; official_code: PLOP's loop that adds the bin index
    # instead of the bin count to the running sum (a different, biased threshold)
    median: Literal["histogram", "official_code"] = "histogram"

    def __post_init__(self) -> None:
        _finite_nonneg("train.pseudo_label.min_threshold", self.min_threshold)
        require(self.nb_bins >= 2, "train.pseudo_label.nb_bins", ">= 2 (PLOP: 100)", self.nb_bins)


@dataclass
class TrainConfig(CoreTrainConfig):
    """Core optimisation keys (SGD Nesterov, poly) plus the SATS objective of an incremental step.

    Every incremental step is a stage ``step<t>``; ``train.stages.step0`` sets the base step's schedule
    (lr 0.01) and ``train.*`` the incremental ones (lr 0.001), as the official scripts.
    """

    STAGES: ClassVar[tuple[str, ...]] = tuple(f"step{i}" for i in range(MAX_STEPS))

    optimizer: Literal["sgd", "adam", "adamw"] = "sgd"
    nesterov: bool = True
    lr: float = 1e-3
    weight_decay: float = 1e-4
    schedule: Literal["constant", "poly", "cosine", "step"] = "poly"
    batch_size: int = 24
    epochs: int | None = 30
    select: Literal["best", "last"] = "last"
    kd_weight: float = 20.0  # loss_kd: MiB unbiased distillation
    kd_alpha: float = 1.0
    sats: SATSConfig = field(default_factory=SATSConfig)
    pseudo_label: PseudoLabelConfig = field(default_factory=PseudoLabelConfig)
    adaptive_factor: bool = False  # PLOP's classif_adaptive_factor: computed but unused by the SATS branch
    init_classifier: Literal["mib", "random"] = "mib"
    memory: int = 0  # SATS-M: class-balanced exemplar images (100 VOC, 300 ADE)
    memory_batch_size: int | None = None  # exemplars concatenated to each batch (None: train.batch_size)
    from_step: int | None = None  # start the sequence at this step (``--from-step``)
    init_checkpoint: str | None = None  # weights of step from_step - 1 (a run's best.pt or last-step<k>.pt)

    def __post_init__(self) -> None:
        super().__post_init__()
        _finite_nonneg("train.kd_weight", self.kd_weight)
        _finite_nonneg("train.kd_alpha", self.kd_alpha)
        _finite_nonneg("train.sats.weight", self.sats.weight)
        require(self.memory >= 0, "train.memory", ">= 0 (SATS-M: 100 VOC, 300 ADE)", self.memory)
        require(self.memory_batch_size is None or self.memory_batch_size >= 1, "train.memory_batch_size",
                 ">= 1 or unset", self.memory_batch_size)
        require(self.from_step is None or self.from_step >= 0, "train.from_step", ">= 0", self.from_step)


@dataclass
class EvalConfig:
    """Test-time transform and labelling of not-yet-learned classes."""

    crop_size: int = 512  # resize (short side) + center crop, the MiB/PLOP validation transform
    # center_crop: score the center crop (official); whole: the resized image in one pass; slide: the resized
    # image by crop_size windows every ``stride`` pixels (the shared sliding-window inferer), scores averaged
    mode: Literal["center_crop", "whole", "slide"] = "center_crop"
    stride: int | None = None  # slide: window step (None: 2/3 of eval.crop_size, 341 at 512)
    # background: future classes count as background at step t (official MiB/SATS test loader);
    # ignore: they are left out (255)
    future_classes: Literal["background", "ignore"] = "background"
    # ADE20K's label 0 ("other") at test time: scored as the background class (official SATS: its loaders drop
    # the target transform, --ignore_test_bg has no effect) or ignored (MiB's ignore_test_bg convention)
    ade_other: Literal["background", "ignore"] = "background"
    max_images: int | None = None

    def __post_init__(self) -> None:
        require(self.crop_size >= 32, "eval.crop_size", ">= 32 (SATS: 512)", self.crop_size)
        require(self.max_images is None or self.max_images >= 1, "eval.max_images", ">= 1 or unset", self.max_images)
        require(self.stride is None or 1 <= self.stride <= self.crop_size, "eval.stride",
                 f"in 1..eval.crop_size ({self.crop_size}) or unset", self.stride)


@dataclass
class Config:
    data: DataConfig = field(default_factory=DataConfig)
    model: ModelConfig = field(default_factory=ModelConfig)
    train: TrainConfig = field(default_factory=TrainConfig)
    eval: EvalConfig = field(default_factory=EvalConfig)
    runtime: RuntimeConfig = field(default_factory=RuntimeConfig)
