"""Recipe schema of the contrast task (MetAug, Li et al., ICML 2022): `data`, `model`, `train`, `eval`, `runtime`.

Defaults are the official code's (jiangmengli/metaug, `train_MetAug.py` and `LinearProbing_MetAug.py`
argument defaults). Two stages (zsk.core.stages): `pretrain` (encoder step + second-order meta step of the
generators) and `linear` (a linear classifier on frozen features). `train.*` is the pretraining schedule;
the linear stage's defaults sit in `TrainConfig.STAGE_DEFAULTS` and follow `eval.protocol`.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import ClassVar, Literal

from zsk.core.errors import ZskError
from zsk.core.recipe import RuntimeConfig
from zsk.core.trainer import TrainConfig as CoreTrainConfig
from zsk.core.trainer import check_ranges


@dataclass
class DataConfig:
    root: str = "."
    # folder: <root>/<split>/<class>/**/image (ImageNet, ImageNet-100, any ImageFolder; MetAug's own layout);
    # cifar10/cifar100: the python pickles; stl10: the stl10_binary files; tiny_imagenet: the official zip layout
    format: Literal["folder", "cifar10", "cifar100", "stl10", "tiny_imagenet"] = "folder"
    train_split: str = "train"
    val_split: str = "val"  # the split the linear probe is scored on (CIFAR/STL-10: "test")
    class_list: str | None = None  # a file of class folder names, one a line (ImageNet-100), relative to root
    stl10_unlabeled: bool = True  # STL-10: pretrain on train + the 100k unlabelled images
    image_size: int = 224  # RandomResizedCrop size of train_MetAug.py
    crop_scale: tuple[float, float] = (0.2, 1.0)  # --crop_low 0.2 (0.08 for ImageNet with a ResNet)
    resize: int | None = None  # linear probe's test-time Resize (None: image_size * 256 / 224, i.e. 256)
    max_images: int | None = None  # use only the first N images of each split (smoke runs)

    def __post_init__(self) -> None:
        lo, hi = self.crop_scale
        if not (0 < lo <= hi <= 1):
            raise ZskError(f"data.crop_scale must be two areas 0 < low <= high <= 1, got {list(self.crop_scale)}")
        check_ranges("data", self, at_least_one=("resize", "max_images"))
        if self.format in ("cifar10", "cifar100", "stl10"):
            for key in ("train_split", "val_split"):
                if getattr(self, key) not in ("train", "test"):
                    raise ZskError(f"data.{key}={getattr(self, key)!r}: {self.format} has the splits train and test "
                                   f"(set data.val_split: test)")
        if self.image_size < 16:
            raise ZskError(f"data.image_size must be >= 16 pixels, got {self.image_size}")


@dataclass
class ModelConfig:
    # alexnet: CMC's AlexNet-half per view (the paper's encoder); resnet18/resnet50: CMC-style ResNet views
    backbone: Literal["alexnet", "resnet18", "resnet50"] = "alexnet"
    channels: list[int] = field(default_factory=lambda: [48, 128, 192, 192, 128])  # conv1..conv5 (96..256 // 2)
    fc_dim: int = 2048  # fc6/fc7 width (4096 // 2)
    feat_dim: int = 128  # fc8: the contrastive embedding (--feat_dim)
    generator_hidden: int = 2048  # meta feature-augmentation generator MLP width (4096 // 2)
    nce_k: int = 1024  # negatives per anchor (--nce_k)
    memory_momentum: float = 0.5  # memory bank momentum (--nce_m)
    # once: one memory update per iteration after the encoder step's five score sets (zsk default);
    # official: train_MetAug.py's order: each original-feature call updates the bank before the augmented calls
    # read it, and the meta step's two forward passes update it again (3 updates per iteration)
    memory_update: Literal["once", "official"] = "once"
    online_probe: bool = False  # a linear head trained during pretraining on detached features (solo-learn)

    def __post_init__(self) -> None:
        if len(self.channels) != 5 or min(self.channels) < 1:
            raise ZskError(f"model.channels must be the 5 conv widths >= 1 (conv1..conv5), got {self.channels}")
        check_ranges("model", self, positive=("fc_dim", "feat_dim", "generator_hidden", "nce_k"))
        if not 0 <= self.memory_momentum < 1:
            raise ZskError(f"model.memory_momentum must be in [0, 1), got {self.memory_momentum}")


@dataclass
class LossConfig:
    """The optimization-driven unified contrastive loss (OUCL) and the margin-injected regularisation."""

    beta: float = 1e-5  # --mt_loss_hp: weight of the four augmented OUCL terms
    eta: float = 1e-11  # --mj_loss_hp (the released checkpoint's tag says 1e-9)
    gamma: float = 16.0  # --gama_gh
    margins: bool = False  # --delta_enable_gh: delta_p = 1 - m, delta_n = m
    margin_m: float = 0.25  # --delta_m_gh
    # circle-loss weights a_p = [1 + m - s_p]+, a_n = [s_n + m]+ (detached); the official --alpha_enable_gh yes
    # computes them and then overwrites both with 1, so `false` is its behaviour either way
    adaptive_weights: bool = False
    alpha_m: float = 0.25  # --alpha_m_gh
    # --margin_injection 1 (both steps) / 2 (meta step only) / 0 (off)
    margin_injection: Literal["both", "meta", "none"] = "both"
    margin_mode: Literal["large", "small", "mean"] = "large"  # --margin_type
    margin_pos_weight: float = 1e-4  # util.margin_hyper: weight of the positive hinge inside L_MI
    # official: the un-augmented directions of the three single-view augmented calls (train_MetAug.py reuses
    # those variables); original: the first (un-augmented) call's scores
    margin_reference: Literal["official", "original"] = "official"

    def __post_init__(self) -> None:
        check_ranges("train.loss", self, non_negative=("beta", "eta", "margin_m", "alpha_m", "margin_pos_weight"),
                     positive=("gamma",))


@dataclass
class TrainConfig(CoreTrainConfig):
    """`train.*`: the pretraining stage; `train.stages.linear`: the linear evaluation (defaults below)."""

    STAGES: ClassVar[tuple[str, ...]] = ("pretrain", "linear")
    # LinearProbing_MetAug.py: SGD lr 0.1, momentum 0.9, no weight decay, batch 256, 60 epochs, x0.2 at 30/40/50;
    # steps: None so that the probe follows its own epochs, not the pretraining's train.steps
    STAGE_DEFAULTS: ClassVar[dict[str, dict]] = {
        "linear": {"steps": None, "lr": 0.1, "momentum": 0.9, "weight_decay": 0.0, "batch_size": 256, "epochs": 60,
                   "milestone_epochs": [30, 40, 50], "gamma": 0.2, "select": "last", "best_metric": "top1"},
    }

    batch_size: int = 64
    lr: float = 0.03
    optimizer: Literal["sgd", "adam", "adamw"] = "sgd"
    momentum: float = 0.9
    weight_decay: float = 1e-4
    schedule: Literal["constant", "poly", "cosine", "step"] = "step"
    gamma: float = 0.1
    epochs: int | None = 300
    milestone_epochs: list[int] = field(default_factory=lambda: [120, 160, 200])  # epoch e > m decays (util.py)
    select: Literal["best", "last"] = "last"
    generator_lr: float = 0.03  # --mt_learning_rate (constant: the official schedule decays the encoder only)
    generator_momentum: float = 0.9
    generator_weight_decay: float = 1e-4
    virtual_lr: float = 1e-3  # --bb_learning_rate: the virtual encoder step theta' = theta - lr * grad
    meta_step: bool = True  # false: generators stay fixed (the ablation without the meta update)
    online_probe_lr: float = 0.1  # model.online_probe: the head's learning rate (no weight decay)
    loss: LossConfig = field(default_factory=LossConfig)

    def __post_init__(self) -> None:
        check_ranges("train", self, non_negative=("generator_lr", "generator_weight_decay", "virtual_lr",
                                                  "generator_momentum", "online_probe_lr"))
        if any(m < 0 for m in self.milestone_epochs):
            raise ZskError(f"train.milestone_epochs must be epochs >= 0, got {self.milestone_epochs}")
        super().__post_init__()


@dataclass
class EvalConfig:
    # metaug: LinearProbing_MetAug.py's schedule; solo_offline: solo-learn's offline linear (100 epochs, x0.1 at
    # 60/80); online: the online head trained during pretraining (model.online_probe), no linear stage
    protocol: Literal["metaug", "solo_offline", "online"] = "metaug"
    # conv5: conv5 of each view, adaptive max-pool 6x6, concatenated (CMC's conv protocol); fc6/fc7: the 3 views'
    # 2048-d activations concatenated; pool: a ResNet's pooled features
    layer: Literal["conv5", "fc6", "fc7", "pool"] = "fc6"
    # encoder: the views' features (CMC); encoder+generator: plus each generator's layer-2 activations on the
    # view's embedding (LinearProbing_MetAug.py concatenates generator features)
    features: Literal["encoder", "encoder+generator"] = "encoder"
    batch_size: int = 256
    split: str | None = None  # default: data.val_split

    def __post_init__(self) -> None:
        check_ranges("eval", self, positive=("batch_size",))


SOLO_OFFLINE = {"lr": 0.1, "momentum": 0.9, "weight_decay": 0.0, "batch_size": 256, "epochs": 100,
                "milestone_epochs": [60, 80], "gamma": 0.1}


@dataclass
class Config:
    data: DataConfig = field(default_factory=DataConfig)
    model: ModelConfig = field(default_factory=ModelConfig)
    train: TrainConfig = field(default_factory=TrainConfig)
    eval: EvalConfig = field(default_factory=EvalConfig)
    runtime: RuntimeConfig = field(default_factory=RuntimeConfig)

    def __post_init__(self) -> None:
        resnet = self.model.backbone != "alexnet"
        if resnet and self.eval.layer != "pool":
            raise ZskError(f"eval.layer={self.eval.layer} is an AlexNet layer; model.backbone={self.model.backbone} "
                           "is probed on its pooled features: set eval.layer: pool")
        if not resnet and self.eval.layer == "pool":
            raise ZskError("eval.layer=pool is for ResNet backbones; AlexNet-half is probed on conv5, fc6 or fc7")
        if self.eval.features == "encoder+generator" and self.eval.layer not in ("fc6", "fc7"):
            raise ZskError("eval.features=encoder+generator concatenates 2048-d generator activations to the fc "
                           "features: use eval.layer fc6 or fc7")
        if self.eval.protocol == "online" and not self.model.online_probe:
            raise ZskError("eval.protocol=online scores the online head: set model.online_probe: true")
        if not math.isfinite(self.train.loss.gamma):
            raise ZskError("train.loss.gamma must be finite")
