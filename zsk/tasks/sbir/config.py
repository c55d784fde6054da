"""Recipe schema of the sbir (ACNet) task. Defaults are the official training script's (leftthomas/ACNet
``train.py``: Sketchy, ResNet-50, d = 512, batch 64, 10 epochs, 1 warm-up epoch); recipes override them
and cite their sources."""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Literal

from zsk.core.errors import ZskError
from zsk.core.recipe import RuntimeConfig
from zsk.core.trainer import TrainConfig as CoreTrainConfig
from zsk.core.trainer import check_ranges

BACKBONES = ("resnet50", "vgg16", "resnet18", "resnet10t")  # the paper's two, plus small ones for demos/tests


@dataclass
class DataConfig:
    """Where the sketches and photos live and which classes are unseen.

    ``split: folders`` reads ACNet's layout ``<root>/{train,val}/{sketch,photo}/<class>/*`` (``val`` holds the
    unseen classes). The named splits read the flat layout ``<root>/{sketch,photo}/<class>/*`` and take the
    unseen classes from a list file (``unseen_list``, default: the split's file in SAKE's dataset.zip under
    ``root``); see :mod:`zsk.tasks.sbir.splits`.
    """

    root: str = "data/sketchy"
    split: Literal["folders", "yelamarthi21", "sake25", "tuberlin30"] = "folders"
    unseen_list: str | None = None  # list of unseen classes ({root} is substituted); None = the split's default
    sketch_dir: str = "{root}/sketch"  # named splits: the flat layout's folders of class folders
    photo_dir: str = "{root}/photo"
    min_val_photos: int = 0  # drop unseen classes with fewer photos (ACNet: 400 for TU-Berlin)
    image_size: int = 224  # Resize((224, 224)), bilinear (utils.py get_transform)
    flip: bool = True  # RandomHorizontalFlip(0.5) on training sketches and photos
    suffixes: list[str] = field(default_factory=lambda: [".jpg", ".jpeg", ".png"])  # ACNet globs *.jpg

    def __post_init__(self) -> None:
        if self.image_size < 16 or self.image_size % 4:
            raise ZskError(f"data.image_size must be a multiple of 4 and >= 16 (the generator downsamples twice), "
                           f"got {self.image_size}")
        if self.min_val_photos < 0:
            raise ZskError(f"data.min_val_photos must be >= 0, got {self.min_val_photos}")
        if not self.suffixes or any(not s.startswith(".") for s in self.suffixes):
            raise ZskError(f"data.suffixes must be file endings with a dot, e.g. ['.jpg', '.png'], got {self.suffixes}")


@dataclass
class ModelConfig:
    """The three networks (ACNet ``model.py``): generator G, discriminator D, extractor E."""

    backbone: Literal["resnet50", "vgg16", "resnet18", "resnet10t"] = "resnet50"
    emb_dim: int = 512  # d; the README also reports 64 and 4096
    pretrained: str | None = None  # None: random init; "imagenet": timm's weights from its local cache; or a file
    generator_channels: int = 8  # Generator(in_channels=8, num_block=8) in train.py
    generator_blocks: int = 8
    discriminator_channels: int = 8  # Discriminator(in_channels=8)
    frozen_bn: bool = True  # E's BatchNorm in eval mode throughout (train.py set_bn_eval)
    norm: Literal["batchnorm", "groupnorm1"] = "batchnorm"  # E's ResNet norm; groupnorm1: random-init demos

    def __post_init__(self) -> None:
        check_ranges("model", self, positive=("emb_dim", "generator_channels", "discriminator_channels"),
                     non_negative=("generator_blocks",))
        if self.norm != "batchnorm" and not self.backbone.startswith("resnet"):
            raise ZskError(f"model.norm = {self.norm} applies to ResNet extractors; {self.backbone} has no BatchNorm "
                           "to replace: set model.norm=batchnorm")
        if self.norm != "batchnorm" and self.pretrained is not None:
            raise ZskError(f"model.norm = {self.norm} cannot load ImageNet BatchNorm weights (model.pretrained = "
                           f"{self.pretrained}); use model.norm=batchnorm with pretrained weights")


@dataclass
class TrainConfig(CoreTrainConfig):
    """Core schedule keys plus ACNet's three optimisers and loss weights. ``lr`` is the extractor's."""

    batch_size: int = 32  # sketches per batch, each paired with one photo: 64 images (train.py: batch_size // 2)
    lr: float = 1e-5  # extractor, Adam
    optimizer: Literal["sgd", "adam", "adamw"] = "adam"
    proxy_lr: float = 1e-3  # NormalizedSoftmaxLoss proxies (extractor optimizer's second group)
    generator_lr: float = 1e-3
    discriminator_lr: float = 1e-4
    gan_betas: tuple[float, float] = (0.5, 0.999)  # Adam betas of G and D
    epochs: int | None = 10
    warmup_epochs: int = 1  # epochs in which only the extractor's last Linear layer is trained
    identity_weight: float = 0.1
    class_weight: float = 10.0
    temperature: float = 0.05  # NormalizedSoftmaxLoss
    drop_last: bool = False  # torch DataLoader default in train.py: the last partial batch is trained on
    best_metric: str | None = "precise"  # mean of P@100, P@200, mAP@200, mAP@all (train.py val)

    def __post_init__(self) -> None:
        super().__post_init__()
        check_ranges("train", self, positive=("proxy_lr", "generator_lr", "discriminator_lr", "temperature"),
                     non_negative=("warmup_epochs", "identity_weight", "class_weight"))
        if not all(0.0 <= b < 1.0 for b in self.gan_betas):
            raise ZskError(f"train.gan_betas must lie in [0, 1), got {list(self.gan_betas)}")
        if self.optimizer != "adam":
            raise ZskError(f"train.optimizer = {self.optimizer!r}: ACNet trains its three networks with Adam; "
                           "set train.optimizer=adam")


@dataclass
class EvalConfig:
    """Zero-shot retrieval on the unseen split: unseen sketches (through G, then E) against unseen photos."""

    split: str | None = "val"  # null: train without evaluation (best.pt = the last weights)
    batch_size: int = 64
    cache_gallery: bool = True  # gallery embeddings cached in $ZSK_CACHE by checkpoint + file fingerprints
    faiss_min_gallery: int = 100_000  # predict searches a faiss flat index from this gallery size on
    max_queries: int | None = None  # evaluate only the first N sketches (quick checks)

    def __post_init__(self) -> None:
        check_ranges("eval", self, positive=("batch_size", "faiss_min_gallery"), at_least_one=("max_queries",))


@dataclass
class Config:
    data: DataConfig = field(default_factory=DataConfig)
    model: ModelConfig = field(default_factory=ModelConfig)
    train: TrainConfig = field(default_factory=TrainConfig)
    eval: EvalConfig = field(default_factory=EvalConfig)
    runtime: RuntimeConfig = field(default_factory=lambda: RuntimeConfig(seed=1, deterministic=True))

    def __post_init__(self) -> None:
        for key in ("lr", "proxy_lr", "generator_lr", "discriminator_lr", "temperature"):
            if not math.isfinite(getattr(self.train, key)):
                raise ZskError(f"train.{key} must be a finite number")
