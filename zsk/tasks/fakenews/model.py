"""Ro-CT-BERT: fine-tuned transformer branches and their fusion (spec: Fusion: Ro-CT-BERT).

`TransformerBranch` is one fine-tuned encoder (RoBERTa or CT-BERT in the paper) with a linear
classifier on its [CLS] vector. `FakeNewsClassifier` holds one or more branches; with several it
concatenates their [CLS] features (or, with `fusion: scores`, their logits) into `FusionHead`, the
MLP classifier of Figure 1 (2048 -> 512, ReLU, dropout -> classes for two 1024-d encoders).
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass
from typing import Any

import torch
from torch import Tensor, nn

from zsk.core.errors import ZskError
from zsk.tasks.fakenews.config import BranchConfig, EncoderConfig
from zsk.tasks.fakenews.losses import cosine_logits

HEADS = ("normalized", "linear")

# Architectures of the paper's two pretrained encoders (from their published config.json files), so
# that `zsk bench` / `info` can build a random-init model of the right size without the weights.
KNOWN_ARCHITECTURES: dict[str, dict] = {
    "roberta-large": dict(model_type="roberta", vocab_size=50265, hidden_size=1024, num_hidden_layers=24,
                          num_attention_heads=16, intermediate_size=4096, max_position_embeddings=514,
                          type_vocab_size=1, pad_token_id=1, bos_token_id=0, eos_token_id=2, layer_norm_eps=1e-5),
    "FacebookAI/roberta-large": dict(model_type="roberta", vocab_size=50265, hidden_size=1024, num_hidden_layers=24,
                                     num_attention_heads=16, intermediate_size=4096, max_position_embeddings=514,
                                     type_vocab_size=1, pad_token_id=1, bos_token_id=0, eos_token_id=2,
                                     layer_norm_eps=1e-5),
    "digitalepidemiologylab/covid-twitter-bert-v2": dict(model_type="bert", vocab_size=30522, hidden_size=1024,
                                                         num_hidden_layers=24, num_attention_heads=16,
                                                         intermediate_size=4096, max_position_embeddings=512,
                                                         type_vocab_size=2, pad_token_id=0),
}


def _settings_quiet_transformers() -> None:
    """Keep transformers' own progress bars and notices off stdout/stderr unless debugging (every
    fakenews command that builds or loads a model calls this first)."""
    from zsk.core.progress import settings

    if not settings.debug:
        from transformers.utils import logging as hf_logging

        hf_logging.set_verbosity_error()
        hf_logging.disable_progress_bar()


def random_encoder_config(enc: EncoderConfig, vocab_size: int, pad_token_id: int):
    """A transformers config for a randomly initialised BERT / RoBERTa encoder."""
    from transformers import BertConfig, RobertaConfig

    common = dict(vocab_size=vocab_size, hidden_size=enc.hidden_size, num_hidden_layers=enc.num_layers,
                  num_attention_heads=enc.num_heads, intermediate_size=enc.intermediate_size,
                  max_position_embeddings=enc.max_position_embeddings, hidden_dropout_prob=enc.dropout,
                  attention_probs_dropout_prob=enc.dropout, pad_token_id=pad_token_id)
    if enc.hidden_size % enc.num_heads:
        raise ZskError(f"model encoder: hidden_size {enc.hidden_size} is not divisible by num_heads {enc.num_heads}")
    if enc.arch == "roberta":
        return RobertaConfig(type_vocab_size=1, **common)
    return BertConfig(**common)


def encoder_from_config(config) -> nn.Module:
    """A randomly initialised encoder of the architecture `config` describes."""
    from transformers import AutoModel

    return AutoModel.from_config(config)


def config_from_dict(d: dict):
    """A transformers config from `config.to_dict()` output (as stored in checkpoints)."""
    from transformers import AutoConfig

    d = dict(d)
    model_type = d.pop("model_type", None)
    if model_type is None:
        raise ZskError("stored encoder config has no model_type")
    for k in ("transformers_version", "architectures", "_name_or_path"):
        d.pop(k, None)
    return AutoConfig.for_model(model_type, **d)


def check_positions(name: str, encoder: nn.Module, max_length: int) -> None:
    """``data.max_length`` must fit the branch's position embeddings (RoBERTa reserves two)."""
    config = encoder.config
    limit = int(config.max_position_embeddings) - (2 if config.model_type in ("roberta", "xlm-roberta") else 0)
    if max_length > limit:
        raise ZskError(f"data.max_length={max_length} exceeds what branch {name!r} can encode ({limit} positions); "
                       f"lower data.max_length or raise model.branches.{name}.encoder.max_position_embeddings")


def config_to_json(config) -> str:
    """An encoder config as a JSON string (checkpoint-safe)."""
    return json.dumps(config.to_dict(), default=str)


def load_pretrained_encoder(source: str, option: str) -> nn.Module:
    """A pretrained HF encoder from a hub id (local cache) or a local directory."""
    from zsk.models.hf import load_hf_model

    return load_hf_model(source, option=option)


def architecture_config(branch: BranchConfig, name: str):
    """The encoder config of a branch without loading weights: a local directory or cached config,
    else the known architecture of a paper model (no network wait), else the hub."""
    from pathlib import Path

    from transformers import AutoConfig

    from zsk.models.hf import load_hf_model

    src = branch.pretrained
    if src is None:
        raise ValueError("architecture_config needs a pretrained source")
    if not Path(src).expanduser().exists():
        try:
            return AutoConfig.from_pretrained(src, local_files_only=True)
        except (OSError, ValueError):
            if src in KNOWN_ARCHITECTURES:
                return config_from_dict(KNOWN_ARCHITECTURES[src])
    return load_hf_model(src, option=f"model.branches.{name}.pretrained", loader=AutoConfig)


@dataclass
class Branch:
    """A built branch: its module, its tokenizer, the tokens added to its vocabulary and where its
    weights came from (a hub id or directory, or "random-init")."""

    name: str
    module: TransformerBranch
    tokenizer: Any
    added_tokens: list[str]
    source: str


class CosineClassifier(nn.Module):
    """The heated-up softmax classifier of Zhang et al. 2018: z_m = alpha cos(f, w_m) + b_m.

    alpha is a buffer (saved with the weights) that the training step sets to the schedule's value
    (`set_alpha`); evaluation and prediction use the value the weights were last trained with. The
    weight is initialised as `nn.Linear`'s (Kaiming uniform; only its direction matters), the bias at
    zero as in Zhang et al.'s code.
    """

    def __init__(self, in_features: int, num_classes: int, alpha: float = 1.0) -> None:
        super().__init__()
        self.in_features, self.out_features = in_features, num_classes
        self.weight = nn.Parameter(torch.empty(num_classes, in_features))
        self.bias = nn.Parameter(torch.zeros(num_classes))
        nn.init.kaiming_uniform_(self.weight, a=math.sqrt(5))
        self.register_buffer("alpha", torch.tensor(float(alpha)))

    @torch.no_grad()
    def set_alpha(self, alpha: float) -> None:
        """Set the inverse temperature alpha of the heated-up softmax."""
        self.alpha.fill_(float(alpha))

    def forward(self, x: Tensor) -> Tensor:
        """Logits alpha cos(f, w_m) + b_m (B, C)."""
        return cosine_logits(x, self.weight, self.bias, self.alpha)


def set_heated_alpha(module: nn.Module, alpha: float) -> bool:
    """Set alpha on every `CosineClassifier` inside `module`; True if there was one (normalised form)."""
    found = False
    for m in module.modules():
        if isinstance(m, CosineClassifier):
            m.set_alpha(alpha)
            found = True
    return found


class TransformerBranch(nn.Module):
    """A fine-tuned encoder with a classifier on its [CLS] (or pooler) vector: the heated-up softmax's
    normalised `CosineClassifier` (``head="normalized"``) or a linear layer (``head="linear"``)."""

    def __init__(self, encoder: nn.Module, num_classes: int, dropout: float = 0.1, pooling: str = "cls",
                 head: str = "linear") -> None:
        super().__init__()
        self.encoder = encoder
        self.pooling = pooling
        if pooling == "cls" and getattr(encoder, "pooler", None) is not None:
            encoder.pooler = None  # unused: keeps every parameter in the graph (DDP) and checkpoints small
        if pooling == "pooler" and getattr(encoder, "pooler", None) is None:
            raise ZskError("pooling 'pooler' needs an encoder with a pooler layer; use pooling: cls")
        self.feature_dim = int(encoder.config.hidden_size)
        self.dropout = nn.Dropout(dropout)
        if head not in HEADS:
            raise ZskError(f"classifier head {head!r}: choose one of {', '.join(HEADS)} (model.heated_softmax)")
        self.head = head
        self.classifier: nn.Module = (CosineClassifier(self.feature_dim, num_classes) if head == "normalized"
                                      else nn.Linear(self.feature_dim, num_classes))

    @property
    def word_embeddings(self) -> nn.Embedding:
        """The word-embedding matrix E that FGM perturbs."""
        return self.encoder.get_input_embeddings()

    def features(self, input_ids: Tensor, attention_mask: Tensor) -> Tensor:
        """The [CLS] (first-token) hidden state, or the pooler output."""
        out = self.encoder(input_ids=input_ids, attention_mask=attention_mask)
        if self.pooling == "pooler":
            return out.pooler_output
        return out.last_hidden_state[:, 0]

    def forward(self, input_ids: Tensor, attention_mask: Tensor) -> Tensor:
        """Class logits z (B, C)."""
        return self.classifier(self.dropout(self.features(input_ids, attention_mask)))


class FusionHead(nn.Module):
    """MLP classifier over the concatenated branch outputs: in -> hidden, ReLU, dropout -> classes.

    With `standardize`, inputs are first shifted and scaled per dimension by statistics of the
    training features (buffers set once by `set_input_stats`, saved with the weights). This is an
    affine re-parametrisation of the first layer that only conditions the optimisation: [CLS]
    vectors of different encoders differ widely in scale ([reconstruction], option
    `model.fusion_standardize`).
    """

    def __init__(self, in_features: int, num_classes: int, hidden: int = 512, dropout: float = 0.1,
                 standardize: bool = True) -> None:
        super().__init__()
        self.mlp = nn.Sequential(nn.Linear(in_features, hidden), nn.ReLU(), nn.Dropout(dropout),
                                 nn.Linear(hidden, num_classes))
        self.in_features = in_features
        self.standardize = standardize
        self.register_buffer("input_mean", torch.zeros(in_features))
        self.register_buffer("input_std", torch.ones(in_features))

    @torch.no_grad()
    def set_input_stats(self, features: Tensor, eps: float = 1e-6) -> None:
        """Per-dimension mean and standard deviation of the training features (N, in_features)."""
        self.input_mean.copy_(features.float().mean(0))
        self.input_std.copy_(features.float().std(0, unbiased=False).clamp_min(eps))

    def forward(self, x: Tensor) -> Tensor:
        if self.standardize:
            x = (x - self.input_mean) / self.input_std
        return self.mlp(x)


class FakeNewsClassifier(nn.Module):
    """One branch (a fine-tuned model) or several fused by `FusionHead` (Ro-CT-BERT)."""

    def __init__(self, branches: dict[str, TransformerBranch], num_classes: int, fusion: str = "features",
                 fusion_hidden: int = 512, fusion_dropout: float = 0.1, fusion_standardize: bool = True) -> None:
        super().__init__()
        if not branches:
            raise ZskError("model.branches is empty: give at least one branch")
        self.branches = nn.ModuleDict(branches)
        self.fusion = fusion
        self.num_classes = num_classes
        self.fusion_head: FusionHead | None = None
        if len(branches) > 1:
            self.fusion_head = FusionHead(self.fusion_dim(), num_classes, fusion_hidden, fusion_dropout,
                                          fusion_standardize)

    def fusion_dim(self) -> int:
        """Input size of the fusion MLP: sum of feature sizes, or classes x branches for scores."""
        if self.fusion == "scores":
            return self.num_classes * len(self.branches)
        return sum(b.feature_dim for b in self.branches.values())

    def branch_outputs(self, name: str, input_ids: Tensor, attention_mask: Tensor) -> Tensor:
        """What branch `name` contributes to the fusion: its [CLS] features or its logits."""
        branch = self.branches[name]
        if self.fusion == "scores":
            return branch(input_ids, attention_mask)
        return branch.features(input_ids, attention_mask)

    def fusion_inputs(self, inputs: dict[str, dict[str, Tensor]]) -> Tensor:
        """Concatenate every branch's output in branch order."""
        return torch.cat([self.branch_outputs(n, **inputs[n]) for n in self.branches], dim=-1)

    def forward(self, inputs: dict[str, dict[str, Tensor]] | None = None, fused: Tensor | None = None) -> Tensor:
        """Logits from tokenised inputs {branch: {input_ids, attention_mask}}, or from precomputed
        fusion inputs `fused` (the fusion stage trains the MLP on cached features)."""
        if self.fusion_head is None:
            (name,) = self.branches
            if inputs is None:
                raise ValueError("a single-branch model needs tokenised inputs")
            return self.branches[name](**inputs[name])
        if fused is None:
            if inputs is None:
                raise ValueError("pass inputs or fused")
            fused = self.fusion_inputs(inputs)
        return self.fusion_head(fused)
