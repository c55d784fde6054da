"""VSRN: Visual Semantic Reasoning for image-text matching (Li, Zhang, Li, Li, Fu, ICCV 2019), as the LSEH paper
(Gong & Cosma 2023) trains it: official code KunpengLi1994/VSRN and its LSEH fork yangong23/VSEnetworksLSEH
(``VSRN_LSEH/model.py``, ``GCN_lib/Rs_GCN.py``, ``models/{EncoderRNN,DecoderRNN,Attention,S2VTAttModel}.py``).

- **Region relationship reasoning (GCN):** the 36 BUTD regions -> linear layer -> four residual graph
  convolutions whose affinity is ``R = theta(v)^T phi(v) / N`` (``Rs_GCN``).
- **Global semantic reasoning (GSR):** a GRU over the reasoned regions; its last hidden state is the image
  embedding (BatchNorm on it for Flickr30K, as the official code switches on ``data_name == f30k_precomp``).
- **Caption generation:** an attention GRU decoder (S2VT) generates the caption from the reasoned regions;
  its summed negative log-likelihood per caption is added to the ranking loss in training.

The text side is the VSE++ GRU (``model.GRUTextEncoder``). Similarity is the cosine of the global embeddings.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from zsk.tasks.retrieve.model import GRUTextEncoder, VSEModel


def l2norm_dim1(x: Tensor) -> Tensor:
    """VSRN's ``l2norm``: divide by the L2 norm along dimension 1, without epsilon. On ``(B, N, D)`` region
    features that is across the N regions for each channel (the official behaviour, kept as published)."""
    return x / x.pow(2).sum(dim=1, keepdim=True).sqrt()


class RsGCN(nn.Module):
    """One residual graph convolution over regions (VSRN eq. 1-3): ``v* = W(R g(v)) + v`` with the affinity
    ``R = theta(v)^T phi(v) / N``; ``W`` ends in a BatchNorm initialised to zero, so it starts as the identity."""

    def __init__(self, channels: int, inter_channels: int | None = None) -> None:
        super().__init__()
        inter = inter_channels or max(1, channels // 2)
        self.inter_channels = inter
        self.g = nn.Conv1d(channels, inter, kernel_size=1)
        self.theta = nn.Conv1d(channels, inter, kernel_size=1)
        self.phi = nn.Conv1d(channels, inter, kernel_size=1)
        self.W = nn.Sequential(nn.Conv1d(inter, channels, kernel_size=1), nn.BatchNorm1d(channels))
        nn.init.zeros_(self.W[1].weight)
        nn.init.zeros_(self.W[1].bias)

    def forward(self, v: Tensor) -> Tensor:
        """``v``: ``(B, D, N)`` region features (channels first) -> ``(B, D, N)``."""
        g_v = self.g(v).permute(0, 2, 1)
        theta_v = self.theta(v).permute(0, 2, 1)
        r = torch.matmul(theta_v, self.phi(v))
        y = torch.matmul(r / r.shape[-1], g_v).permute(0, 2, 1).contiguous()
        return self.W(y) + v


class VSRNImageEncoder(nn.Module):
    """Regions -> fc -> ``steps`` RsGCN layers -> GRU (GSR) -> last hidden state -> [BatchNorm] -> L2 norm.

    ``batch_norm`` True is the official Flickr30K branch (BatchNorm on the GRU state, no normalisation after
    fc); False is its MS-COCO (and IAPR README command) branch (``l2norm`` after fc, no BatchNorm).
    """

    def __init__(self, img_dim: int, embed_size: int, steps: int = 4, batch_norm: bool = True) -> None:
        super().__init__()
        self.batch_norm = batch_norm
        self.fc = nn.Linear(img_dim, embed_size)
        r = math.sqrt(6.0) / math.sqrt(img_dim + embed_size)
        nn.init.uniform_(self.fc.weight, -r, r)
        nn.init.zeros_(self.fc.bias)
        self.gcn = nn.ModuleList(RsGCN(embed_size, embed_size) for _ in range(steps))
        self.gsr = nn.GRU(embed_size, embed_size, 1, batch_first=True)
        self.bn = nn.BatchNorm1d(embed_size) if batch_norm else None

    def reason(self, images: Tensor) -> tuple[Tensor, Tensor]:
        """``(B, N, img_dim)`` -> (global embedding ``(B, D)``, reasoned regions ``(B, N, D)`` for the captioner)."""
        x = self.fc(images)
        if self.bn is None:
            x = l2norm_dim1(x)
        x = x.permute(0, 2, 1)
        for layer in self.gcn:
            x = layer(x)
        regions = l2norm_dim1(x.permute(0, 2, 1))
        _, hidden = self.gsr(regions)
        feat = hidden[0]
        if self.bn is not None:
            feat = self.bn(feat)
        return l2norm_dim1(feat), regions

    def forward(self, images: Tensor, lengths: Tensor | None = None) -> Tensor:
        return self.reason(images)[0]


class CaptionAttention(nn.Module):
    """Additive attention of the decoder state over the encoded regions (VSRN's ``models/Attention.py``)."""

    def __init__(self, dim: int) -> None:
        super().__init__()
        self.linear1 = nn.Linear(dim * 2, dim)
        self.linear2 = nn.Linear(dim, 1, bias=False)

    def forward(self, hidden: Tensor, outputs: Tensor) -> Tensor:
        b, n, _ = outputs.shape
        inputs = torch.cat((outputs, hidden.unsqueeze(1).expand(-1, n, -1)), dim=2)
        e = self.linear2(torch.tanh(self.linear1(inputs))).view(b, n)
        return torch.bmm(F.softmax(e, dim=1).unsqueeze(1), outputs).squeeze(1)


class CaptionGenerator(nn.Module):
    """S2VT attention captioner of VSRN: a GRU encodes the reasoned regions (``vid2hid`` + dropout first), an
    attention GRU decoder reads the ground-truth words (teacher forcing) and predicts the next word."""

    def __init__(self, vocab_size: int, region_dim: int, hidden: int = 512, word_dim: int = 300,
                 max_len: int = 60, dropout: float = 0.2) -> None:
        super().__init__()
        self.max_len = max_len
        self.vid2hid = nn.Linear(region_dim, hidden)
        nn.init.xavier_normal_(self.vid2hid.weight)
        self.encoder_dropout = nn.Dropout(dropout)
        self.encoder_rnn = nn.GRU(hidden, hidden, 1, batch_first=True)
        self.embedding = nn.Embedding(vocab_size, word_dim)
        self.attention = CaptionAttention(hidden)
        self.decoder_dropout = nn.Dropout(dropout)
        self.decoder_rnn = nn.GRU(hidden + word_dim, hidden, 1, batch_first=True)
        self.out = nn.Linear(hidden, vocab_size)
        nn.init.xavier_normal_(self.out.weight)

    def forward(self, regions: Tensor, labels: Tensor) -> Tensor:
        """Log-probabilities ``(B, max_len - 1, V)`` of the words after each of ``labels[:, :max_len - 1]``."""
        b, n, d = regions.shape
        x = self.encoder_dropout(self.vid2hid(regions.reshape(-1, d))).view(b, n, -1)
        outputs, state = self.encoder_rnn(x)
        words = self.embedding(labels)
        logprobs = []
        for i in range(self.max_len - 1):
            context = self.attention(state.squeeze(0), outputs)
            step_in = self.decoder_dropout(torch.cat([words[:, i], context], dim=1)).unsqueeze(1)
            out, state = self.decoder_rnn(step_in, state)
            logprobs.append(F.log_softmax(self.out(out.squeeze(1)), dim=1))
        return torch.stack(logprobs, dim=1)

    def loss(self, regions: Tensor, labels: Tensor, masks: Tensor) -> Tensor:
        """Masked negative log-likelihood summed over words, averaged over the batch (``LanguageModelCriterion``)."""
        logprobs = self(regions, labels)
        t = logprobs.shape[1]
        target, mask = labels[:, 1 : t + 1], masks[:, 1 : t + 1]
        nll = -logprobs.gather(2, target.unsqueeze(2)).squeeze(2)
        return (nll * mask).sum() / labels.shape[0]


def caption_targets(tokens: Tensor, lengths: Tensor, max_len: int, end_id: int) -> tuple[Tensor, Tensor]:
    """VSRN's caption labels and masks ``(B, max_len + 1)`` from the batch token ids ``<start> w.. <end>``:
    captions longer than ``max_len`` tokens are cut to ``max_len`` with ``<end>`` last; the mask covers the
    tokens and the first padding position (the official ``PrecompDataset.__getitem__``)."""
    b = tokens.shape[0]
    n = lengths.clamp(max=max_len)
    labels = torch.zeros(b, max_len + 1, dtype=torch.long, device=tokens.device)
    width = min(tokens.shape[1], max_len)
    pos = torch.arange(width, device=tokens.device)[None, :]
    labels[:, :width] = torch.where(pos < n[:, None], tokens[:, :width], torch.zeros_like(tokens[:, :width]))
    cut = lengths > max_len
    if cut.any():
        labels[cut, max_len - 1] = end_id
    masks = (torch.arange(max_len + 1, device=tokens.device)[None, :] <= n[:, None]).float()
    return labels, masks


class VSRNModel(VSEModel):
    """VSRN: reasoned image embedding + GRU caption embedding, and the captioner used only in training."""

    def __init__(self, image_encoder: VSRNImageEncoder, text_encoder: GRUTextEncoder, captioner: CaptionGenerator,
                 end_id: int = 2, caption_weight: float = 1.0) -> None:
        super().__init__(image_encoder, text_encoder)
        self.captioner = captioner
        self.end_id = end_id
        self.caption_weight = caption_weight

    def forward(self, images: Tensor, img_lengths: Tensor | None, tokens: Tensor, cap_lengths: Tensor,
                with_caption_loss: bool = False) -> tuple[Tensor, Tensor]:
        """(image embeddings, caption embeddings); with ``with_caption_loss`` (training): (batch similarity
        matrix, weighted caption-generation loss), through ``forward`` so DistributedDataParallel sees it."""
        if not with_caption_loss:
            return super().forward(images, img_lengths, tokens, cap_lengths)
        img_emb, regions = self.image_encoder.reason(images)
        cap_emb = self.text_encoder(tokens, cap_lengths)
        labels, masks = caption_targets(tokens, cap_lengths.to(tokens.device), self.captioner.max_len, self.end_id)
        caption_loss = self.captioner.loss(regions, labels, masks)
        return img_emb.float() @ cap_emb.float().T, self.caption_weight * caption_loss
