"""Recipe schema of the fakenews task (Chen et al., CONSTRAINT@AAAI 2021, "Ro-CT-BERT").

Defaults are the paper's settings (spec: Method / Training); `[reconstruction]` marks the choices the
paper leaves open (spec: Open points), each of which is a recipe option.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import ClassVar, Literal

from zsk.core.recipe import RuntimeConfig
from zsk.core.trainer import TrainConfig as CoreTrainConfig

# The six whole-word tokens the paper adds to CT-BERT's vocabulary (spec: Token vocabulary expansion).
PAPER_NEW_TOKENS: tuple[str, ...] = ("covid-19", "covid19", "coronavirus", "pandemic", "indiafightscorona", "lockdown")


@dataclass
class PreprocessConfig:
    """Text cleaning before tokenisation (spec: Preprocessing)."""

    strip_urls: bool = True
    strip_symbols: bool = True  # non-alphanumeric characters, emoji, unicode symbols
    keep_hyphens: bool = True  # [reconstruction] keep in-word hyphens so `covid-19` survives
    strip_stopwords: bool = True  # English stop-words (scikit-learn's list)
    lowercase: bool = False  # the tokenizer lower-cases when its model is uncased


@dataclass
class DataConfig:
    root: str = "data/constraint"
    train_file: str = "Constraint_Train.csv"
    val_file: str = "Constraint_Val.csv"
    test_file: str = "english_test_with_labels.csv"
    format: Literal["auto", "csv", "tsv", "jsonl"] = "auto"
    encoding: str = "utf-8"
    text_column: str = "tweet"
    label_column: str = "label"
    id_column: str | None = "id"
    classes: list[str] = field(default_factory=lambda: ["real", "fake"])  # [] = sorted labels of the train file
    label_map: dict[str, str] = field(default_factory=dict)  # raw label value -> class name
    max_length: int = 128  # spec: Preprocessing
    preprocess: PreprocessConfig = field(default_factory=PreprocessConfig)
    cache: bool = True  # keep tokenised corpora in the zsk cache


@dataclass
class EncoderConfig:
    """Architecture of a randomly initialised encoder (used when `pretrained` is null: demos, tests)."""

    arch: Literal["bert", "roberta"] = "bert"
    hidden_size: int = 64
    num_layers: int = 2
    num_heads: int = 2
    intermediate_size: int = 128
    max_position_embeddings: int = 160
    dropout: float = 0.1


@dataclass
class TokenizerConfig:
    """Where a branch's tokenizer comes from when it is not the pretrained model's own."""

    source: str | None = None  # HF id / local dir; null = the branch's `pretrained`, or `build` when that is null
    build_vocab_size: int = 1000  # `build`: WordPiece vocabulary trained on the training texts
    build_lowercase: bool = True


@dataclass
class BranchConfig:
    """One fine-tuned transformer branch (RoBERTa or CT-BERT in the paper)."""

    pretrained: str | None = None  # HF id or local directory; null = random init from `encoder`
    encoder: EncoderConfig = field(default_factory=EncoderConfig)
    tokenizer: TokenizerConfig = field(default_factory=TokenizerConfig)
    pooling: Literal["cls", "pooler"] = "cls"  # [CLS] vector (spec: Fusion, natural reading)
    dropout: float = 0.1
    new_tokens: Literal["none", "paper", "frequent", "list"] = "none"  # vocabulary expansion
    new_tokens_n: int = 6  # `frequent`: top-N multi-piece corpus terms
    new_tokens_min_count: int = 2
    new_tokens_list: list[str] = field(default_factory=list)  # `list`: explicit tokens
    new_tokens_init: Literal["mean", "random"] = "mean"  # [reconstruction] mean of sub-word embeddings
    new_tokens_corpus: Literal["train", "train+val"] = "train+val"  # paper: frequent terms of train + val


@dataclass
class ModelConfig:
    branches: dict[str, BranchConfig] = field(default_factory=lambda: {"ctbert": BranchConfig()})
    fusion: Literal["features", "scores"] = "features"  # [reconstruction] Figure 1: representation fusion
    fusion_hidden: int = 512  # [reconstruction] 2048 -> 512 -> 2
    fusion_dropout: float = 0.1
    fusion_standardize: bool = True  # [reconstruction] scale fusion inputs by train-feature statistics


@dataclass
class HeatedSoftmaxConfig:
    """Heated-up softmax (Zhang et al. 2018): logits scaled by alpha, alpha lowered over epochs."""

    enabled: bool = True
    alphas: list[float] = field(default_factory=lambda: [4.0, 1.0, 0.5])  # spec: schedule table
    milestones: list[int] = field(default_factory=lambda: [10, 20])  # epochs (0-based) where alpha changes


@dataclass
class FGMConfig:
    enabled: bool = True
    epsilon: float = 1.0  # [reconstruction] not reported; the common FGM default


@dataclass
class HardExamplesConfig:
    """Iterative hard-example augmentation (spec: Method). Off by default."""

    enabled: bool = False
    # `train+val` is what the paper does; it LEAKS the validation set into training, so val scores
    # (and checkpoint selection on val) are no longer clean. Keep a separate hold-out (the test file).
    source: Literal["train+val", "train"] = "train+val"
    synonyms: str | None = None  # synonym groups file; without one, only word deletion is used
    max_edits: int = 2  # delete / replace 1..max_edits words
    max_pool: int = 100000  # cap on augmented samples kept (applies to the branch fine-tuning stages)


@dataclass
class TrainConfig(CoreTrainConfig):
    """Settings of every stage: one stage per branch (named as in `model.branches`), then `fusion`
    (frozen branches, MLP on the concatenated features) when there are several branches. A
    `train.stages.<name>` block overrides these keys for one stage, e.g. the fusion MLP's 5 epochs."""

    # The paper's branches, then the fusion MLP (a branch of another name trains as a stage of that
    # name but cannot take a `train.stages` block; a single-branch recipe trains in one stage).
    STAGES: ClassVar[tuple[str, ...]] = ("roberta", "ctbert", "fusion")

    batch_size: int = 64  # spec: Training
    lr: float = 2e-5  # spec: Training
    optimizer: Literal["sgd", "adam", "adamw"] = "adamw"
    weight_decay: float = 0.01  # [reconstruction] on non-bias, non-norm weights
    schedule: Literal["constant", "poly", "cosine", "step"] = "poly"
    poly_power: float = 1.0  # linear decay after warm-up
    warmup_fraction: float = 0.1  # spec: linear warm-up ratio 0.1 (of all steps)
    warmup_ratio: float = 0.0
    epochs: int | None = 30  # spec: Training
    best_metric: str | None = "f1_weighted"
    select: Literal["best", "last"] = "best"  # [reconstruction] best val weighted F1
    heated_softmax: HeatedSoftmaxConfig = field(default_factory=HeatedSoftmaxConfig)
    fgm: FGMConfig = field(default_factory=FGMConfig)
    hard_examples: HardExamplesConfig = field(default_factory=HardExamplesConfig)


@dataclass
class EvalConfig:
    split: Literal["train", "val", "test"] = "test"
    batch_size: int = 128  # spec: Training (eval batch 128)


@dataclass
class Config:
    data: DataConfig = field(default_factory=DataConfig)
    model: ModelConfig = field(default_factory=ModelConfig)
    train: TrainConfig = field(default_factory=TrainConfig)
    eval: EvalConfig = field(default_factory=EvalConfig)
    runtime: RuntimeConfig = field(default_factory=RuntimeConfig)
