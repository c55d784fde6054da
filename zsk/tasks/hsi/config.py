"""Recipe schema of the hsi task: `data`, `model`, `train`, `eval`, `runtime` (see recipes/hsi/*.yaml).

Every size is a recipe option; the defaults are the spec's reconstruction (shared/specs/hsi.md, "Open
points"), since the paper publishes none. DeepHyperX's `--lr` quirk (ignored by several of its models) is
not reproduced: every model reads `train.lr`.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import ClassVar, Literal

from zsk.core.recipe import RuntimeConfig
from zsk.core.trainer import TrainConfig as CoreTrainConfig


@dataclass
class SplitConfig:
    """How labelled pixels are split into train / validation / test (DeepHyperX `sample_gt` modes, plus masks).

    At most one of `fraction` (0 < f < 1 of each class) and `count` (pixels) is set, so "10" never
    means two things; with neither, the fraction is 0.1. `mode: masks` reads `train_mask` (and optionally `test_mask`) label maps instead.
    """

    mode: Literal["random", "fixed", "disjoint", "masks"] = "random"
    fraction: float | None = None  # default 0.1 when count is not set either
    count: int | None = None
    val_share: float = 0.05  # share of the training pixels held out for validation (DeepHyperX: 5%)
    train_mask: str | None = None  # label map file: nonzero pixels are the training set
    test_mask: str | None = None  # label map file: nonzero pixels are the test set (default: all others)
    seed: int | None = None  # default: runtime.seed


@dataclass
class DataConfig:
    root: str = "."
    dataset: str | None = None  # a known benchmark (data.BENCHMARKS) fills the fields below
    image: str | None = None  # cube file, relative to root
    image_key: str | None = None
    labels: str | None = None  # label map file; default: the image file (a second key in it)
    labels_key: str | None = None
    class_names: list[str] | None = None
    rgb_bands: list[int] | None = None
    palette: list[list[int]] | None = None  # RGB per class 1..K
    drop_last_bands: int = 0  # DFC2018 drops its last 2 channels
    # band count of the cube (after drop_last_bands), for `info`/`bench` when the files are not at hand
    # (a cube that differs is used as it is, with a warning). Benchmarks take it from their table.
    bands: int | None = None
    normalize: Literal["global", "band", "standard", "none"] = "global"  # DeepHyperX: global min-max
    pca: int | None = None  # keep this many principal components (None: all bands)
    # reflect: every pixel gets a patch and a prediction (the intended behaviour). none: DeepHyperX's quirk
    # (spec "Open points: Border pixels"): pixels within patch // 2 of the border are never sampled nor predicted.
    pad: Literal["reflect", "none"] = "reflect"
    split: SplitConfig = field(default_factory=SplitConfig)


@dataclass
class ModelConfig:
    name: Literal["cnn", "crf"] = "crf"
    patch: int = 7  # w
    band_groups: int = 4  # G
    branch_channels: list[int] = field(default_factory=lambda: [16, 32, 64])
    branch_spectral_kernels: list[int] = field(default_factory=lambda: [7, 5, 3])
    branch_padding: Literal["same", "valid"] = "same"  # valid: fully convolutional dense prediction
    feature_dim: int = 256
    dropout: float = 0.5
    pairwise_hidden: int = 256
    crf_radius: int = 1  # Chebyshev radius of the neighbourhood N (1: 8-connected)
    mean_field_iters: int = 5
    refine: bool = True
    refine_reduced_dim: int = 64  # node features reduced by a 1x1 conv before refinement (0: Q only)
    refine_widths: list[int] = field(default_factory=lambda: [64, 128])
    refine_residual: bool = True  # logits = log Q + network output (false: the plain encoder-decoder)


@dataclass
class TrainConfig(CoreTrainConfig):
    """Two stages (zsk.core.stages): `piecewise` trains the CRF potentials, `refine` the deconvolution network.

    `train.*` is the piecewise schedule; `train.stages.refine:` overrides it for the refinement (the
    recipes set steps, lr, weight_decay, eval_every and epochs: null there: 200 Adam iterations on the
    whole scene). `unary_weight`, `pairwise_weight` and `class_weights` only matter to `piecewise`,
    `refine_crop` only to `refine`.
    """

    STAGES: ClassVar[tuple[str, ...]] = ("piecewise", "refine")

    batch_size: int = 128  # nodes per batch (with their training-neighbour pairs)
    lr: float = 1e-3
    optimizer: Literal["sgd", "adam", "adamw"] = "adam"
    weight_decay: float = 5e-4
    epochs: int | None = 100
    unary_weight: float = 1.0
    pairwise_weight: float = 1.0
    class_weights: Literal["none", "inverse_median"] = "none"
    refine_crop: int | None = None  # train the refinement on random crops of this size (None: whole scene)


@dataclass
class EvalConfig:
    split: Literal["test", "val", "train", "all"] = "test"
    chunk_pixels: int = 1024  # patches per batched forward in dense prediction ("same" padding)
    tile_pixels: int = 16384  # pixels per fully convolutional tile ("valid" padding), CRF chunk and refinement band


@dataclass
class Config:
    data: DataConfig = field(default_factory=DataConfig)
    model: ModelConfig = field(default_factory=ModelConfig)
    train: TrainConfig = field(default_factory=TrainConfig)
    eval: EvalConfig = field(default_factory=EvalConfig)
    runtime: RuntimeConfig = field(default_factory=RuntimeConfig)
