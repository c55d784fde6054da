"""Recipe schema of the retrieve task (LSEH on VSE++, VSE infinity, VSRN, SGR and SAF)."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Literal

from zsk.core.errors import ZskError
from zsk.core.recipe import RuntimeConfig
from zsk.core.trainer import TrainConfig as CoreTrainConfig
from zsk.tasks.retrieve.losses import LossConfig, LsehConfig

__all__ = ["BASES", "PAIRWISE_BASES", "Config", "DataConfig", "EvalConfig", "LossConfig", "LsehConfig", "ModelConfig", "TrainConfig"]


def at_least(key: str, value: float, low: float, hint: str = "") -> None:
    """``ZskError`` naming the recipe key when ``value < low`` (range checks of the config dataclasses)."""
    if value < low:
        raise ZskError(f"{key} must be >= {low}, got {value}{'; ' + hint if hint else ''}")


def in_range(key: str, value: float, low: float, high: float, high_open: bool = False) -> None:
    """``ZskError`` naming the recipe key when ``value`` is outside ``[low, high]`` (or ``[low, high)``)."""
    if not (low <= value < high if high_open else low <= value <= high):
        raise ZskError(f"{key} must be in [{low}, {high}{')' if high_open else ']'}, got {value}")


@dataclass
class DataConfig:
    """Where the captions and images come from.

    ``format``: ``precomp`` ({split}_caps.txt + {split}_ims.npy), ``karpathy`` (split JSON + image
    folder, raw-image training) or ``iapr`` (IAPR TC-12 annotations + split lists, raw images).
    """

    root: str = "data/f30k_precomp"
    name: str = ""  # f30k | coco | iapr: also finds root/{name}_precomp and root/{name}/precomp
    format: Literal["precomp", "karpathy", "iapr"] = "precomp"
    captions_per_image: int = 5  # 5 for Flickr30K / COCO, 1 for IAPR TC-12
    train_split: str = "train"
    val_split: str = "dev"
    test_split: str = "test"
    karpathy_json: str = ""  # format karpathy: dataset_{coco,flickr30k}.json
    image_root: str = ""  # format karpathy: folder the JSON's filepath/filename are relative to
    use_restval: bool = False  # format karpathy: add COCO restval images to train (VSE++ --use_restval)
    split_files: dict[str, str] = field(default_factory=dict)  # format iapr: split name -> list of image ids
    vocab_threshold: int = 4  # words seen fewer times in the counted captions map to <unk> (VSE++ vocab.py)
    # splits whose captions build the word vocabulary: training only by default; the LSEH paper recipes
    # count [train, dev] as the official vocab.py does for *_precomp (the original VSE++ also counted test, vsepp #29)
    vocab_splits: list[str] = field(default_factory=lambda: ["train"])
    vocab_file: str | None = None  # an official vocabulary (VSE++ {name}_vocab.pkl or a word2idx/idx2word JSON)
    tokenizer: Literal["nltk", "regex"] = "nltk"  # word tokenizer of the GRU encoders: NLTK word_tokenize (official)
    lsa_file: str | None = None  # a train_svd.txt to use instead of computing the LSA (LSEH step 1, the official code's train_svd.txt)
    lsa_rank: int = 400  # LSEH step 1: SVD rank 400 (official code)
    lsa_iter: int = 100
    lsa_seed: int = 122
    region_drop: float = 0.0  # VSE infinity: drop each region with this probability in training (0.2)
    token_aug: float = 0.0  # VSE infinity: mask/replace/delete each word with this probability (0.2)
    max_words: int = 0  # truncate captions to this many tokens (0 = no limit)

    def __post_init__(self) -> None:
        at_least("data.captions_per_image", self.captions_per_image, 1, "5 for Flickr30K / COCO, 1 for IAPR TC-12")
        for key in ("train_split", "val_split", "test_split"):
            if not str(getattr(self, key)).strip():
                raise ZskError(f"data.{key} is empty; name a split (e.g. train, dev, test)")
        if not self.vocab_splits:
            raise ZskError("data.vocab_splits is empty; list at least the training split (e.g. [train])")
        at_least("data.vocab_threshold", self.vocab_threshold, 0)
        at_least("data.lsa_rank", self.lsa_rank, 1, "LSEH uses 400")
        at_least("data.lsa_iter", self.lsa_iter, 0)
        in_range("data.region_drop", self.region_drop, 0.0, 1.0, high_open=True)
        in_range("data.token_aug", self.token_aug, 0.0, 1.0)
        if self.max_words != 0 and self.max_words < 3:
            raise ZskError(f"data.max_words must be 0 (no limit) or >= 3 (start, one word, end), got {self.max_words}")


BASES = ("vsepp", "vseinf", "vsrn", "sgr", "saf")
PAIRWISE_BASES = ("sgr", "saf")  # scored by a similarity network, not by the cosine of two embeddings


@dataclass
class ModelConfig:
    """The base network. ``base``: ``vsepp`` (linear image encoder + GRU), ``vseinf`` (GPO + BiGRU/BERT),
    ``vsrn`` (region GCN + GRU reasoning, caption generation in training), ``sgr`` / ``saf`` (SGRAF's
    similarity graph reasoning / attention filtration networks, pairwise scores)."""

    base: Literal["vsepp", "vseinf", "vsrn", "sgr", "saf"] = "vsepp"
    image_encoder: Literal["precomp", "cnn"] = "precomp"  # cnn = raw-image training with a CNN backbone
    image_pool: Literal["flatten", "mean", "gpo"] | None = None  # None: vsepp flatten, vseinf gpo
    text_encoder: Literal["gru", "bigru", "bert"] | None = None  # None: vsepp gru, vseinf bigru
    img_dim: int = 2048  # precomputed feature width (BUTD 2048)
    num_regions: int = 36  # regions per image (BUTD 36)
    embed_size: int = 1024  # joint space
    word_dim: int = 300
    text_layers: int = 1
    gpo_dim: int = 32  # GPO positional code and GRU width
    bert: str = "bert-base-uncased"  # Hugging Face id or local directory (text_encoder bert)
    bert_lr_mult: float = 0.1  # VSE infinity trains BERT at lr x 0.1
    backbone: str = "resnet152"  # image_encoder cnn: torchvision model name, or timm:NAME for a timm model
    pretrained: str | None = "imagenet"  # image_encoder cnn: imagenet (local torchvision cache), a file, or null
    finetune: bool = False  # image_encoder cnn: train the backbone too
    image_size: int = 224  # image_encoder cnn: crop size
    # VSRN (official VSRN_LSEH/model.py, train.py defaults)
    gcn_steps: int = 4  # region relationship reasoning: four Rs_GCN layers
    vsrn_bn: bool = True  # BatchNorm on the GSR state, no norm after fc (official branch for f30k_precomp); false: COCO/IAPR branch
    caption_hidden: int = 512  # captioner GRU width (--dim_hidden)
    caption_word_dim: int = 300  # captioner word embedding (--dim_word)
    caption_max_len: int = 60  # caption labels incl. <start>/<end> (--max_len 60 in the LSEH README commands)
    caption_dropout: float = 0.2  # captioner input dropout (--input_dropout_p)
    caption_weight: float = 1.0  # training loss = ranking loss + caption_weight x caption loss (official: 1)
    # SGRAF (official SGRAF_LSEH/opts.py defaults)
    sim_dim: int = 256  # similarity representation width (--sim_dim)
    sgr_steps: int = 3  # graph reasoning steps of SGR (--sgr_step)
    text_dropout: float = 0.4  # dropout on the word embeddings (EncoderText)
    attn_dropout: float = 0.4  # dropout in the global self-attention (VisualSA / TextSA)
    attn_smooth: float = 9.0  # SCAN text-to-region attention temperature (smooth=9.0)

    def __post_init__(self) -> None:
        if self.base not in BASES:
            raise ZskError(f"model.base must be one of {', '.join(BASES)}, got {self.base!r}")
        for key in ("img_dim", "num_regions", "embed_size", "word_dim", "text_layers", "gpo_dim", "gcn_steps",
                    "caption_hidden", "caption_word_dim", "sim_dim", "sgr_steps"):
            at_least(f"model.{key}", getattr(self, key), 1)
        at_least("model.bert_lr_mult", self.bert_lr_mult, 0.0)
        at_least("model.image_size", self.image_size, 32, "the CNN backbone downsamples 32 times")
        at_least("model.caption_max_len", self.caption_max_len, 3, "<start>, one word, <end>")
        at_least("model.caption_weight", self.caption_weight, 0.0)
        at_least("model.attn_smooth", self.attn_smooth, 0.0)
        for key in ("caption_dropout", "text_dropout", "attn_dropout"):
            in_range(f"model.{key}", getattr(self, key), 0.0, 1.0, high_open=True)
        self.resolved()  # base / image_pool / text_encoder combinations, for every verb

    @property
    def pairwise(self) -> bool:
        """True for the networks that score pairs (SGR, SAF): no joint embedding space."""
        return self.base in PAIRWISE_BASES

    def resolved(self) -> tuple[str, str]:
        """(image_pool, text_encoder) after base defaults; bad combinations are a ZskError."""
        fixed = {"vsrn": ("gcn", "gru"), "sgr": ("local", "bigru"), "saf": ("local", "bigru")}
        if self.base in fixed:
            pool, text = fixed[self.base]
            if self.image_pool not in (None, pool):
                raise ZskError(f"model.image_pool: {self.image_pool!r} with base {self.base}; leave it unset "
                               f"({self.base} uses {pool})")
            if self.text_encoder not in (None, text):
                raise ZskError(f"model.text_encoder: {self.text_encoder!r} with base {self.base}; leave it unset "
                               f"({self.base} uses {text})")
            if self.image_encoder != "precomp":
                raise ZskError(f"model.image_encoder: {self.image_encoder} with base {self.base}; {self.base} reads "
                               "precomputed region features (model.image_encoder=precomp)")
            return pool, text
        pool = self.image_pool or ("flatten" if self.base == "vsepp" else "gpo")
        text = self.text_encoder or ("gru" if self.base == "vsepp" else "bigru")
        if self.base == "vsepp":
            if pool not in ("flatten", "mean"):
                raise ZskError(f"model.image_pool: {pool!r} with base vsepp; choose flatten or mean (gpo is vseinf's)")
            if text != "gru":
                raise ZskError(f"model.text_encoder: {text!r} with base vsepp; VSE++ uses gru (bigru/bert are vseinf's)")
        else:
            if pool != "gpo":
                raise ZskError(f"model.image_pool: {pool!r} with base vseinf; VSE infinity pools with gpo")
            if text not in ("bigru", "bert"):
                raise ZskError(f"model.text_encoder: {text!r} with base vseinf; choose bigru or bert")
            if self.image_encoder == "cnn":
                raise ZskError("model.image_encoder: cnn is the VSE++ raw-image encoder; use base vsepp with it")
        return pool, text


@dataclass
class TrainConfig(CoreTrainConfig):
    """Optimisation (core keys) plus the ranking loss and the VSE step decay."""

    loss: LossConfig = field(default_factory=LossConfig)
    lr_update: int = 0  # epochs: multiply lr by train.gamma every lr_update epochs (VSE++ --lr_update); 0 = off
    best_metric: str | None = "rsum"
    eval_epoch_end: bool = True  # with train.eval_every: also at epoch ends (VSE++ val_step and per epoch)
    # VSRN: how often the optimizer's parameter list holds the caption generator. once (the fix); twice: the
    # official VSRN_LSEH model.py lists decoder, encoder and caption_model (which holds both), so Adam steps the
    # captioner twice per iteration and clip_grad_norm_ counts (and scales) its gradients twice
    captioner_params: Literal["once", "twice"] = "once"

    def __post_init__(self) -> None:
        super().__post_init__()
        at_least("train.lr_update", self.lr_update, 0, "epochs between lr decays; 0 = off")


@dataclass
class EvalConfig:
    """Evaluation: batch size, chunk of the similarity matrix, validation subset, COCO protocol."""

    batch_size: int = 128
    chunk: int = 1024  # rows of the similarity matrix computed at once (bounded memory)
    split: str = ""  # split of `zsk retrieve eval` (default data.test_split)
    protocol: Literal["standard", "coco1k", "coco5k"] = "standard"
    val_max_images: int = 0  # >0: validate on the first N images only (official loaders: dev cut to 5,000 captions = 1,000 images)
    folds: int = 5  # COCO 1K: number of folds
    shard: int = 100  # SGR/SAF: images and captions per block of pair scores (official shard_attn_scores: 100)
    # exact: every rank by the one-pass scan (the papers' protocol); faiss: nearest-neighbour search of the top
    # faiss_depth per query, for galleries too large to scan (R@K and medr only; meanr needs every rank)
    search: Literal["exact", "faiss"] = "exact"
    faiss_depth: int = 100
    faiss_nlist: int = 0  # 0: flat index (the exact top faiss_depth); > 0: IVF lists (approximate)
    faiss_nprobe: int = 16  # IVF lists visited per query

    def __post_init__(self) -> None:
        if self.search not in ("exact", "faiss"):
            raise ZskError(f"eval.search={self.search!r}: choose exact or faiss")
        at_least("eval.faiss_depth", self.faiss_depth, 10, "R@10 needs the top 10")
        at_least("eval.faiss_nlist", self.faiss_nlist, 0, "0 = a flat (exact) index")
        at_least("eval.faiss_nprobe", self.faiss_nprobe, 1)
        at_least("eval.batch_size", self.batch_size, 1)
        at_least("eval.chunk", self.chunk, 1)
        at_least("eval.shard", self.shard, 1)
        at_least("eval.val_max_images", self.val_max_images, 0, "0 = the whole validation split")
        at_least("eval.folds", self.folds, 1)


@dataclass
class Config:
    data: DataConfig = field(default_factory=DataConfig)
    model: ModelConfig = field(default_factory=ModelConfig)
    train: TrainConfig = field(default_factory=TrainConfig)
    eval: EvalConfig = field(default_factory=EvalConfig)
    runtime: RuntimeConfig = field(default_factory=RuntimeConfig)

    def __post_init__(self) -> None:
        if self.train.captioner_params != "once" and self.model.base != "vsrn":
            raise ZskError(f"train.captioner_params={self.train.captioner_params} applies to VSRN's caption generator, "
                           f"but model.base is {self.model.base}; remove it or set model.base=vsrn")
