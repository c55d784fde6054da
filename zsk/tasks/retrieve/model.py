"""Visual-semantic embedding networks that LSEH plugs into: VSE++ and VSE infinity.

- **VSE++** (Faghri et al.): precomputed region features flattened (LSEH's setting, 36 x 2048 -> 1024)
  or mean-pooled into one linear layer; GRU text encoder over a word vocabulary; both L2-normalised.
  A raw-image variant replaces the precomputed features with a CNN backbone over pixels.
- **VSE infinity** (Chen et al.): region features through a linear layer plus a 2-layer MLP residual,
  pooled by the Generalized Pooling Operator (GPO); text through a BiGRU or BERT, pooled by GPO.

Similarity is the dot product of the L2-normalised embeddings (cosine). :class:`RankingLoss` wraps the
losses of ``losses.py`` (L_MH, L_SH, L_LSEH) as the module the training step calls.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torch.nn.utils.rnn import pack_padded_sequence, pad_packed_sequence

from zsk.tasks.retrieve.losses import (
    LossConfig,
    caption_div5_mask,
    hinge_costs,
    lseh_loss,
    lsh_loss,
    reduce_costs,
)


def l2norm(x: Tensor, dim: int = -1, eps: float = 1e-8) -> Tensor:
    """Scale to unit L2 norm (embeddings live on the unit sphere, so s = cosine)."""
    return x / (x.pow(2).sum(dim=dim, keepdim=True).sqrt() + eps)


def length_mask(lengths: Tensor, max_len: int) -> Tensor:
    """``(B, max_len)`` boolean mask, true at valid positions."""
    return torch.arange(max_len, device=lengths.device)[None, :] < lengths[:, None]


def xavier_linear(layer: nn.Linear) -> None:
    """VSE++ initialisation: uniform(-r, r), r = sqrt(6 / (in + out)); zero bias."""
    r = math.sqrt(6.0) / math.sqrt(layer.in_features + layer.out_features)
    nn.init.uniform_(layer.weight, -r, r)
    if layer.bias is not None:
        nn.init.zeros_(layer.bias)


def positional_encoding_1d(d_model: int, length: int, device: torch.device | None = None) -> Tensor:
    """Sinusoidal position codes ``(length, d_model)``: sin on even, cos on odd channels."""
    pos = torch.arange(length, dtype=torch.float32, device=device)[:, None]
    div = torch.exp(torch.arange(0, d_model, 2, dtype=torch.float32, device=device) * (-math.log(10000.0) / d_model))
    pe = torch.zeros(length, d_model, device=device)
    pe[:, 0::2] = torch.sin(pos * div)
    pe[:, 1::2] = torch.cos(pos * div)[:, : d_model // 2]
    return pe


class GPO(nn.Module):
    """Generalized Pooling Operator (VSE infinity): a weighted sum of the k-th largest values.

    For each feature dimension the set elements are sorted in descending order; a small BiGRU over
    sinusoidal codes of the positions 0..n-1 produces one weight per rank k (softmax with temperature
    0.1 over the valid ranks), so the pooling adapts between max-, mean- and top-k pooling and to the
    set size n.
    """

    def __init__(self, d_pe: int = 32, d_hidden: int = 32, temperature: float = 0.1) -> None:
        super().__init__()
        self.d_pe = d_pe
        self.temperature = temperature
        self.gru = nn.GRU(d_pe, d_hidden, num_layers=1, batch_first=True, bidirectional=True)
        self.score = nn.Linear(d_hidden, 1, bias=False)

    def pool_weights(self, lengths: Tensor, max_len: int) -> Tensor:
        """``(B, max_len, 1)`` weights of the ranks, zero beyond each set's size."""
        b = lengths.shape[0]
        pe = positional_encoding_1d(self.d_pe, max_len, lengths.device).unsqueeze(0).expand(b, -1, -1)
        packed = pack_padded_sequence(pe, lengths.clamp(min=1).cpu(), batch_first=True, enforce_sorted=False)
        out, _ = self.gru(packed)
        out, _ = pad_packed_sequence(out, batch_first=True, total_length=max_len)
        half = out.shape[-1] // 2
        out = (out[..., :half] + out[..., half:]) / 2  # forward and backward states averaged
        scores = self.score(out)
        valid = length_mask(lengths, max_len).unsqueeze(-1)
        scores = scores.masked_fill(~valid, -10000.0)
        return torch.softmax(scores / self.temperature, dim=1)

    def forward(self, features: Tensor, lengths: Tensor) -> Tensor:
        """Pool ``(B, n, D)`` features of sets with ``lengths`` valid elements into ``(B, D)``."""
        max_len = int(lengths.max().item())
        features = features[:, :max_len]
        valid = length_mask(lengths, max_len).unsqueeze(-1)
        sorted_feats = features.masked_fill(~valid, -10000.0).sort(dim=1, descending=True).values
        sorted_feats = sorted_feats.masked_fill(~valid, 0.0)
        weights = self.pool_weights(lengths, max_len).to(sorted_feats.dtype)
        return (sorted_feats * weights).sum(dim=1)


class MLP(nn.Module):
    """Linear layers with BatchNorm and ReLU between them (VSE infinity's residual MLP)."""

    def __init__(self, in_dim: int, hidden: int, out_dim: int, num_layers: int = 2) -> None:
        super().__init__()
        dims = [in_dim] + [hidden] * (num_layers - 1) + [out_dim]
        self.layers = nn.ModuleList(nn.Linear(a, b) for a, b in zip(dims[:-1], dims[1:], strict=True))
        self.norms = nn.ModuleList(nn.BatchNorm1d(d) for d in dims[1:-1])

    def forward(self, x: Tensor) -> Tensor:
        shape = x.shape
        x = x.reshape(-1, shape[-1])
        for i, layer in enumerate(self.layers):
            x = layer(x)
            if i < len(self.norms):
                x = F.relu(self.norms[i](x))
        return x.reshape(*shape[:-1], x.shape[-1])


# ----------------------------------------------------------------------------- image encoders


class PrecompLinearImageEncoder(nn.Module):
    """VSE++ image encoder on precomputed features: ``flatten`` (LSEH: all regions concatenated,
    36 x 2048 = 73,728 inputs) or ``mean`` (regions averaged) then one linear layer, L2-normalised."""

    def __init__(self, img_dim: int, num_regions: int, embed_size: int, pool: str = "flatten") -> None:
        super().__init__()
        if pool not in ("flatten", "mean"):
            raise ValueError(f"pool must be flatten or mean, got {pool!r}")
        self.pool, self.num_regions, self.img_dim = pool, num_regions, img_dim
        in_dim = img_dim * num_regions if pool == "flatten" else img_dim
        self.fc = nn.Linear(in_dim, embed_size)
        xavier_linear(self.fc)

    def forward(self, images: Tensor, lengths: Tensor | None = None) -> Tensor:
        if images.dim() == 2:  # one global vector per image
            x = images
        elif self.pool == "flatten":
            x = images.flatten(1)
        elif lengths is None:
            x = images.mean(dim=1)
        else:
            valid = length_mask(lengths, images.shape[1]).unsqueeze(-1).to(images.dtype)
            x = (images * valid).sum(1) / lengths.clamp(min=1)[:, None].to(images.dtype)
        return l2norm(self.fc(x))


class AggrGPOImageEncoder(nn.Module):
    """VSE infinity image encoder: ``fc(x) + MLP(x)`` per region, then GPO over the regions."""

    def __init__(self, img_dim: int, embed_size: int, gpo_dim: int = 32) -> None:
        super().__init__()
        self.fc = nn.Linear(img_dim, embed_size)
        xavier_linear(self.fc)
        self.mlp = MLP(img_dim, embed_size // 2, embed_size, 2)
        self.gpo = GPO(gpo_dim, gpo_dim)

    def forward(self, images: Tensor, lengths: Tensor | None = None) -> Tensor:
        if images.dim() == 2:
            images = images.unsqueeze(1)
        if lengths is None:
            lengths = torch.full((images.shape[0],), images.shape[1], dtype=torch.long, device=images.device)
        feats = self.fc(images) + self.mlp(images)
        return l2norm(self.gpo(feats, lengths))


class CNNImageEncoder(nn.Module):
    """Raw-image VSE++ encoder: a CNN backbone's pooled features -> linear -> L2 norm.

    With ``finetune`` off the backbone is frozen and kept in eval mode (its BatchNorm statistics are
    not updated; vsepp issues #4/#30)."""

    def __init__(self, backbone: nn.Module, feat_dim: int, embed_size: int, finetune: bool = False) -> None:
        super().__init__()
        self.backbone = backbone
        self.finetune = finetune
        self.fc = nn.Linear(feat_dim, embed_size)
        xavier_linear(self.fc)
        if not finetune:
            for p in self.backbone.parameters():
                p.requires_grad_(False)

    def train(self, mode: bool = True) -> CNNImageEncoder:
        super().train(mode)
        if not self.finetune:
            self.backbone.eval()
        return self

    def forward(self, images: Tensor, lengths: Tensor | None = None) -> Tensor:
        with torch.set_grad_enabled(self.finetune and torch.is_grad_enabled()):
            feats = self.backbone(images)
        return l2norm(self.fc(feats.flatten(1)))


def torchvision_trunk(name: str, weights: str | None) -> tuple[nn.Module, int]:
    """A torchvision classifier with its last classification layer removed, and its feature width."""
    from zsk.models.backbones import build_torchvision_backbone, split_classifier

    net, last = split_classifier(build_torchvision_backbone(name, weights))
    return net, last.in_features


def timm_trunk(name: str, weights: str | None) -> tuple[nn.Module, int]:
    """A timm model without its classifier (pooled features) and its feature width.

    ``weights``: None (random init), ``imagenet`` (timm's default pretrained tag from the local Hugging
    Face cache, no download) or a path to a state-dict file.
    """
    import timm

    from zsk.core.errors import ZskError
    from zsk.models.backbones import load_weights_file

    try:
        net = timm.create_model(name, pretrained=False, num_classes=0)
    except RuntimeError:
        raise ZskError(f"unknown timm model {name!r} (model.backbone=timm:NAME, e.g. timm:resnet50)") from None
    if weights is None:
        return net, int(net.num_features)
    if weights == "imagenet":
        try:
            net = timm.create_model(name, pretrained=True, num_classes=0)
        except Exception as e:  # noqa: BLE001 - offline hub errors vary by version
            raise ZskError(f"timm weights for {name} are not in the local Hugging Face cache "
                           f"({str(e).splitlines()[0][:120]}); pass a local file with "
                           f"--set model.pretrained=/path/to/{name}.pth") from None
        return net, int(net.num_features)
    load_weights_file(net, weights, f"timm's {name}")
    return net, int(net.num_features)


def cnn_trunk(backbone: str, weights: str | None) -> tuple[nn.Module, int]:
    """``timm:NAME`` through timm, any other name through torchvision."""
    if backbone.startswith("timm:"):
        return timm_trunk(backbone.removeprefix("timm:"), weights)
    return torchvision_trunk(backbone, weights)


# ----------------------------------------------------------------------------- text encoders


class GRUTextEncoder(nn.Module):
    """VSE++ text encoder: word embeddings (uniform(-0.1, 0.1) init) -> GRU; the hidden state at each
    caption's last word is the caption embedding."""

    def __init__(self, vocab_size: int, word_dim: int, embed_size: int, num_layers: int = 1) -> None:
        super().__init__()
        self.embed = nn.Embedding(vocab_size, word_dim)
        nn.init.uniform_(self.embed.weight, -0.1, 0.1)
        self.rnn = nn.GRU(word_dim, embed_size, num_layers, batch_first=True)

    def forward(self, tokens: Tensor, lengths: Tensor) -> Tensor:
        x = self.embed(tokens)
        packed = pack_padded_sequence(x, lengths.clamp(min=1).cpu(), batch_first=True, enforce_sorted=False)
        out, _ = self.rnn(packed)
        out, _ = pad_packed_sequence(out, batch_first=True, total_length=tokens.shape[1])
        last = (lengths.clamp(min=1) - 1).to(out.device)
        return l2norm(out[torch.arange(out.shape[0], device=out.device), last])


class BiGRUGPOTextEncoder(nn.Module):
    """VSE infinity BiGRU text encoder: forward and backward states averaged per word, GPO over words."""

    def __init__(self, vocab_size: int, word_dim: int, embed_size: int, num_layers: int = 1, gpo_dim: int = 32) -> None:
        super().__init__()
        self.embed = nn.Embedding(vocab_size, word_dim)
        nn.init.uniform_(self.embed.weight, -0.1, 0.1)
        self.rnn = nn.GRU(word_dim, embed_size, num_layers, batch_first=True, bidirectional=True)
        self.gpo = GPO(gpo_dim, gpo_dim)

    def forward(self, tokens: Tensor, lengths: Tensor) -> Tensor:
        x = self.embed(tokens)
        packed = pack_padded_sequence(x, lengths.clamp(min=1).cpu(), batch_first=True, enforce_sorted=False)
        out, _ = self.rnn(packed)
        out, _ = pad_packed_sequence(out, batch_first=True, total_length=tokens.shape[1])
        half = out.shape[-1] // 2
        words = (out[..., :half] + out[..., half:]) / 2
        return l2norm(self.gpo(words, lengths.to(words.device)))


class BertGPOTextEncoder(nn.Module):
    """VSE infinity BERT text encoder: BERT token states -> linear to the joint space -> GPO."""

    def __init__(self, bert: nn.Module, embed_size: int, gpo_dim: int = 32) -> None:
        super().__init__()
        self.bert = bert
        self.linear = nn.Linear(bert.config.hidden_size, embed_size)
        self.gpo = GPO(gpo_dim, gpo_dim)

    def forward(self, tokens: Tensor, lengths: Tensor) -> Tensor:
        mask = length_mask(lengths, tokens.shape[1]).long()
        states = self.bert(input_ids=tokens, attention_mask=mask).last_hidden_state
        return l2norm(self.gpo(self.linear(states), lengths))


# ----------------------------------------------------------------------------- the joint model


class VSEModel(nn.Module):
    """A pair of encoders into one joint space: ``(images, captions) -> (img_emb, cap_emb)``."""

    def __init__(self, image_encoder: nn.Module, text_encoder: nn.Module) -> None:
        super().__init__()
        self.image_encoder = image_encoder
        self.text_encoder = text_encoder

    def encode_images(self, images: Tensor, lengths: Tensor | None = None) -> Tensor:
        return self.image_encoder(images, lengths)

    def encode_captions(self, tokens: Tensor, lengths: Tensor) -> Tensor:
        return self.text_encoder(tokens, lengths)

    def forward(self, images: Tensor, img_lengths: Tensor | None, tokens: Tensor, cap_lengths: Tensor) -> tuple[Tensor, Tensor]:
        return self.encode_images(images, img_lengths), self.encode_captions(tokens, cap_lengths)


# ----------------------------------------------------------------------------- the ranking loss


class RankingLoss(nn.Module):
    """The configured ranking loss over a batch of (image, caption) embeddings."""

    def __init__(self, cfg: LossConfig) -> None:
        super().__init__()
        self.cfg = cfg

    @property
    def needs_lsa(self) -> bool:
        return self.cfg.kind == "lseh"

    def forward(
        self, img_emb: Tensor, cap_emb: Tensor, img_ids: Tensor, lsa: Tensor | None = None, epoch: int = 0,
        cap_index: Tensor | None = None,
    ) -> Tensor:
        """Loss of one batch; ``img_ids`` name each pair's picture, ``lsa`` the captions' LSA rows,
        ``cap_index`` the captions' dataset indices (needed by ``lseh.mask_ids: caption_index_div5``)."""
        return self.from_scores(img_emb.float() @ cap_emb.float().T, img_ids, lsa, epoch, cap_index)

    def from_scores(self, scores: Tensor, img_ids: Tensor, lsa: Tensor | None = None, epoch: int = 0,
                    cap_index: Tensor | None = None) -> Tensor:
        """Loss of a batch similarity matrix ``scores[i, j]`` (image i, caption j; positives on the diagonal):
        the cosine of VSE embeddings or a pairwise network's scores (SGR/SAF), one loss code for all."""
        hardest = epoch >= self.cfg.warmup_sum_epochs
        if self.cfg.kind == "lsh":
            return lsh_loss(scores, self.cfg.margin)
        if self.cfg.kind == "lmh":
            return reduce_costs(*hinge_costs(scores, self.cfg.margin), hardest=hardest)
        if lsa is None:
            raise ValueError("the LSEH loss needs the batch captions' LSA vectors")
        c = self.cfg.lseh
        same = None
        if c.mask_ids == "caption_index_div5":
            if cap_index is None:
                raise ValueError("train.loss.lseh.mask_ids: caption_index_div5 needs the captions' dataset indices")
            same = caption_div5_mask(img_ids, cap_index.to(img_ids.device))
        return lseh_loss(scores, lsa, img_ids, c.alpha, c.lam, c.normalize, c.same_image, hardest=hardest, same=same)
