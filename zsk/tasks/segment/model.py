"""ZegCLIP (Zhou et al., CVPR 2023): one-stage zero-shot segmentation from a frozen CLIP.

image -> CLIP ViT with deep visual prompts -> dense tokens (B, HW, D) and a global token g
class names -> frozen CLIP text encoder -> t_c
relationship descriptor: q_c = W [g * t_c ; t_c]
3-layer cross-attention decoder; a layer's mask logits are its head-averaged pre-softmax
attention scores q k^T / sqrt(d_head), reshaped to the token grid and upsampled to the image.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from zsk.core.errors import ZskError


def drop_path(x: Tensor, rate: float, training: bool) -> Tensor:
    """Stochastic depth: drop the whole residual branch per sample with probability ``rate``."""
    if rate <= 0.0 or not training:
        return x
    keep = 1.0 - rate
    mask = x.new_empty((x.shape[0],) + (1,) * (x.ndim - 1)).bernoulli_(keep)
    return x * mask / keep


def resize_pos_embed(pos: Tensor, grid: tuple[int, int]) -> Tensor:
    """Bilinearly resize a ViT position embedding (1 + h*w, D) to a new token grid; the CLS entry is kept."""
    n = pos.shape[0] - 1
    side = int(round(math.sqrt(n)))
    if side * side != n:
        raise ZskError(f"the CLIP position embedding has {n} patch positions, not a square grid")
    if (side, side) == tuple(grid):
        return pos
    spatial = pos[1:].reshape(1, side, side, -1).permute(0, 3, 1, 2)
    spatial = F.interpolate(spatial.float(), size=grid, mode="bilinear", align_corners=False).to(pos.dtype)
    return torch.cat([pos[:1], spatial.permute(0, 2, 3, 1).reshape(grid[0] * grid[1], -1)])


class PromptedVisionTransformer(nn.Module):
    """The frozen CLIP ViT with deep visual prompt tuning (VPT-deep) and ZegCLIP's output path.

    Layer 0 gets N prompt tokens between the CLS and patch tokens (after ``ln_pre``); before each later
    block its own prompt set replaces the N prompt slots. All prompts pass through one shared
    ``prompt_proj`` and dropout. After the last block: ``prompt_norm`` (new), CLIP's ``ln_post`` and
    ``proj``; patch tokens and the CLS token are L2-normalised.

    As in the official encoder, the CLS token gets the class embedding twice (as the token and inside
    its position embedding; ``cls_embedding_twice=False`` adds it once) and the frozen blocks run without
    stochastic depth (``drop_path_rate`` > 0 is an option the official forward never applies).
    """

    def __init__(self, visual: nn.Module, num_prompts: int, grid: tuple[int, int], drop_path_rate: float = 0.0,
                 prompt_dropout: float = 0.1, cls_embedding_twice: bool = True) -> None:
        super().__init__()
        self._check(visual)
        self.visual = visual
        for p in self.visual.parameters():
            p.requires_grad_(False)
        width = visual.conv1.out_channels
        patch = visual.conv1.kernel_size[0]
        layers = len(visual.transformer.resblocks)
        self.patch_size = patch
        self.width = width
        self.num_prompts = num_prompts
        self.cls_embedding_twice = cls_embedding_twice
        self.batch_first = bool(getattr(visual.transformer, "batch_first", True))
        # position embedding resized once to the training grid (14x14 -> 32x32 for 512 crops)
        with torch.no_grad():
            resized = resize_pos_embed(visual.positional_embedding.data, grid)
        visual.positional_embedding = nn.Parameter(resized, requires_grad=False)
        self.grid = tuple(grid)
        self.drop_path_rates = [float(r) for r in torch.linspace(0, drop_path_rate, layers)]
        # prompts: uniform in +-sqrt(6 / (3 * patch * patch + width)) (xavier-uniform style)
        val = math.sqrt(6.0 / float(3 * patch * patch + width))
        self.prompt_embeddings = nn.Parameter(torch.empty(1, num_prompts, width).uniform_(-val, val))
        self.deep_prompt_embeddings = nn.Parameter(torch.empty(layers - 1, num_prompts, width).uniform_(-val, val))
        self.prompt_proj = nn.Linear(width, width)
        nn.init.kaiming_normal_(self.prompt_proj.weight, a=0, mode="fan_out")
        self.prompt_norm = nn.LayerNorm(width, eps=1e-6)
        self.prompt_dropout = nn.Dropout(prompt_dropout)

    @staticmethod
    def _check(visual: nn.Module) -> None:
        needed = ("conv1", "class_embedding", "positional_embedding", "ln_pre", "transformer", "ln_post", "proj")
        if not all(hasattr(visual, n) for n in needed) or getattr(visual, "attn_pool", None) is not None:
            raise ZskError("the CLIP vision tower is not a plain open_clip VisionTransformer (conv patch embedding, "
                           "class token, ln_post/proj); ZegCLIP needs a ViT model such as ViT-B-16")
        for blk in visual.transformer.resblocks:
            if not all(hasattr(blk, n) for n in ("ln_1", "attn", "ls_1", "ln_2", "mlp", "ls_2", "attention")):
                raise ZskError(f"unsupported CLIP block type {type(blk).__name__}; use a standard open_clip ViT")

    def projected_prompts(self) -> Tensor:
        """All prompt sets through the shared projection (layers, N, width)."""
        return self.prompt_proj(torch.cat([self.prompt_embeddings, self.deep_prompt_embeddings]))

    def prompts(self, projected: Tensor, layer: int, batch: int) -> Tensor:
        """A layer's prompts for the batch (B, N, width), dropout drawn per sample as in the official code."""
        return self.prompt_dropout(projected[layer].unsqueeze(0).expand(batch, -1, -1))

    def _block(self, blk: nn.Module, x: Tensor, rate: float) -> Tensor:
        if not self.batch_first:
            x = x.transpose(0, 1)
            a = blk.ls_1(blk.attention(blk.ln_1(x))).transpose(0, 1)
            x = x.transpose(0, 1)
        else:
            a = blk.ls_1(blk.attention(blk.ln_1(x)))
        x = x + drop_path(a, rate, self.training)
        return x + drop_path(blk.ls_2(blk.mlp(blk.ln_2(x))), rate, self.training)

    def forward(self, images: Tensor) -> tuple[Tensor, Tensor]:
        """Dense embeddings (B, D, h, w) and global embedding g (B, D), both L2-normalised."""
        v = self.visual
        x = v.conv1(images.to(v.conv1.weight.dtype))
        b, c, h, w = x.shape
        x = x.flatten(2).transpose(1, 2)
        pos = resize_pos_embed(v.positional_embedding, (h, w)).to(x.dtype)
        cls = v.class_embedding.to(x.dtype).expand(b, 1, c)
        cls_pos = pos[:1] + (v.class_embedding.to(x.dtype) if self.cls_embedding_twice else 0)
        x = torch.cat([cls + cls_pos, x + pos[1:]], dim=1)
        x = v.ln_pre(x)
        n = self.num_prompts
        projected = self.projected_prompts()
        x = torch.cat([x[:, :1], self.prompts(projected, 0, b).to(x.dtype), x[:, 1:]], dim=1)
        for i, blk in enumerate(v.transformer.resblocks):
            if i > 0:
                x = torch.cat([x[:, :1], self.prompts(projected, i, b).to(x.dtype), x[:, 1 + n :]], dim=1)
            x = self._block(blk, x, self.drop_path_rates[i])
        x = self.prompt_norm(x)
        x = v.ln_post(x) @ v.proj
        g = x[:, 0]
        dense = x[:, 1 + n :].transpose(1, 2).reshape(b, -1, h, w)
        return F.normalize(dense, dim=1), F.normalize(g, dim=-1)


class RelationshipDescriptor(nn.Module):
    """Queries from text and image: q_c = W [g * t_c ; t_c] (ZegCLIP's relationship descriptor)."""

    def __init__(self, dim: int) -> None:
        super().__init__()
        self.proj = nn.Linear(2 * dim, dim)

    def forward(self, text: Tensor, g: Tensor) -> Tensor:
        """text (C, D) and global image embeddings g (B, D) -> queries (B, C, D)."""
        t = text.unsqueeze(0).expand(g.shape[0], -1, -1).to(g.dtype)
        return self.proj(torch.cat([g.unsqueeze(1) * t, t], dim=-1))


class MaskCrossAttention(nn.Module):
    """Multi-head cross-attention that also returns the head-averaged pre-softmax scores as mask logits."""

    def __init__(self, dim: int, heads: int, attn_drop: float = 0.1) -> None:
        super().__init__()
        if dim % heads:
            raise ZskError(f"model.decoder_heads={heads} must divide the embedding width {dim}")
        self.heads = heads
        self.scale = (dim // heads) ** -0.5
        self.q = nn.Linear(dim, dim)
        self.k = nn.Linear(dim, dim)
        self.v = nn.Linear(dim, dim)
        self.proj = nn.Linear(dim, dim)
        self.attn_drop = nn.Dropout(attn_drop)

    def forward(self, queries: Tensor, memory: Tensor) -> tuple[Tensor, Tensor]:
        """queries (B, C, D), memory (B, N, D) -> (updated queries (B, C, D), mask logits (B, C, N))."""
        b, nq, d = queries.shape
        nk = memory.shape[1]
        hd = d // self.heads
        q = self.q(queries).view(b, nq, self.heads, hd).transpose(1, 2)
        k = self.k(memory).view(b, nk, self.heads, hd).transpose(1, 2)
        v = self.v(memory).view(b, nk, self.heads, hd).transpose(1, 2)
        scores = (q @ k.transpose(-2, -1)) * self.scale  # (B, heads, C, N)
        mask_logits = scores.mean(dim=1)
        attn = self.attn_drop(scores.softmax(dim=-1))
        out = (attn @ v).transpose(1, 2).reshape(b, nq, d)
        return self.proj(out), mask_logits


class ATMDecoderLayer(nn.Module):
    """Decoder layer without query self-attention: cross-attention, add & norm, FFN, add & norm (post-norm)."""

    def __init__(self, dim: int, heads: int, ffn_dim: int, dropout: float = 0.1) -> None:
        super().__init__()
        self.cross_attn = MaskCrossAttention(dim, heads, attn_drop=dropout)
        self.norm_cross = nn.LayerNorm(dim)
        self.linear1 = nn.Linear(dim, ffn_dim)
        self.linear2 = nn.Linear(ffn_dim, dim)
        self.norm_ffn = nn.LayerNorm(dim)
        self.dropout_cross = nn.Dropout(dropout)
        self.dropout_ffn_inner = nn.Dropout(dropout)
        self.dropout_ffn = nn.Dropout(dropout)

    def forward(self, queries: Tensor, memory: Tensor) -> tuple[Tensor, Tensor]:
        upd, mask_logits = self.cross_attn(queries, memory)
        q = self.norm_cross(queries + self.dropout_cross(upd))
        ffn = self.linear2(self.dropout_ffn_inner(F.relu(self.linear1(q))))
        return self.norm_ffn(q + self.dropout_ffn(ffn)), mask_logits


class ATMDecoder(nn.Module):
    """The stack of :class:`ATMDecoderLayer`; returns every layer's mask logits (B, C, N)."""

    def __init__(self, dim: int, layers: int, heads: int, ffn_dim: int, dropout: float = 0.1) -> None:
        super().__init__()
        self.layers = nn.ModuleList(ATMDecoderLayer(dim, heads, ffn_dim, dropout) for _ in range(layers))

    def forward(self, queries: Tensor, memory: Tensor) -> list[Tensor]:
        masks = []
        for layer in self.layers:
            queries, m = layer(queries, memory)
            masks.append(m)
        return masks


def unused_self_attention_params(dim: int, layers: int) -> int:
    """Parameters of the query self-attention (in/out projections and its LayerNorm) that the official
    decoder layers build but never call: counted in the paper's #Params, not built by zsk."""
    mha = 3 * dim * dim + 3 * dim + dim * dim + dim
    return layers * (mha + 2 * dim)


class ZegCLIP(nn.Module):
    """The full model: prompted image encoder, relationship descriptor and mask decoder.

    ``text_encoder`` is the frozen CLIP text tower used to embed class names (kept here so that
    checkpoints of random-init models carry it); the forward pass takes class embeddings computed once.
    """

    def __init__(self, image_encoder: PromptedVisionTransformer, text_encoder: nn.Module | None, embed_dim: int,
                 decoder_layers: int = 3, decoder_heads: int = 8, ffn_ratio: int = 4, dropout: float = 0.1,
                 init_std: float = 0.02) -> None:
        super().__init__()
        self.image_encoder = image_encoder
        self.text_encoder = text_encoder
        self.relationship_descriptor = RelationshipDescriptor(embed_dim)
        self.decoder = ATMDecoder(embed_dim, decoder_layers, decoder_heads, ffn_ratio * embed_dim, dropout)
        self.embed_dim = embed_dim
        self._init_head(init_std)

    def _init_head(self, std: float) -> None:
        # truncated normal (std 0.02 in the official head) for the head's linear layers, LayerNorm 1/0
        for m in list(self.relationship_descriptor.modules()) + list(self.decoder.modules()):
            if isinstance(m, nn.Linear):
                nn.init.trunc_normal_(m.weight, std=std)
                nn.init.zeros_(m.bias)
            elif isinstance(m, nn.LayerNorm):
                nn.init.ones_(m.weight)
                nn.init.zeros_(m.bias)

    def train(self, mode: bool = True) -> ZegCLIP:
        super().train(mode)
        if self.text_encoder is not None:
            self.text_encoder.eval()  # frozen tower: no dropout
        return self

    def forward(self, images: Tensor, text_embeddings: Tensor, all_layers: bool = False) -> Tensor | list[Tensor]:
        """Mask logits (B, C, H, W) at the input size for the C classes of ``text_embeddings`` (C, D);
        with ``all_layers`` the list of every decoder layer's logits (last = the prediction)."""
        dense, g = self.image_encoder(images)
        b, d, h, w = dense.shape
        queries = self.relationship_descriptor(text_embeddings, g)
        memory = dense.flatten(2).transpose(1, 2)
        layer_masks = self.decoder(queries, memory)
        size = images.shape[-2:]
        outs = [F.interpolate(m.view(b, -1, h, w), size=size, mode="bilinear", align_corners=False)
                for m in (layer_masks if all_layers else layer_masks[-1:])]
        return outs if all_layers else outs[0]

    def trainable_groups(self) -> dict[str, list[tuple[str, nn.Parameter]]]:
        """Trainable parameters by group: ``backbone`` (prompts, prompt_proj, prompt_norm) and ``head``."""
        groups: dict[str, list[tuple[str, nn.Parameter]]] = {"backbone": [], "head": []}
        for name, p in self.named_parameters():
            if not p.requires_grad:
                continue
            groups["backbone" if name.startswith("image_encoder.") else "head"].append((name, p))
        return groups
