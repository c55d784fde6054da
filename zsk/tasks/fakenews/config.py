"""Recipe schema of the fakenews task (Chen et al., CONSTRAINT@AAAI 2021, "Ro-CT-BERT").

Defaults are the paper's settings (spec: Method / Training); `[reconstruction]` marks the choices the
paper leaves open (spec: Open points), each of which is a recipe option.
"""

from __future__ import annotations

import codecs
import math
from dataclasses import dataclass, field
from typing import ClassVar, Literal

from zsk.core.errors import ZskError, require
from zsk.core.recipe import RuntimeConfig
from zsk.core.trainer import TrainConfig as CoreTrainConfig


def _at_least(key: str, value: int | float, low: int | float) -> None:
    require(isinstance(value, (int, float)) and math.isfinite(value) and value >= low, key, f">= {low}", value)


def _probability(key: str, value: float) -> None:
    """A dropout rate: [0, 1)."""
    require(math.isfinite(value) and 0.0 <= value < 1.0, key, "in [0, 1)", value)


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

    def __post_init__(self) -> None:
        for key in ("train_file", "val_file", "test_file", "text_column", "label_column"):
            require(bool(str(getattr(self, key)).strip()), f"data.{key}", "a non-empty name", getattr(self, key))
        if self.text_column == self.label_column:
            raise ZskError(f"data.text_column and data.label_column both name {self.text_column!r}; "
                           f"the texts and the labels need their own columns")
        # [CLS] and [SEP] take two of the max_length positions (BERT input format, Devlin et al. 2019, Sec. 3)
        _at_least("data.max_length", self.max_length, 3)
        try:
            codecs.lookup(self.encoding)
        except LookupError:
            raise ZskError(f"data.encoding: unknown text encoding {self.encoding!r} (e.g. utf-8, latin-1, cp1252)") from None
        names = [c.strip().lower() for c in self.classes]
        if any(not n for n in names):
            raise ZskError(f"data.classes holds an empty class name: {list(self.classes)}")
        if len(set(names)) != len(names):
            raise ZskError(f"data.classes names a class twice: {list(self.classes)}")
        if len(self.classes) == 1:
            raise ZskError(f"data.classes must name at least two classes (or [] for the train file's labels), "
                           f"got {list(self.classes)}")
        if self.classes:
            known = set(names)
            for raw, name in self.label_map.items():
                if name.strip().lower() not in known:
                    raise ZskError(f"data.label_map.{raw} maps to {name!r}, which is not one of data.classes "
                                   f"{list(self.classes)}")


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
    # Form of each branch's classifier under the heated-up softmax (Zhang et al. 2018):
    # `normalized` z_m = alpha cos(f, w_m) + b_m (Zhang et al.'s form, the paper's method);
    # `linear` z = alpha (W f + b) (an unnormalised temperature-scaled softmax, zsk's form before issue 11).
    # With train.heated_softmax.enabled false a branch keeps the ordinary linear classifier.
    heated_softmax: Literal["normalized", "linear"] = "normalized"

    def __post_init__(self) -> None:
        if not self.branches:
            raise ZskError("model.branches is empty: give at least one branch, e.g. "
                           "--set 'model.branches={ctbert: {pretrained: digitalepidemiologylab/covid-twitter-bert-v2}}'")
        if "fusion" in self.branches and len(self.branches) > 1:
            raise ZskError("model.branches.fusion: 'fusion' names the fusion stage; give the branch another name")
        for name, b in self.branches.items():
            check_branch(f"model.branches.{name}", b)
        _at_least("model.fusion_hidden", self.fusion_hidden, 1)
        _probability("model.fusion_dropout", self.fusion_dropout)


def check_branch(key: str, b: BranchConfig) -> None:
    """Ranges of one branch's settings (encoder shape, dropout, vocabulary expansion), named ``key.*``."""
    enc = b.encoder
    for name in ("hidden_size", "num_layers", "num_heads", "intermediate_size", "max_position_embeddings"):
        _at_least(f"{key}.encoder.{name}", getattr(enc, name), 1)
    if enc.hidden_size % enc.num_heads:
        raise ZskError(f"{key}.encoder.num_heads must divide encoder.hidden_size ({enc.hidden_size}), got {enc.num_heads}")
    _probability(f"{key}.encoder.dropout", enc.dropout)
    _probability(f"{key}.dropout", b.dropout)
    _at_least(f"{key}.tokenizer.build_vocab_size", b.tokenizer.build_vocab_size, 1)
    _at_least(f"{key}.new_tokens_n", b.new_tokens_n, 1)
    _at_least(f"{key}.new_tokens_min_count", b.new_tokens_min_count, 1)
    if b.new_tokens == "list" and not b.new_tokens_list:
        raise ZskError(f"{key}.new_tokens is 'list' but {key}.new_tokens_list is empty")
    if any(not t.strip() for t in b.new_tokens_list):
        raise ZskError(f"{key}.new_tokens_list holds an empty token: {list(b.new_tokens_list)}")
    if b.pretrained is not None and not b.pretrained.strip():
        raise ZskError(f"{key}.pretrained is empty; give a Hugging Face id or local folder, or null for random init")


@dataclass
class HeatedSoftmaxConfig:
    """Heated-up softmax (Zhang et al. 2018): alpha times the cosine logits (model.heated_softmax), alpha
    lowered over epochs."""

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

    def __post_init__(self) -> None:
        # the task's own keys first: the core checks end by validating the merged train.stages blocks,
        # which would report a bad top-level value under the stage's name
        self._check_task_keys()
        super().__post_init__()

    def _check_task_keys(self) -> None:
        """Ranges of the fakenews train keys (warm-up fraction, heated softmax, FGM, hard examples)."""
        require(math.isfinite(self.warmup_fraction) and 0.0 <= self.warmup_fraction <= 1.0, "train.warmup_fraction",
               "in [0, 1]", self.warmup_fraction)
        hs = self.heated_softmax
        if not hs.alphas:
            raise ZskError("train.heated_softmax.alphas is empty: give one alpha per phase, e.g. [4, 1, 0.5]")
        for i, a in enumerate(hs.alphas):
            require(math.isfinite(a) and a > 0, f"train.heated_softmax.alphas[{i}]", "> 0", a)
        if len(hs.milestones) != len(hs.alphas) - 1:
            raise ZskError(f"train.heated_softmax.milestones: {len(hs.alphas)} alphas need {len(hs.alphas) - 1} "
                           f"milestones (epochs where alpha changes), got {list(hs.milestones)}")
        if any(m < 1 for m in hs.milestones) or list(hs.milestones) != sorted(set(hs.milestones)):
            raise ZskError(f"train.heated_softmax.milestones must be increasing epochs >= 1, got {list(hs.milestones)}")
        require(math.isfinite(self.fgm.epsilon) and self.fgm.epsilon > 0, "train.fgm.epsilon", "> 0", self.fgm.epsilon)
        he = self.hard_examples
        _at_least("train.hard_examples.max_edits", he.max_edits, 1)
        _at_least("train.hard_examples.max_pool", he.max_pool, 0)
        if he.synonyms is not None and not he.synonyms.strip():
            raise ZskError("train.hard_examples.synonyms is empty; give a synonym-groups file or null")


@dataclass
class EvalConfig:
    split: Literal["train", "val", "test"] = "test"
    batch_size: int = 128  # spec: Training (eval batch 128)

    def __post_init__(self) -> None:
        _at_least("eval.batch_size", self.batch_size, 1)


@dataclass
class Config:
    data: DataConfig = field(default_factory=DataConfig)
    model: ModelConfig = field(default_factory=ModelConfig)
    train: TrainConfig = field(default_factory=TrainConfig)
    eval: EvalConfig = field(default_factory=EvalConfig)
    runtime: RuntimeConfig = field(default_factory=RuntimeConfig)
