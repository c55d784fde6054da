"""SGRAF: Similarity Graph Reasoning and Attention Filtration (Diao, Zhang, Ma, Lu, AAAI 2021), as the LSEH paper
(Gong & Cosma 2023) trains it: official code Paranioar/SGRAF and its LSEH fork yangong23/VSEnetworksLSEH
(``SGRAF_LSEH/model.py``).

Unlike the VSE networks, SGRAF scores an (image, caption) pair with a network:

1. local region embeddings (fc + L2 norm) and local word embeddings (BiGRU, directions averaged, L2 norm);
2. global vectors by self-attention over regions / words guided by their mean (``VisualSA``, ``TextSA``);
3. similarity representations: the global one ``|W_g (v - t)^2|`` and one local per word against its
   text-to-region attended context (SCAN attention, smoothing 9), each projected to ``sim_dim`` and normalised;
4. **SGR**: ``sgr_steps`` rounds of graph reasoning over these nodes, the global node is read out; or
   **SAF**: a sigmoid gate (BatchNorm) per node, L1-normalised, filters and sums the nodes;
5. a linear layer and a sigmoid give the score.

The cost is quadratic in images x captions, so evaluation scores bounded blocks (``score_blocks``). The paper's
SGRAF result is the **ensemble**: the average of an SGR and an SAF model's scores (``zsk retrieve eval --ensemble``).
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torch.nn.utils.rnn import pack_padded_sequence, pad_packed_sequence

from zsk.tasks.retrieve.model import l2norm

EVAL_PAIRS_PER_CALL = 1024  # eval mode: (image, caption) pairs scored per call of the pair network


def l1norm(x: Tensor, dim: int, eps: float = 1e-8) -> Tensor:
    """Divide by the L1 norm along ``dim`` (SAF's gate normalisation)."""
    return x / (x.abs().sum(dim=dim, keepdim=True) + eps)


def uniform_linear(layer: nn.Linear) -> nn.Linear:
    """SGRAF's initialisation: uniform(-r, r), r = sqrt(6 / (in + out)), zero bias."""
    r = math.sqrt(6.0) / math.sqrt(layer.in_features + layer.out_features)
    nn.init.uniform_(layer.weight, -r, r)
    nn.init.zeros_(layer.bias)
    return layer


class LocalImageEncoder(nn.Module):
    """Region features -> fc -> L2 norm per region: ``(B, R, img_dim) -> (B, R, D)``."""

    def __init__(self, img_dim: int, embed_size: int) -> None:
        super().__init__()
        self.fc = uniform_linear(nn.Linear(img_dim, embed_size))

    def forward(self, images: Tensor, lengths: Tensor | None = None) -> Tensor:
        return l2norm(self.fc(images), dim=-1)


class LocalTextEncoder(nn.Module):
    """Words -> embedding (uniform(-0.1, 0.1)) -> dropout 0.4 -> BiGRU, the two directions averaged -> L2 norm
    per word: ``(B, L) -> (B, L, D)``, zero rows past each caption's length."""

    def __init__(self, vocab_size: int, word_dim: int, embed_size: int, num_layers: int = 1,
                 dropout: float = 0.4) -> None:
        super().__init__()
        self.embed = nn.Embedding(vocab_size, word_dim)
        nn.init.uniform_(self.embed.weight, -0.1, 0.1)
        self.dropout = nn.Dropout(dropout)
        self.cap_rnn = nn.GRU(word_dim, embed_size, num_layers, batch_first=True, bidirectional=True)

    def forward(self, tokens: Tensor, lengths: Tensor) -> Tensor:
        x = self.dropout(self.embed(tokens))
        packed = pack_padded_sequence(x, lengths.clamp(min=1).cpu(), batch_first=True, enforce_sorted=False)
        out, _ = self.cap_rnn(packed)
        out, _ = pad_packed_sequence(out, batch_first=True, total_length=tokens.shape[1])
        half = out.shape[-1] // 2
        return l2norm((out[..., :half] + out[..., half:]) / 2, dim=-1)


class GuidedSelfAttention(nn.Module):
    """The forward of SGRAF's VisualSA and TextSA (eq. 3): softmax weights over the local features from
    ``common(local_branch(local) * global_branch(mean))``, their weighted sum, L2-normalised. Subclasses build
    the three branches under the official names."""

    embedding_local: nn.Module
    embedding_global: nn.Module
    embedding_common: nn.Module

    def forward(self, local: Tensor, raw_global: Tensor) -> Tensor:
        l_emb = self.embedding_local(local)
        g_emb = self.embedding_global(raw_global).unsqueeze(1)
        weights = torch.softmax(self.embedding_common(l_emb * g_emb).squeeze(2), dim=1)
        return l2norm((weights.unsqueeze(2) * local).sum(dim=1), dim=-1)


class VisualSA(GuidedSelfAttention):
    """Global image vector by self-attention over regions, guided by the mean region (SGRAF eq. 3).
    The local branch's BatchNorm normalises over the ``num_regions`` axis, as in the official code."""

    def __init__(self, embed_dim: int, dropout: float, num_regions: int) -> None:
        super().__init__()
        self.embedding_local = nn.Sequential(uniform_linear(nn.Linear(embed_dim, embed_dim)),
                                             nn.BatchNorm1d(num_regions), nn.Tanh(), nn.Dropout(dropout))
        self.embedding_global = nn.Sequential(uniform_linear(nn.Linear(embed_dim, embed_dim)),
                                              nn.BatchNorm1d(embed_dim), nn.Tanh(), nn.Dropout(dropout))
        self.embedding_common = nn.Sequential(uniform_linear(nn.Linear(embed_dim, 1)))


class TextSA(GuidedSelfAttention):
    """Global caption vector by self-attention over words, guided by the mean word (SGRAF eq. 3)."""

    def __init__(self, embed_dim: int, dropout: float) -> None:
        super().__init__()
        self.embedding_local = nn.Sequential(uniform_linear(nn.Linear(embed_dim, embed_dim)), nn.Tanh(),
                                             nn.Dropout(dropout))
        self.embedding_global = nn.Sequential(uniform_linear(nn.Linear(embed_dim, embed_dim)), nn.Tanh(),
                                              nn.Dropout(dropout))
        self.embedding_common = nn.Sequential(uniform_linear(nn.Linear(embed_dim, 1)))


class GraphReasoning(nn.Module):
    """One SGR step over the similarity nodes (SGRAF eq. 6-7): softmax(Q K^T) edges, aggregate, linear + ReLU."""

    def __init__(self, sim_dim: int) -> None:
        super().__init__()
        self.graph_query_w = uniform_linear(nn.Linear(sim_dim, sim_dim))
        self.graph_key_w = uniform_linear(nn.Linear(sim_dim, sim_dim))
        self.sim_graph_w = uniform_linear(nn.Linear(sim_dim, sim_dim))

    def forward(self, sim_emb: Tensor) -> Tensor:
        edges = torch.softmax(torch.bmm(self.graph_query_w(sim_emb), self.graph_key_w(sim_emb).transpose(1, 2)), dim=-1)
        return F.relu(self.sim_graph_w(torch.bmm(edges, sim_emb)))


class AttentionFiltration(nn.Module):
    """SAF (SGRAF eq. 8-9): a gate ``sigmoid(BN(w^T s))`` per node, L1-normalised over the nodes, weights the sum."""

    def __init__(self, sim_dim: int) -> None:
        super().__init__()
        self.attn_sim_w = uniform_linear(nn.Linear(sim_dim, 1))
        self.bn = nn.BatchNorm1d(1)

    def forward(self, sim_emb: Tensor) -> Tensor:
        attn = l1norm(torch.sigmoid(self.bn(self.attn_sim_w(sim_emb).permute(0, 2, 1))), dim=-1)
        return l2norm(torch.matmul(attn, sim_emb).squeeze(1), dim=-1)


def scan_attention(query: Tensor, context: Tensor, smooth: float, eps: float = 1e-8) -> Tensor:
    """Text-to-region attention (SCAN, Lee et al. 2018): for each word, regions weighted by
    ``softmax(smooth * l2norm_words(LeakyReLU_0.1(context query^T)))``; the attended context, L2-normalised."""
    attn = F.leaky_relu(torch.bmm(context, query.transpose(1, 2)), 0.1)  # (n, regions, words)
    attn = l2norm(attn, dim=2, eps=eps)
    attn = torch.softmax(attn.transpose(1, 2) * smooth, dim=2)  # (n, words, regions)
    return l2norm(torch.bmm(attn, context), dim=-1, eps=eps)


class SimilarityNetwork(nn.Module):
    """SGRAF's ``EncoderSimilarity``: the score of every (image, caption) pair, ``(n_img, n_cap)`` in (0, 1)."""

    def __init__(self, embed_size: int, sim_dim: int, module: str = "SGR", sgr_steps: int = 3,
                 num_regions: int = 36, dropout: float = 0.4, smooth: float = 9.0) -> None:
        super().__init__()
        if module not in ("SGR", "SAF"):
            raise ValueError(f"module must be SGR or SAF, got {module!r}")
        self.module_name = module
        self.smooth = smooth
        self.v_global_w = VisualSA(embed_size, dropout, num_regions)
        self.t_global_w = TextSA(embed_size, dropout)
        self.sim_tranloc_w = uniform_linear(nn.Linear(embed_size, sim_dim))
        self.sim_tranglo_w = uniform_linear(nn.Linear(embed_size, sim_dim))
        self.sim_eval_w = uniform_linear(nn.Linear(sim_dim, 1))
        if module == "SGR":
            self.SGR_module = nn.ModuleList(GraphReasoning(sim_dim) for _ in range(sgr_steps))
        else:
            self.SAF_module = AttentionFiltration(sim_dim)

    def forward(self, img_emb: Tensor, cap_emb: Tensor, cap_lens: Sequence[int] | Tensor) -> Tensor:
        """Scores ``(n_img, n_cap)``. In training one caption at a time against all images, as the official
        loop (SAF's BatchNorm statistics are per caption over the images); in eval mode, where every pair is
        scored independently, captions of equal length are scored together (same numbers, fewer calls)."""
        lens = [int(n) for n in cap_lens]
        img_glo = self.v_global_w(img_emb, img_emb.mean(dim=1))
        if self.training:
            return torch.cat([self.pair_scores(img_emb, img_glo, cap_emb[i : i + 1, :n]).unsqueeze(1)
                              for i, n in enumerate(lens)], dim=1)
        n_img = img_emb.shape[0]
        out = img_emb.new_empty(n_img, len(lens))
        groups: dict[int, list[int]] = {}
        for i, n in enumerate(lens):
            groups.setdefault(n, []).append(i)
        per_call = max(1, EVAL_PAIRS_PER_CALL // max(1, n_img))
        for n, idx in groups.items():
            for s in range(0, len(idx), per_call):
                part = idx[s : s + per_call]
                out[:, part] = self.pair_scores(img_emb, img_glo, cap_emb[part, :n]).view(len(part), n_img).T
        return out

    def pair_scores(self, img_emb: Tensor, img_glo: Tensor, caps: Tensor) -> Tensor:
        """Scores of ``k`` captions of one length ``(k, n, D)`` against every image, caption-major ``(k * n_img,)``."""
        k, n, d = caps.shape
        n_img = img_emb.shape[0]
        cap_glo = self.t_global_w(caps, caps.mean(dim=1))  # (k, D)
        cap_rep = caps.unsqueeze(1).expand(k, n_img, n, d).reshape(k * n_img, n, d)
        img_rep = img_emb.unsqueeze(0).expand(k, *img_emb.shape).reshape(k * n_img, *img_emb.shape[1:])
        context = scan_attention(cap_rep, img_rep, self.smooth)
        sim_loc = l2norm(self.sim_tranloc_w((context - cap_rep).pow(2)), dim=-1)
        sim_glo = l2norm(self.sim_tranglo_w((img_glo.unsqueeze(0) - cap_glo.unsqueeze(1)).pow(2)), dim=-1)
        sim_emb = torch.cat([sim_glo.reshape(k * n_img, 1, -1), sim_loc], dim=1)
        if self.module_name == "SGR":
            for step in self.SGR_module:
                sim_emb = step(sim_emb)
            sim_vec = sim_emb[:, 0]
        else:
            sim_vec = self.SAF_module(sim_emb)
        return torch.sigmoid(self.sim_eval_w(sim_vec)).squeeze(1)


@dataclass
class LocalCaptions:
    """Encoded captions of a gallery for the pairwise networks: one ``(L_i, D)`` tensor per caption (no
    padding to the gallery's longest caption, so memory is the sum of the lengths)."""

    words: list[Tensor]

    def __len__(self) -> int:
        return len(self.words)

    def subset(self, start: int, end: int) -> LocalCaptions:
        """Captions ``start:end`` (e.g. a COCO 1K fold)."""
        return LocalCaptions(self.words[start:end])

    def padded(self, start: int, end: int, device: torch.device | None = None) -> tuple[Tensor, list[int]]:
        """Captions ``start:end`` as a zero-padded ``(n, L_max, D)`` tensor and their lengths."""
        part = self.words[start:end]
        lens = [int(w.shape[0]) for w in part]
        out = part[0].new_zeros(len(part), max(lens), part[0].shape[1])
        for j, w in enumerate(part):
            out[j, : w.shape[0]] = w
        return (out if device is None else out.to(device)), lens


class SGRAFModel(nn.Module):
    """Local encoders + the similarity network; ``forward`` returns the batch's pair scores ``(B_img, B_cap)``."""

    pairwise = True

    def __init__(self, image_encoder: LocalImageEncoder, text_encoder: LocalTextEncoder,
                 sim_encoder: SimilarityNetwork) -> None:
        super().__init__()
        self.image_encoder = image_encoder
        self.text_encoder = text_encoder
        self.sim_encoder = sim_encoder

    def encode_images(self, images: Tensor, lengths: Tensor | None = None) -> Tensor:
        return self.image_encoder(images, lengths)

    def encode_captions(self, tokens: Tensor, lengths: Tensor) -> Tensor:
        return self.text_encoder(tokens, lengths)

    def similarity(self, img_emb: Tensor, cap_emb: Tensor, cap_lens: Sequence[int] | Tensor) -> Tensor:
        return self.sim_encoder(img_emb, cap_emb, cap_lens)

    def forward(self, images: Tensor, img_lengths: Tensor | None, tokens: Tensor, cap_lengths: Tensor) -> Tensor:
        return self.similarity(self.encode_images(images, img_lengths), self.encode_captions(tokens, cap_lengths),
                               cap_lengths.tolist())


@torch.no_grad()
def score_blocks(model: SGRAFModel, img_emb: Tensor, captions: LocalCaptions, shard: int = 100,
                 device: torch.device | None = None) -> Tensor:
    """The ``(n_img, n_cap)`` score matrix on the CPU, computed ``shard`` images x ``shard`` captions at a time
    (the official ``shard_attn_scores``, shard 100): peak memory of the pairwise network is bounded by the
    block, not by the gallery."""
    device = device or img_emb.device
    n_img, n_cap = img_emb.shape[0], len(captions)
    out = torch.empty(n_img, n_cap)
    for c0 in range(0, n_cap, shard):
        cap, lens = captions.padded(c0, min(c0 + shard, n_cap), device)
        for i0 in range(0, n_img, shard):
            im = img_emb[i0 : i0 + shard].to(device)
            out[i0 : i0 + im.shape[0], c0 : c0 + len(lens)] = model.similarity(im, cap, lens).float().cpu()
    return out
