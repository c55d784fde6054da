"""Recipe schema of the adapt (STAL / ILM-ASSL) task. Defaults are the official GTAV -> Cityscapes
configuration (licongguan/ILM-ASSL, experiments/gtav2cityscapes/2.2%/config.yaml); recipes override them."""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import ClassVar, Literal

from zsk.core.errors import ZskError
from zsk.core.recipe import RuntimeConfig
from zsk.core.trainer import TrainConfig as CoreTrainConfig
from zsk.core.trainer import check_ranges

MAX_ROUNDS = 6  # stages round1 .. round6


@dataclass
class DataConfig:
    """Where the Cityscapes target and the GTAV / SYNTHIA source live and how crops are drawn.

    ``root`` is the Cityscapes root (``leftImg8bit/``, ``gtFine/``). Source images are read from
    ``source_root`` in their own layout (GTAV ``images/`` + ``labels/``; SYNTHIA ``RGB/`` + ``GT/LABELS/``)
    or, when it is null, from STAL's renamed copies inside ``root`` (``leftImg8bit/train/gta5/gta5_*``).
    """

    root: str = "data/cityscapes"
    source: Literal["gtav", "synthia"] = "gtav"
    source_root: str | None = None
    source_list: str | None = None  # list file of source images; null: a seeded subset of num_source images
    num_source: int = 2000
    num_classes: int = 19
    # SYNTHIA ids -> classes: cs19 (DAFormer 19-class map, agrees with Cityscapes trainIds) or the official
    # 16-class table used with 19 outputs (STAL's cityscapes_semi_cp.py)
    synthia_label_map: Literal["cs19", "official_code"] = "cs19"
    # resizing source labels to source_size: nearest (zsk) or bilinear (official cv2.resize of SYNTHIA labels)
    label_resize: Literal["nearest", "official_code"] = "nearest"
    # ACP paste labels of source images: converted like every label (zsk) or read raw (official, a bug)
    acp_source_labels: Literal["converted", "official_code"] = "converted"
    # label of the padding when a rescaled image is smaller than the crop: ignore (zsk) or 0 = road (official
    # augmentation.py Crop, "change to 0")
    crop_pad_label: Literal["ignore", "official_code"] = "ignore"
    source_size: tuple[int, int] | None = (1024, 2048)  # (H, W) source images are resized to first; null: keep
    crop_size: tuple[int, int] = (769, 769)
    rand_resize: tuple[float, float] = (0.5, 2.0)
    paste_resize: tuple[float, float] = (0.1, 2.0)  # ACP partner images
    flip: bool = True
    mean: tuple[float, float, float] = (123.675, 116.28, 103.53)
    std: tuple[float, float, float] = (58.395, 57.12, 57.375)
    repeat_target: bool = True  # repeat the labelled target images to (#target train - #labelled) samples
    max_val: int | None = None  # evaluate only the first N val images (quick checks)

    def __post_init__(self) -> None:
        if self.num_classes < 2 or self.num_classes > 255:
            raise ZskError(f"data.num_classes must be in 2..255, got {self.num_classes}")
        if self.num_source < 0:
            raise ZskError(f"data.num_source must be >= 0, got {self.num_source}")
        if min(self.crop_size) < 8:
            raise ZskError(f"data.crop_size = {list(self.crop_size)}: both sizes must be >= 8")
        if self.source_size is not None and min(self.source_size) < 8:
            raise ZskError(f"data.source_size = {list(self.source_size)}: both sizes must be >= 8 (or null)")
        for key in ("rand_resize", "paste_resize"):
            lo, hi = getattr(self, key)
            if not (0 < lo <= hi and math.isfinite(hi)):
                raise ZskError(f"data.{key} = [{lo}, {hi}] must be 0 < min <= max")
        if any(s <= 0 for s in self.std):
            raise ZskError(f"data.std must be positive, got {list(self.std)}")
        check_ranges("data", self, at_least_one=("max_val",))


@dataclass
class ModelConfig:
    """DeepLabv3+ on a deep-stem ResNet (U2PL / STAL core/models): OS8, multi-grid, aux head on layer3."""

    layers: tuple[int, int, int, int] = (3, 4, 23, 3)  # ResNet-101
    base_width: int = 64  # planes of layer1 (x2, x4, x8 in layers 2-4; bottleneck expansion 4)
    stem_width: int = 64  # the 3-conv stem: stem_width, stem_width, 2 x stem_width
    decoder_channels: int = 256  # ASPP branches, head, classifier and representation widths
    dilations: tuple[int, int, int] = (12, 24, 36)
    multi_grid: bool = True
    zero_init_residual: bool = True
    aux_weight: float = 0.4
    pretrained: str | None = None  # ImageNet deep-stem ResNet state dict (U2PL's resnet101.pth), local file
    sync_bn: bool = True  # SyncBatchNorm under DDP (official); plain BatchNorm on one process

    def __post_init__(self) -> None:
        if any(n < 1 for n in self.layers):
            raise ZskError(f"model.layers = {list(self.layers)}: every stage needs at least 1 block")
        if self.multi_grid and self.layers[3] != 3:
            raise ZskError("model.multi_grid uses the grid (2, 2, 4) and needs model.layers[3] = 3 blocks")
        check_ranges("model", self, positive=("base_width", "stem_width", "decoder_channels"),
                     non_negative=("aux_weight",))


@dataclass
class ConsConfig:
    """L_cons: confidence-weighted consistency with class-sampling masks (AEL Criterion_cons)."""

    gamma: float = 2.0  # w = p_max^gamma
    sample: bool = True  # class-sampling mask from the class confidences
    threshold: float = 0.0  # teacher confidence below this -> ignored (official: 0)
    # drop_uncertain: ignore unlabelled pixels with teacher entropy above the (100 - q)-th percentile (U2PL);
    # official_code: ignore those below the q-th percentile (STAL train.py); none: no entropy mask
    entropy_mask: Literal["drop_uncertain", "official_code", "none"] = "drop_uncertain"
    low_entropy_threshold: float = 20.0  # q_0; q = q_0 * (1 - epoch / epochs)


@dataclass
class ContraConfig:
    """L_contra: the U2PL pixel contrastive loss with class memory banks."""

    weight: float = 0.1
    start_epoch: int = 20
    low_rank: int = 3
    high_rank: int = 20
    current_class_threshold: float = 0.3
    current_class_negative_threshold: float = 1.0
    low_entropy_threshold: float = 20.0  # anchors: entropy <= this percentile
    unsupervised_entropy_ignore: float = 80.0  # negatives: entropy >= this percentile
    num_negatives: int = 50
    num_queries: int = 256
    temperature: float = 0.5
    queue_size: int = 30000
    queue_size_first: int = 50000  # class 0 (road)
    # which anchors meet which negatives: by_class (zsk) or official_code (U2PL/STAL index the anchors by the
    # position among the batch's valid classes but the class id elsewhere; equal when every class is present)
    indexing: Literal["by_class", "official_code"] = "by_class"
    # which pixels may become negatives of class c: official_code (U2PL/STAL ``compute_contra_memobank_loss``:
    # the pixel mask times the one-hot label, so a negative of c must be labelled/pseudo-labelled c and, at once,
    # not c (labelled) or c at rank low_rank..high_rank (unlabelled): the banks stay (almost) empty and L_contra
    # is 0; Haochen-Wang409/U2PL issue #171) or paper (U2PL Eq. 13-16: any valid labelled pixel whose label is
    # not c with c in its top low_rank, any high-entropy unlabelled pixel with c at rank low_rank..high_rank)
    negatives: Literal["official_code", "paper"] = "paper"


@dataclass
class LossConfig:
    ohem_thresh: float = 0.7
    ohem_min_kept: int = 100000
    cons_weight: float = 1.0
    cons: ConsConfig = field(default_factory=ConsConfig)
    contra: ContraConfig = field(default_factory=ContraConfig)

    def __post_init__(self) -> None:
        if not 0 < self.ohem_thresh <= 1:
            raise ZskError(f"train.loss.ohem_thresh must be in (0, 1], got {self.ohem_thresh}")
        c = self.contra
        if not 0 <= c.low_rank < c.high_rank:
            raise ZskError(f"train.loss.contra: need 0 <= low_rank < high_rank, got {c.low_rank}, {c.high_rank}")
        if c.temperature <= 0 or c.num_queries < 1 or c.num_negatives < 1 or c.queue_size < 1:
            raise ZskError("train.loss.contra: temperature, num_queries, num_negatives and queue_size must be positive")
        for name in ("low_entropy_threshold", "unsupervised_entropy_ignore"):
            if not 0 <= getattr(c, name) <= 100:
                raise ZskError(f"train.loss.contra.{name} is a percentile in [0, 100], got {getattr(c, name)}")


@dataclass
class MixConfig:
    """Adaptive copy-paste (labelled) and adaptive CutMix (unlabelled), AEL."""

    acp: bool = True
    acp_prob: float = 0.5  # chance a labelled sample gets a paste partner
    acp_number: int = 3  # query classes drawn per step
    acp_ignore_classes: list[int] = field(default_factory=lambda: [0, 1, 2, 8, 10])  # road sidewalk building veg sky
    acm: bool = True
    area_thresh: float = 0.005  # region large enough to cut around (boxes as official no_pad/no_slim)
    area_thresh2: float = 0.01  # cutmix-bank membership
    momentum: float = 0.999  # class confidence EMA


@dataclass
class ALConfig:
    """Active-learning rounds (STAL core/active_learning): one stage per round."""

    rounds: int = 1  # training rounds; selection runs before every round after the first
    initial_size: int = 30  # target images labelled in round 1 (city-stratified random)
    initial_list: str | None = None  # or a list file (official labeled.txt: source + target lines)
    budget_per_round: int = 35
    # entropy: STAL's image score; ripu: images ranked by RIPU's mean region score; ripu_regions: RIPU's
    # region annotation (RA) on every not fully labelled target image, region_ratio of its pixels per round
    selector: Literal["entropy", "ripu", "ripu_regions"] = "entropy"
    region_ratio: float = 0.0044  # ripu_regions: RIPU-RA 2.2% over its 5 rounds
    select_size: tuple[int, int] = (769, 769)  # images are resized to this for selection (official)
    ripu_radius: int = 1  # RIPU region (2k+1)^2
    warm_start: bool = False  # official: every round retrains from ImageNet weights

    def __post_init__(self) -> None:
        if not 1 <= self.rounds <= MAX_ROUNDS:
            raise ZskError(f"train.al.rounds must be in 1..{MAX_ROUNDS}, got {self.rounds}")
        if self.initial_size < 1 or self.budget_per_round < 0:
            raise ZskError("train.al.initial_size must be >= 1 and train.al.budget_per_round >= 0")
        if not 0 < self.region_ratio <= 1:
            raise ZskError(f"train.al.region_ratio must be in (0, 1], got {self.region_ratio}")
        if self.ripu_radius < 0:
            raise ZskError(f"train.al.ripu_radius must be >= 0, got {self.ripu_radius}")


@dataclass
class TrainConfig(CoreTrainConfig):
    """Core schedule/optimizer keys plus STAL's batches, EMA teacher, losses and mixing."""

    STAGES: ClassVar[tuple[str, ...]] = tuple(f"round{i}" for i in range(1, MAX_ROUNDS + 1))

    batch_size: int = 4  # labelled images per step (per process)
    lr: float = 0.0025
    head_lr_mult: float = 10.0  # decoder and aux head
    optimizer: Literal["sgd", "adam", "adamw"] = "sgd"
    momentum: float = 0.9
    weight_decay: float = 1e-4
    schedule: Literal["constant", "poly", "cosine", "step"] = "poly"
    poly_power: float = 0.9
    epochs: int | None = 200
    unlabeled_batch: int = 4  # unlabelled images per official loader batch: one epoch = N_unl // (4 x world)
    ema_decay: float = 0.99
    best_metric: str | None = "mIoU"
    select: Literal["best", "last"] = "best"
    loss: LossConfig = field(default_factory=LossConfig)
    mix: MixConfig = field(default_factory=MixConfig)
    # divide the loss by the number of processes as STAL does on top of DDP's gradient averaging (official_code:
    # true; identical on one GPU)
    loss_world_scale: bool = False
    al: ALConfig = field(default_factory=ALConfig)  # recipe key train.al.* (the recipe has no top-level al)

    def __post_init__(self) -> None:
        super().__post_init__()
        if not 0 <= self.ema_decay < 1:
            raise ZskError(f"train.ema_decay must be in [0, 1), got {self.ema_decay}")
        check_ranges("train", self, positive=("unlabeled_batch", "head_lr_mult"))


@dataclass
class EvalConfig:
    """Sliding-window evaluation (STAL eval.py): full resolution, 769 windows, stride ceil(769 * 2/3)."""

    split: str = "val"
    window: tuple[int, int] = (769, 769)
    stride_rate: float = 2 / 3
    window_batch: int = 1
    model: Literal["teacher", "student"] = "teacher"
    # the validation that picks the best checkpoint during training: STAL's single centre crop of the window
    # size (train.py validate) or the full sliding-window protocol
    train_protocol: Literal["center_crop", "sliding"] = "center_crop"

    def __post_init__(self) -> None:
        if min(self.window) < 8:
            raise ZskError(f"eval.window = {list(self.window)}: both sizes must be >= 8")
        if not 0 < self.stride_rate <= 1:
            raise ZskError(f"eval.stride_rate must be in (0, 1], got {self.stride_rate}")
        if self.window_batch < 1:
            raise ZskError(f"eval.window_batch must be >= 1, got {self.window_batch}")

    @property
    def stride(self) -> tuple[int, int]:
        return tuple(int(math.ceil(w * self.stride_rate)) for w in self.window)  # type: ignore[return-value]


@dataclass
class Config:
    data: DataConfig = field(default_factory=DataConfig)
    model: ModelConfig = field(default_factory=ModelConfig)
    train: TrainConfig = field(default_factory=TrainConfig)
    eval: EvalConfig = field(default_factory=EvalConfig)
    runtime: RuntimeConfig = field(default_factory=lambda: RuntimeConfig(seed=1))
