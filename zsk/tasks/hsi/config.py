"""Recipe schema of the hsi task: `data`, `model`, `train`, `eval`, `runtime` (see recipes/hsi/*.yaml).

Every size is a recipe option; the defaults are the spec's reconstruction (shared/specs/hsi.md, "Open
points"), since the paper publishes none. DeepHyperX's `--lr` quirk (ignored by several of its models) is
not reproduced: every model reads `train.lr`.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import ClassVar, Literal

from zsk.core.errors import ZskError
from zsk.core.recipe import RuntimeConfig
from zsk.core.trainer import TrainConfig as CoreTrainConfig


def _at_least(key: str, value: int | float | None, low: int | float) -> None:
    """ZskError naming `key` unless `value` is None or a finite number >= `low`."""
    if value is not None and not (math.isfinite(value) and value >= low):
        raise ZskError(f"{key} must be >= {low}, got {value}")


def _in_unit(key: str, value: float | None, open_low: bool, open_high: bool) -> None:
    """ZskError naming `key` unless `value` is None or in the interval 0..1 (ends open or closed)."""
    if value is None:
        return
    ok = math.isfinite(value) and (value > 0 if open_low else value >= 0) and (value < 1 if open_high else value <= 1)
    if not ok:
        lo, hi = "(" if open_low else "[", ")" if open_high else "]"
        raise ZskError(f"{key} must be in {lo}0, 1{hi}, got {value}")


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

    def __post_init__(self) -> None:
        if self.fraction is not None and self.count is not None:
            raise ZskError("data.split: set either fraction or count, not both (to use a count over a recipe that "
                           "sets a fraction: --set data.split.fraction=null)")
        if self.fraction is not None and not (math.isfinite(self.fraction) and 0.0 < self.fraction < 1.0):
            raise ZskError(f"data.split.fraction must be between 0 and 1 (a share of each class), got {self.fraction}; "
                           "use data.split.count for pixel counts")
        _at_least("data.split.count", self.count, 1)
        _in_unit("data.split.val_share", self.val_share, False, True)


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
    # NaN/inf values in a cube: "error" refuses the file (exit 2, naming it and the count); "zero" sets every
    # band of such a pixel to 0, leaves it unlabelled in training and unpredicted (0) in predict (DeepHyperX's
    # `datasets.get_dataset` does the same, with a warning)
    non_finite: Literal["error", "zero"] = "error"
    split: SplitConfig = field(default_factory=SplitConfig)

    def __post_init__(self) -> None:
        _at_least("data.drop_last_bands", self.drop_last_bands, 0)
        _at_least("data.bands", self.bands, 1)
        _at_least("data.pca", self.pca, 1)
        if self.rgb_bands is not None and (len(self.rgb_bands) != 3 or min(self.rgb_bands) < 0):
            raise ZskError(f"data.rgb_bands must be 3 band indices >= 0 (red, green, blue), got {self.rgb_bands}")
        if self.class_names is not None:
            if not self.class_names or any(not str(n).strip() for n in self.class_names):
                raise ZskError(f"data.class_names must be non-empty names, one per class 1..K, got {self.class_names}")
            twice = sorted({n for n in self.class_names if self.class_names.count(n) > 1})
            if twice:
                raise ZskError(f"data.class_names must be unique; {', '.join(map(repr, twice))} appears twice")
        if self.palette is not None and any(len(c) != 3 or not all(0 <= v <= 255 for v in c) for c in self.palette):
            raise ZskError(f"data.palette must be RGB triples of 0..255, one per class, got {self.palette}")
        if self.palette is not None and self.class_names is not None and len(self.palette) != len(self.class_names):
            raise ZskError(f"data.palette has {len(self.palette)} colours for {len(self.class_names)} "
                           "data.class_names; give one RGB triple per class")


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
    # full: the mean-field update of the energy over ordered pairs (V_pq Q_q and V_qp^T Q_q); outgoing: V_pq Q_q only
    mean_field_update: Literal["full", "outgoing"] = "full"
    refine: bool = True
    refine_reduced_dim: int = 64  # node features reduced by a 1x1 conv before refinement (0: Q only)
    refine_widths: list[int] = field(default_factory=lambda: [64, 128])
    refine_residual: bool = True  # logits = log Q + network output (false: the plain encoder-decoder)

    def __post_init__(self) -> None:
        if self.patch < 1 or self.patch % 2 == 0:
            raise ZskError(f"model.patch must be an odd size >= 1 (w x w centred on the pixel), got {self.patch}")
        _at_least("model.band_groups", self.band_groups, 1)
        for key in ("branch_channels", "branch_spectral_kernels"):
            values = getattr(self, key)
            if not values or min(values) < 1:
                raise ZskError(f"model.{key} must be a non-empty list of sizes >= 1, got {values}")
        if len(self.branch_channels) != len(self.branch_spectral_kernels):
            raise ZskError(f"model.branch_channels ({len(self.branch_channels)} layers) and "
                           f"model.branch_spectral_kernels ({len(self.branch_spectral_kernels)}) need the same length")
        if self.branch_padding == "valid" and self.patch < 2 * len(self.branch_channels) + 1:
            raise ZskError(f"model.patch={self.patch} is too small for {len(self.branch_channels)} valid 3x3 "
                           f"convolutions; use a patch of at least {2 * len(self.branch_channels) + 1} or "
                           "model.branch_padding: same")
        _at_least("model.feature_dim", self.feature_dim, 1)
        _in_unit("model.dropout", self.dropout, False, True)
        _at_least("model.pairwise_hidden", self.pairwise_hidden, 1)
        _at_least("model.crf_radius", self.crf_radius, 1)
        _at_least("model.mean_field_iters", self.mean_field_iters, 0)
        _at_least("model.refine_reduced_dim", self.refine_reduced_dim, 0)
        if len(self.refine_widths) != 2 or min(self.refine_widths) < 1:
            raise ZskError(f"model.refine_widths must be the two encoder widths >= 1, e.g. [64, 128], "
                           f"got {self.refine_widths}")


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
    # sum: the piecewise objective Σ CE(unary) + Σ CE(pairwise) over a batch's nodes and pairs; mean: each averaged
    loss_reduction: Literal["sum", "mean"] = "sum"
    refine_crop: int | None = None  # train the refinement on random crops of this size (None: whole scene)

    def __post_init__(self) -> None:
        # hsi's own keys first: the core's checks then parse the train.stages blocks, which merge these values
        # (checked after, a bad train.unary_weight would be reported as train.stages.refine.unary_weight)
        _at_least("train.unary_weight", self.unary_weight, 0)
        _at_least("train.pairwise_weight", self.pairwise_weight, 0)
        _at_least("train.refine_crop", self.refine_crop, 1)
        super().__post_init__()  # the shared train.* ranges and the stage blocks (zsk.core.trainer)


@dataclass
class EvalConfig:
    split: Literal["test", "val", "train", "all"] = "test"
    # patches per batched forward in dense prediction ("same" padding): a number, or "auto" (the fastest of a
    # few sizes, timed on the first patches of the scene on its device; see evaluate.measured_chunk)
    chunk_pixels: int | Literal["auto"] = "auto"
    tile_pixels: int = 16384  # pixels per fully convolutional tile ("valid" padding), CRF chunk and refinement band
    # MiB of pairwise energies kept between mean-field iterations (computed once per run instead of once per
    # iteration; same output bit for bit); chunks beyond the budget are recomputed. 0: recompute every time
    crf_cache_mb: float = 1024.0

    def __post_init__(self) -> None:
        if self.chunk_pixels != "auto":
            if isinstance(self.chunk_pixels, bool) or not isinstance(self.chunk_pixels, int):
                raise ZskError(f"eval.chunk_pixels must be a patch count >= 1 or auto, got {self.chunk_pixels!r}")
            _at_least("eval.chunk_pixels", self.chunk_pixels, 1)
        _at_least("eval.tile_pixels", self.tile_pixels, 1)
        _at_least("eval.crf_cache_mb", self.crf_cache_mb, 0)


@dataclass
class Config:
    data: DataConfig = field(default_factory=DataConfig)
    model: ModelConfig = field(default_factory=ModelConfig)
    train: TrainConfig = field(default_factory=TrainConfig)
    eval: EvalConfig = field(default_factory=EvalConfig)
    runtime: RuntimeConfig = field(default_factory=RuntimeConfig)
