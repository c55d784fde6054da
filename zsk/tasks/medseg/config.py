"""Recipe schema of the medseg (DTC) task. Defaults are the LA settings of the official training script
(spec "Training"); recipes override them and cite their sources."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Literal

from zsk.core.recipe import RuntimeConfig
from zsk.core.trainer import TrainConfig as CoreTrainConfig
from zsk.tasks.medseg.losses import LossConfig


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
    preload: bool = False  # keep decoded training cases in memory (small sets; each worker holds a copy)
    exclude_duplicates: bool = False  # drop the cases named in ``duplicates`` from both splits
    duplicates: list[str] = field(default_factory=list)


@dataclass
class ModelConfig:
    """The dual-task V-Net (spec "Backbone")."""

    in_channels: int = 1
    n_filters: int = 16
    norm: Literal["batchnorm", "groupnorm", "instancenorm", "none"] = "batchnorm"
    dropout: float = 0.5  # Dropout3d after the bottleneck and before the heads (training only)


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


@dataclass
class EvalConfig:
    """Sliding-window inference and metrics (spec "Inference", "Metrics")."""

    split: str = "test"
    patch_size: tuple[int, int, int] | None = None  # default: data.patch_size
    stride: tuple[int, int, int] = (18, 18, 4)  # stride_xy = 18, stride_z = 4 (test_LA.py)
    window_batch: int = 4  # windows per forward pass (batched on the device)
    threshold: float = 0.5
    largest_component: bool = True  # keep the largest connected component (test_LA.py nms=1)
    spacing: Literal["voxel", "header"] = "voxel"  # distances in voxels (paper) or mm from the header
    asd: Literal["directed", "symmetric"] = "directed"  # medpy asd (official) or symmetric ASSD
    max_cases: int | None = None  # evaluate only the first N cases (quick checks during training)


@dataclass
class Config:
    data: DataConfig = field(default_factory=DataConfig)
    model: ModelConfig = field(default_factory=ModelConfig)
    train: TrainConfig = field(default_factory=TrainConfig)
    eval: EvalConfig = field(default_factory=EvalConfig)
    runtime: RuntimeConfig = field(default_factory=lambda: RuntimeConfig(seed=1337))

    def __post_init__(self) -> None:
        from zsk.core.errors import ZskError

        d, t = self.data, self.train
        if d.num_classes < 2:
            raise ZskError("data.num_classes counts the background and must be >= 2")
        if len(d.class_names) != d.num_classes:
            raise ZskError(f"data.class_names has {len(d.class_names)} names for data.num_classes = "
                           f"{d.num_classes}; give one name per class, background first")
        for key, size in (("data.patch_size", d.patch_size), ("eval.patch_size", self.eval.patch_size)):
            if size is not None and any(s <= 0 or s % 16 for s in size):
                raise ZskError(f"{key} = {list(size)}: every size must be a positive multiple of 16 "
                               "(the V-Net downsamples four times)")
        if any(s <= 0 for s in self.eval.stride):
            raise ZskError(f"eval.stride = {list(self.eval.stride)}: strides must be positive")
        if not 1 <= t.labeled_bs <= t.batch_size:
            raise ZskError(f"train.labeled_bs = {t.labeled_bs} must be between 1 and train.batch_size = "
                           f"{t.batch_size}")
        if d.labeled_num < 1:
            raise ZskError("data.labeled_num must be >= 1")

    @property
    def eval_patch(self) -> tuple[int, int, int]:
        return tuple(self.eval.patch_size or self.data.patch_size)  # type: ignore[return-value]
