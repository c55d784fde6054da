"""Recipe schema of the medseg (DTC) task. Defaults are the LA settings of the official training script
(spec "Training"); recipes override them and cite their sources."""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Literal

from zsk.core.errors import ZskError
from zsk.core.recipe import RuntimeConfig
from zsk.core.trainer import TrainConfig as CoreTrainConfig
from zsk.tasks.medseg.losses import LossConfig


def check_patch(key: str, size: tuple[int, int, int]) -> None:
    """A V-Net patch: three positive multiples of 16 (the network downsamples four times)."""
    if any(s <= 0 or s % 16 for s in size):
        raise ZskError(f"{key} = {list(size)}: every size must be a positive multiple of 16 "
                       "(the V-Net downsamples four times)")


@dataclass
class DataConfig:
    """Where the cases live and how training patches are drawn.

    ``train_list`` / ``test_list`` are, after ``{root}`` is substituted: a list file with one case ID per
    line (each ID becomes a file through ``case_path`` / ``label_path``), a CSV with ``image[,label]``
    columns, or a folder with ``images/`` and ``labels/`` NIfTI files.
    """

    root: str = "data/LA"
    format: Literal["h5", "nifti"] = "h5"
    train_list: str = "{root}/train.list"
    test_list: str = "{root}/test.list"
    case_path: str = "{root}/{case}/mri_norm2.h5"  # LA layout; Pancreas: "{root}/data/{case}.h5"
    label_path: str = "{root}/labels/{case}.nii.gz"  # NIfTI list files only (HDF5 keeps the label inside)
    image_key: str = "image"
    label_key: str = "label"
    spacing: tuple[float, float, float] | None = None  # mm per voxel for HDF5 files that store none
    num_classes: int = 2  # background included; > 2 uses the multi-class extension
    class_names: list[str] = field(default_factory=lambda: ["background", "foreground"])
    labeled_num: int = 16  # the first N cases of the train list are labelled, the rest unlabelled
    patch_size: tuple[int, int, int] = (112, 112, 80)
    rot_flip: bool = True  # random in-plane rot90 + flip on axis 0 or 1 before the crop
    # random-crop starts: "all" reaches every position (zsk fix); "official" = la_heart.py's
    # randint(0, size - patch), which never draws the last start (the padding rule is DTC's in both)
    crop_starts: Literal["all", "official"] = "all"
    preload: bool = False  # keep decoded training cases in memory (small sets; each worker holds a copy)
    exclude_duplicates: bool = False  # drop the cases named in ``duplicates`` from both splits
    duplicates: list[str] = field(default_factory=list)

    def __post_init__(self) -> None:
        if self.num_classes < 2:
            raise ZskError(f"data.num_classes counts the background and must be >= 2, got {self.num_classes}")
        if self.num_classes > 256:
            raise ZskError(f"data.num_classes must be <= 256 (masks are written as 8-bit), got {self.num_classes}")
        if len(self.class_names) != self.num_classes:
            raise ZskError(f"data.class_names has {len(self.class_names)} names for data.num_classes = "
                           f"{self.num_classes}; give one name per class, background first")
        if self.labeled_num < 1:
            raise ZskError(f"data.labeled_num must be >= 1, got {self.labeled_num}")
        check_patch("data.patch_size", self.patch_size)
        if self.spacing is not None and not all(math.isfinite(s) and s > 0 for s in self.spacing):
            raise ZskError(f"data.spacing must be 3 positive numbers (mm per voxel), got {list(self.spacing)}")
        for key in ("image_key", "label_key"):
            if not getattr(self, key).strip():
                raise ZskError(f"data.{key} must name an HDF5 dataset, got an empty string")


@dataclass
class ModelConfig:
    """The dual-task V-Net (spec "Backbone")."""

    in_channels: int = 1
    n_filters: int = 16
    norm: Literal["batchnorm", "groupnorm", "instancenorm", "none"] = "batchnorm"
    dropout: float = 0.5  # Dropout3d after the bottleneck and before the heads (training only)

    def __post_init__(self) -> None:
        if self.in_channels != 1:
            raise ZskError(f"model.in_channels must be 1 (the volume readers give single-channel images, as LA "
                           f"and Pancreas-CT are), got {self.in_channels}")
        if self.n_filters < 1:
            raise ZskError(f"model.n_filters must be >= 1, got {self.n_filters}")
        if not (math.isfinite(self.dropout) and 0.0 <= self.dropout < 1.0):
            raise ZskError(f"model.dropout must be in [0, 1), got {self.dropout}")
        if self.norm == "groupnorm":
            # zsk.models.vnet uses min(16, C) groups; the V-Net's widths are F, 2F, 4F, 8F, 16F
            bad = [c for c in (self.n_filters << i for i in range(5)) if c % min(16, c)]
            if bad:
                raise ZskError(f"model.n_filters = {self.n_filters} with model.norm=groupnorm gives {bad[0]} channels, "
                               "not divisible into 16 groups; use a power of two or a multiple of 16")


@dataclass
class TrainConfig(CoreTrainConfig):
    """Core schedule/optimizer keys plus the two-stream batch and the DTC loss weights."""

    batch_size: int = 4
    labeled_bs: int = 2  # labelled samples at the front of every batch; the rest are unlabelled
    lr: float = 0.01
    optimizer: Literal["sgd", "adam", "adamw"] = "sgd"
    weight_decay: float = 1e-4
    schedule: Literal["constant", "poly", "cosine", "step"] = "step"
    milestones: list[int] = field(default_factory=lambda: [2500, 5000])
    steps: int | None = 6000
    loss: LossConfig = field(default_factory=LossConfig)

    def __post_init__(self) -> None:
        super().__post_init__()  # the shared train.* ranges
        if not 1 <= self.labeled_bs <= self.batch_size:
            raise ZskError(f"train.labeled_bs = {self.labeled_bs} must be between 1 and train.batch_size = "
                           f"{self.batch_size}")


@dataclass
class EvalConfig:
    """Sliding-window inference and metrics (spec "Inference", "Metrics")."""

    split: str = "test"
    patch_size: tuple[int, int, int] | None = None  # default: data.patch_size
    stride: tuple[int, int, int] = (18, 18, 4)  # stride_xy = 18, stride_z = 4 (test_LA.py)
    # windows per forward pass: a number, or auto (1 or 8, whichever the first volume's windows run faster
    # per window on the device; evaluate.window_batch_for)
    window_batch: int | Literal["auto"] = "auto"
    threshold: float = 0.5
    largest_component: bool = True  # keep the largest connected component (test_LA.py nms=1)
    spacing: Literal["voxel", "header"] = "voxel"  # distances in voxels (paper) or mm from the header
    asd: Literal["directed", "symmetric"] = "directed"  # medpy asd (official) or symmetric ASSD
    max_cases: int | None = None  # evaluate only the first N cases (quick checks during training)

    def __post_init__(self) -> None:
        if self.patch_size is not None:
            check_patch("eval.patch_size", self.patch_size)
        if any(s <= 0 for s in self.stride):
            raise ZskError(f"eval.stride = {list(self.stride)}: strides must be positive")
        if self.window_batch != "auto" and self.window_batch < 1:
            raise ZskError(f"eval.window_batch must be >= 1 or auto, got {self.window_batch}")
        if not (math.isfinite(self.threshold) and 0.0 < self.threshold < 1.0):
            raise ZskError(f"eval.threshold is a probability and must be in (0, 1), got {self.threshold}")
        if self.max_cases is not None and self.max_cases < 1:
            raise ZskError(f"eval.max_cases must be >= 1 (or null for every case), got {self.max_cases}")


@dataclass
class Config:
    data: DataConfig = field(default_factory=DataConfig)
    model: ModelConfig = field(default_factory=ModelConfig)
    train: TrainConfig = field(default_factory=TrainConfig)
    eval: EvalConfig = field(default_factory=EvalConfig)
    runtime: RuntimeConfig = field(default_factory=lambda: RuntimeConfig(seed=1337))

    def __post_init__(self) -> None:
        # each section checks its own keys; here only what spans two sections
        key, patch = self.eval_window_key, self.eval_patch
        if any(s > p for s, p in zip(self.eval.stride, patch, strict=True)):
            raise ZskError(f"eval.stride = {list(self.eval.stride)} is larger than the sliding window {key} = "
                           f"{list(patch)}: voxels between windows would get no prediction; use strides at most "
                           "the window (DTC's LA test: stride 18, 18, 4 for a 112, 112, 80 window)")

    @property
    def eval_window_key(self) -> str:
        """The recipe key that sets the sliding window (for messages)."""
        return "eval.patch_size" if self.eval.patch_size is not None else "data.patch_size"

    @property
    def eval_patch(self) -> tuple[int, int, int]:
        return tuple(self.eval.patch_size or self.data.patch_size)  # type: ignore[return-value]
