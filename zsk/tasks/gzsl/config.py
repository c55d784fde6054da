"""Recipe sections of the gzsl task (DGP, Kampffmeyer et al. CVPR 2019; SGCN and GCNZ baselines)."""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any, ClassVar, Literal

from zsk.core.errors import require
from zsk.core.recipe import RuntimeConfig
from zsk.core.trainer import TrainConfig as CoreTrainConfig


def _finite(x: float) -> bool:
    return isinstance(x, (int, float)) and math.isfinite(x)


def _ints_at_least(values: Sequence[int], low: int) -> bool:
    return all(v >= low for v in values)


@dataclass
class DataConfig:
    """Where the DGP `materials/` files live; relative paths are resolved under ``root``."""

    root: str = "materials"
    split: str = "imagenet-split.json"  # {"train": seen wnids (fc row order), "test": unseen wnids}
    testsets: str = "imagenet-testsets.json"  # {"2-hops": [...], "3-hops": [...], "all": [...], ...}
    graph: str = "imagenet-induced-graph.json"  # {"wnids", "vectors", "edges": [[child, parent]]}
    dense_graph: str | None = None  # imagenet-dense-grouped-graph.json; None: computed from `graph`
    fc_weights: str | None = "fc-weights.json"  # [[wnid, w_1..w_F, b]]; None: read the CNN's fc layer
    names: str | None = "words.txt"  # ImageNet words.txt (wnid<TAB>names); missing: WordNet lemmas or wnids
    images: str = "datasets/imagenet"  # ImageFolder tree of <wnid>/ folders (ImageNet fall 2011)
    awa2_split: str = "awa2-split.json"  # {"train", "test", "train_names", "test_names"}
    awa2_images: str = "datasets/awa2/JPEGImages"  # <name>/ folders, names as in awa2-split.json
    resize: int = 256  # evaluation: Resize 256 -> CenterCrop 224 (spec "Protocol")
    crop: int = 224

    def __post_init__(self) -> None:
        require(self.resize >= 1, "data.resize", ">= 1", self.resize)
        require(self.crop >= 1, "data.crop", ">= 1", self.crop)
        require(self.crop <= self.resize, "data.crop", f"<= data.resize ({self.resize}): the centre crop is taken "
                 "from the resized image", self.crop)


@dataclass
class ModelConfig:
    """The graph network and the CNN whose last layer it regresses."""

    # dgp: DGP (train_gcn_dense_att.py); gcn_dense: DGP's GCN_Dense (train_gcn_dense.py, no distance groups);
    # sgcn: DGP's SGCN (train_gcn_basic.py); gcnz: GCNZ (Wang et al. CVPR 2018, the GCNZ code's GCN_dense_mse)
    name: Literal["dgp", "gcn_dense", "sgcn", "gcnz"] = "dgp"
    hidden: list[int] = field(default_factory=lambda: [2048])  # DGP/SGCN: one hidden layer of 2048
    dropout: float = 0.5
    negative_slope: float = 0.2  # LeakyReLU slope
    max_distance: int = 4  # DGP: hop distances >= max_distance share one group (5 groups: 0,1,2,3,>=4)
    attention: bool = True  # DGP: softmax-weighted distance groups; false = plain mean over groups (ablation)
    normalize_output: bool = True  # L2-normalise predicted classifier rows
    input_norm: Literal["l2", "sum", "none"] = "l2"  # word vectors on load: l2 (DGP trainers), sum (GCNZ code)
    bias: bool = True  # GCN layers (sgcn, gcnz): a bias per layer (DGP's GraphConv); the GCNZ code has none
    dropout_layers: list[int] | None = None  # GCN layers (1-based) with dropout on their input; null: every layer
    adjacency: Literal["row", "sym"] = "row"  # sgcn/gcnz: D^-1 (A+I) (DGP's normt_spm) or D^-1/2 (A+I) D^-1/2 (GCNZ)
    target_bias: bool = True  # regress [fc weight | fc bias] (2049-d); GCNZ regresses the weights only
    lemma_case: Literal["keep", "lower"] = "keep"  # GloVe lookup of lemma names: as written (materials/glove.py) or lower-cased
    word_vectors: str | None = None  # GloVe text file: recompute node vectors from lemma names
    nltk_data: str | None = None  # extra folder holding corpora/wordnet, for lemma names
    cnn: str = "resnet50"  # torchvision backbone: targets (fc) and image features (pooled)
    pretrained: str | None = "imagenet"  # CNN weights: "imagenet" (torchvision cache), a local file, or null (random)

    def __post_init__(self) -> None:
        require(len(self.hidden) >= 1 and _ints_at_least(self.hidden, 1), "model.hidden",
                 "a list of hidden widths >= 1 (DGP/SGCN: [2048])", self.hidden)
        require(_finite(self.dropout) and 0.0 <= self.dropout < 1.0, "model.dropout", "in [0, 1)", self.dropout)
        require(_finite(self.negative_slope) and self.negative_slope >= 0.0, "model.negative_slope",
                 "a finite number >= 0 (LeakyReLU slope; DGP: 0.2)", self.negative_slope)
        require(self.max_distance >= 1, "model.max_distance", ">= 1 (DGP: 4, groups 0, 1, 2, 3, >=4)",
                 self.max_distance)
        require(bool(self.cnn.strip()), "model.cnn", "a torchvision model name (e.g. resnet50)", self.cnn)


# Stage two's own defaults (DGP's fine-tuning, Kampffmeyer et al. CVPR 2019, Sec. 3.4: SGD, lr 1e-4,
# momentum 0.9, batch 64; 20 epochs as the maintainers describe, issue #15; no model selection). They sit
# between ``train.*`` and the ``train.stages.finetune`` block: the block overrides them, and every other
# ``train.*`` key (max_steps, grad_accum, clip_grad_norm, schedule, ...) is inherited as in any stage.
FINETUNE_DEFAULTS: dict[str, Any] = {
    "enabled": False,
    "optimizer": "sgd",
    "lr": 1e-4,
    "momentum": 0.9,
    "weight_decay": 0.0,
    "batch_size": 64,
    "epochs": 20,
    "steps": None,
    "eval_every": 0,
    "log_every": 10,
    "best_metric": None,
}


@dataclass
class TrainConfig(CoreTrainConfig):
    """DGP training in two stages (Kampffmeyer et al. CVPR 2019): ``propagate`` regresses the seen
    classifiers with the graph network (full-graph Adam, spec "Loss and training"); ``finetune`` (off
    unless ``train.stages.finetune.enabled``) trains the CNN under the fixed predicted classifiers
    (spec "Stage 2"). ``train.stages.<name>`` blocks override ``train.*`` per stage."""

    STAGES: ClassVar[tuple[str, ...]] = ("propagate", "finetune")
    STAGE_DEFAULTS: ClassVar[dict[str, dict[str, Any]]] = {"finetune": FINETUNE_DEFAULTS}

    batch_size: int = 1  # the whole graph is one batch
    lr: float = 1e-3
    optimizer: Literal["sgd", "adam", "adamw"] = "adam"
    weight_decay: float = 5e-4
    epochs: int | None = 3000
    checkpoint_every: int = 300  # propagate: write snapshots/epoch-N.pred every N epochs (0: only the last)
    # l2: sum of squares / (2M) (DGP, SGCN; utils.l2_loss); gcnz: (N/M)^2 / 2 * sum of squares (the GCNZ code's
    # mask_mse_loss with its mask rescaled by its mean, N graph nodes); mse: mean over entries
    loss: Literal["l2", "gcnz", "mse"] = "l2"
    best_metric: str | None = "seen_loss"  # no validation split: best-propagate.pt never looks at test-set hit@k
    best_mode: Literal["max", "min"] = "min"
    # DGP uses the final epoch (spec "Open points"), and stage two fine-tunes under the last classifiers
    select: Literal["best", "last"] = "last"
    enabled: bool = True  # whether the stage runs (train.stages.finetune.enabled switches stage two on)
    classifiers: str | None = None  # finetune: a stage-one snapshot `epoch-N.pred` to fine-tune under (skips propagate)

    def __post_init__(self) -> None:
        super().__post_init__()  # the shared train.* checks and the stage blocks
        require(self.checkpoint_every >= 0, "train.checkpoint_every", ">= 0 (0: only the last snapshot)",
                 self.checkpoint_every)


@dataclass
class EvalConfig:
    """ImageNet hit@k (spec "Evaluation")."""

    testset: str = "2-hops"  # a key of data.testsets, or "awa2"
    generalized: bool = False  # GZSL "+1K": the seen classes join the candidates
    keep_ratio: float = 1.0  # fraction of each class's images (reference code: 0.1, random per class)
    ks: list[int] = field(default_factory=lambda: [1, 2, 5, 10, 20])
    features: str | None = None  # precomputed image features (.npy, N x F); None: run the CNN on data.images
    labels: str | None = None  # one wnid per line for the rows of `features`
    batch_size: int = 64

    def __post_init__(self) -> None:
        require(bool(self.testset.strip()), "eval.testset", "a test-set name (2-hops, 3-hops, all, awa2)",
                 self.testset)
        require(_finite(self.keep_ratio) and 0.0 < self.keep_ratio <= 1.0, "eval.keep_ratio", "in (0, 1]",
                 self.keep_ratio)
        require(len(self.ks) >= 1 and _ints_at_least(self.ks, 1), "eval.ks", "a list of k >= 1 (hit@k)", self.ks)
        require(self.batch_size >= 1, "eval.batch_size", ">= 1", self.batch_size)


@dataclass
class Config:
    data: DataConfig = field(default_factory=DataConfig)
    model: ModelConfig = field(default_factory=ModelConfig)
    train: TrainConfig = field(default_factory=TrainConfig)
    eval: EvalConfig = field(default_factory=EvalConfig)
    runtime: RuntimeConfig = field(default_factory=RuntimeConfig)
