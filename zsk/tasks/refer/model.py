"""AlignFormer (Wei et al., "Learning Aligned Cross-Modal Representations for Referring Image Segmentation",
arXiv 2301.06429 v1) as released in the code of its later version LGFormer (ZhichaoWei/LGFormer, mirror
mqchen1993/LGFormer): a Swin image encoder with a vision-language bidirectional attention (VLBA) module
after every stage (``lib/backbone.py``), BERT, a multi-scale deformable-attention pixel decoder whose layers
also attend to the words, and a linguistic "center embedding" query whose states become dynamic 1x1 mask
kernels (``lib/mask_predictor.py``). Parameter names follow the official modules where they can.
"""

from __future__ import annotations

import copy
import math
import types
from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from zsk.models.deformable_attention import MSDeformAttn

# --------------------------------------------------------------------------------------------- VLBA


class VisionLanguageAttention(nn.Module):
    """One logit map A = Q·K/√C between pixels and words (padded words −1e4), used both ways: softmax
    over words gathers word values per pixel; softmax over pixels of Aᵀ gathers pixel values per word."""

    def __init__(self, v_channels: int, l_channels: int, num_heads: int = 1) -> None:
        super().__init__()
        self.v_channels, self.l_channels, self.num_heads = v_channels, l_channels, num_heads
        self.query = nn.Sequential(nn.Conv1d(v_channels, v_channels, 1), nn.InstanceNorm1d(v_channels))
        self.key = nn.Conv1d(l_channels, v_channels, 1)
        self.value = nn.Conv1d(l_channels, v_channels, 1)
        self.W = nn.Sequential(nn.Conv1d(v_channels, v_channels, 1), nn.InstanceNorm1d(v_channels))
        self.sym_value = nn.Sequential(nn.Conv1d(v_channels, l_channels, 1), nn.InstanceNorm1d(l_channels))
        self.sym_W = nn.Conv1d(l_channels, l_channels, 1)

    def forward(self, x: Tensor, words: Tensor, word_mask: Tensor) -> tuple[Tensor, Tensor]:
        """``x`` (B, HW, Cv), ``words`` (B, Cl, T), ``word_mask`` (B, T, 1) -> (B, HW, Cv), (B, Cl, T)."""
        b, hw, _ = x.shape
        m, h = word_mask.transpose(1, 2), self.num_heads  # (B, 1, T)
        xc = x.transpose(1, 2)
        t = words.shape[-1]
        q = self.query(xc).transpose(1, 2).reshape(b, hw, h, -1).transpose(1, 2)  # (B, h, HW, c)
        k = (self.key(words) * m).reshape(b, h, -1, t)
        v = (self.value(words) * m).reshape(b, h, -1, t)
        logits = q @ k * self.v_channels ** -0.5 + (1e4 * m[:, None] - 1e4)  # (B, h, HW, T)
        vis = (logits.softmax(-1) @ v.transpose(2, 3)).transpose(1, 2).reshape(b, hw, self.v_channels)
        vis = self.W(vis.transpose(1, 2)).transpose(1, 2)
        pix = self.sym_value(xc).reshape(b, h, -1, hw)  # (B, h, cl, HW)
        lang = (logits.transpose(2, 3).softmax(-1) @ pix.transpose(2, 3))  # (B, h, T, cl)
        lang = lang.transpose(1, 2).reshape(b, t, self.l_channels).transpose(1, 2) * m
        return vis, self.sym_W(lang)


class VLBA(nn.Module):
    """Vision-language bidirectional attention: projections of both sides, the shared attention, and a
    two-layer 1x1 MLP fusing each side with what it gathered from the other (mm_v, mm_ℓ)."""

    def __init__(self, dim: int, l_channels: int, num_heads: int = 1, dropout: float = 0.0) -> None:
        super().__init__()
        self.vis_project = nn.Sequential(nn.Conv1d(dim, dim, 1), nn.GELU(), nn.Dropout(dropout))
        self.lang_project = nn.Sequential(nn.Conv1d(l_channels, l_channels, 1), nn.GELU(), nn.Dropout(dropout))
        self.image_lang_att = VisionLanguageAttention(dim, l_channels, num_heads)
        self.project_mm = nn.Sequential(nn.Conv1d(2 * dim, dim, 1), nn.GELU(), nn.Dropout(dropout),
                                        nn.Conv1d(dim, dim, 1), nn.GELU(), nn.Dropout(dropout))
        self.sym_project_mm = nn.Sequential(nn.Conv1d(2 * l_channels, l_channels, 1), nn.GELU(), nn.Dropout(dropout),
                                            nn.Conv1d(l_channels, l_channels, 1), nn.GELU(), nn.Dropout(dropout))

    def forward(self, x: Tensor, words: Tensor, word_mask: Tensor) -> tuple[Tensor, Tensor]:
        """Returns mm_v (B, HW, C) and mm_ℓ (B, Cl, T), the latter zero on padded words."""
        m = word_mask.transpose(1, 2)
        vis = self.vis_project(x.transpose(1, 2))
        lang = self.lang_project(words) * m
        vis_aux, lang_aux = self.image_lang_att(x, words, word_mask)
        mm_v = self.project_mm(torch.cat([vis, vis_aux.transpose(1, 2)], 1)).transpose(1, 2)
        mm_l = self.sym_project_mm(torch.cat([lang, lang_aux * m], 1)) * m
        return mm_v, mm_l


def zero_gate(dim: int) -> nn.Sequential:
    """Linear-ReLU-Linear-Tanh without biases, zero-initialised: the fusion starts as the identity."""
    gate = nn.Sequential(nn.Linear(dim, dim, bias=False), nn.ReLU(), nn.Linear(dim, dim, bias=False), nn.Tanh())
    nn.init.zeros_(gate[0].weight)
    nn.init.zeros_(gate[2].weight)
    return gate


# --------------------------------------------------------------------------------------------- Swin


def _pad_then_shift_attn(self: nn.Module, x: Tensor) -> Tensor:
    """(Shifted) window attention of a timm ``SwinTransformerBlock`` as the original Swin code computes it:
    pad to whole windows first, then roll, with the shift mask of the padded map."""
    from timm.models.swin_transformer import window_partition, window_reverse

    b, h, w, c = x.shape
    wh, ww = self.window_size
    x = F.pad(x, (0, 0, 0, (ww - w % ww) % ww, 0, (wh - h % wh) % wh))
    hp, wp = x.shape[1:3]
    sh, sw = self.shift_size
    mask = None
    if sh or sw:
        x = torch.roll(x, shifts=(-sh, -sw), dims=(1, 2))
        mask = self.get_attn_mask(x)
    windows = window_partition(x, self.window_size).view(-1, self.window_area, c)
    x = window_reverse(self.attn(windows, mask=mask).view(-1, wh, ww, c), self.window_size, hp, wp)
    if sh or sw:
        x = torch.roll(x, shifts=(sh, sw), dims=(1, 2))
    return x[:, :h, :w].contiguous()


class MultiModalSwin(nn.Module):
    """timm's Swin Transformer with a VLBA after the blocks of every stage (before the next patch merging):
    X ← X + gate(mm_v)·mm_v, L ← (L + gate(mm_ℓ)·mm_ℓ)·m; stage i outputs LayerNorm(mm_v) (as LAVT's PWAM)."""

    def __init__(self, embed_dim: int, depths: Sequence[int], num_heads: Sequence[int], window_size: int,
                 drop_path: float, l_channels: int, fusion_heads: Sequence[int], fusion_dropout: float = 0.0,
                 img_size: int = 480, padding: str = "pad_then_shift", gate_init: str = "zero") -> None:
        super().__init__()
        from timm.models.swin_transformer import SwinTransformer

        self.swin = SwinTransformer(img_size=img_size, patch_size=4, embed_dim=embed_dim, depths=tuple(depths),
                                    num_heads=tuple(num_heads), window_size=window_size, drop_path_rate=drop_path,
                                    num_classes=0, always_partition=True, strict_img_size=False)
        self.swin.norm = nn.Identity()  # the classifier's norm; the stages have their own output norms
        if padding == "pad_then_shift":
            for stage in self.swin.layers:
                for blk in stage.blocks:
                    blk._attn = types.MethodType(_pad_then_shift_attn, blk)
        dims = [embed_dim * 2 ** i for i in range(len(depths))]
        self.fusions = nn.ModuleList(VLBA(d, l_channels, f, fusion_dropout) for d, f in zip(dims, fusion_heads, strict=True))
        self.res_gates = nn.ModuleList(zero_gate(d) for d in dims)
        self.sym_res_gates = nn.ModuleList(zero_gate(l_channels) for _ in dims)
        self.norms = nn.ModuleList(nn.LayerNorm(d) for d in dims)
        self.dims = dims
        if gate_init == "trunc_normal":  # the official init_weights re-initialises every Linear, gates included
            for gate in [*self.res_gates, *self.sym_res_gates]:
                for m in gate:
                    if isinstance(m, nn.Linear):
                        nn.init.trunc_normal_(m.weight, std=0.02)

    def forward(self, image: Tensor, words: Tensor, word_mask: Tensor) -> tuple[list[Tensor], Tensor, Tensor]:
        """``image`` (B, 3, H, W), ``words`` (B, Cl, T), ``word_mask`` (B, T, 1). Returns the 4 stage maps
        (B, C_i, H/2^(i+2), W/2^(i+2)), the last stage's mm_ℓ (what LGFormer decodes with) and the updated L."""
        x = self.swin.patch_embed(image)  # (B, H/4, W/4, C) channels-last
        m = word_mask.transpose(1, 2)
        outs, mm_l = [], words
        for i, stage in enumerate(self.swin.layers):
            x = stage(x)
            b, h, w, c = x.shape
            flat = x.reshape(b, h * w, c)
            mm_v, mm_l = self.fusions[i](flat, words, word_mask)
            flat = flat + self.res_gates[i](mm_v) * mm_v
            lt = mm_l.transpose(1, 2)
            words = (words + (self.sym_res_gates[i](lt) * lt).transpose(1, 2)) * m
            outs.append(self.norms[i](mm_v).transpose(1, 2).reshape(b, c, h, w))
            x = flat.view(b, h, w, c)
        return outs, mm_l, words


# --------------------------------------------------------------------------------------------- decoders


def sine_position_encoding(x: Tensor, num_feats: int, temperature: float = 10000.0) -> Tensor:
    """DETR's normalised 2-D sine encoding (scale 2π) of a (B, C, H, W) map: (B, 2·num_feats, H, W), y first."""
    b, _, h, w = x.shape
    eps, scale = 1e-6, 2 * math.pi
    y = torch.arange(1, h + 1, dtype=torch.float32, device=x.device)
    xx = torch.arange(1, w + 1, dtype=torch.float32, device=x.device)
    y = (y / (h + eps) * scale)[:, None].expand(h, w)
    xx = (xx / (w + eps) * scale)[None, :].expand(h, w)
    dim_t = temperature ** (2 * (torch.arange(num_feats, dtype=torch.float32, device=x.device) // 2) / num_feats)

    def enc(v: Tensor) -> Tensor:
        p = v[..., None] / dim_t
        return torch.stack((p[..., 0::2].sin(), p[..., 1::2].cos()), dim=3).flatten(2)

    pos = torch.cat((enc(y), enc(xx)), dim=2).permute(2, 0, 1)
    return pos[None].expand(b, -1, -1, -1)


class CrossAttentionLayer(nn.Module):
    """Post-norm cross-attention + FFN (LGFormer ``TransformerDecoderLayer``): queries of width
    ``d_model`` attend to keys/values of width ``kdim``; positions are added to queries and keys."""

    def __init__(self, d_model: int, kdim: int, nhead: int = 8, dim_feedforward: int = 2048, dropout: float = 0.0) -> None:
        super().__init__()
        self.cross_attn = nn.MultiheadAttention(d_model, nhead, dropout=dropout, kdim=kdim, vdim=kdim, batch_first=True)
        self.ffn = nn.Sequential(nn.Linear(d_model, dim_feedforward), nn.ReLU(True), nn.Dropout(dropout),
                                 nn.Linear(dim_feedforward, d_model))
        self.norm_ca, self.norm_ffn = nn.LayerNorm(d_model), nn.LayerNorm(d_model)
        self.dropout_ca, self.dropout_ffn = nn.Dropout(dropout), nn.Dropout(dropout)
        for p in self.parameters():
            if p.dim() > 1:
                nn.init.xavier_uniform_(p)

    def forward(self, query: Tensor, key: Tensor, key_pos: Tensor | None, query_pos: Tensor | None,
                key_mask: Tensor | None = None) -> Tensor:
        """Batch-first (B, Lq, d) and (B, Lk, kdim); ``key_mask`` True on keys to ignore."""
        q = query if query_pos is None else query + query_pos
        k = key if key_pos is None else key + key_pos
        query = self.norm_ca(query + self.dropout_ca(self.cross_attn(q, k, key, key_padding_mask=key_mask,
                                                                     need_weights=False)[0]))
        return self.norm_ffn(query + self.dropout_ffn(self.ffn(query)))


class DeformableEncoderLayer(nn.Module):
    """Mask2Former's MSDeformAttn encoder layer: deformable self-attention over all levels + FFN, post-norm."""

    def __init__(self, d_model: int, d_ffn: int, n_levels: int, n_heads: int, n_points: int, dropout: float = 0.0) -> None:
        super().__init__()
        self.self_attn = MSDeformAttn(d_model, n_levels, n_heads, n_points)
        self.dropout1, self.norm1 = nn.Dropout(dropout), nn.LayerNorm(d_model)
        self.linear1, self.linear2 = nn.Linear(d_model, d_ffn), nn.Linear(d_ffn, d_model)
        self.dropout2, self.dropout3, self.norm2 = nn.Dropout(dropout), nn.Dropout(dropout), nn.LayerNorm(d_model)

    def forward(self, src: Tensor, pos: Tensor, reference_points: Tensor, spatial_shapes: Tensor,
                level_start_index: Tensor) -> Tensor:
        src = self.norm1(src + self.dropout1(self.self_attn(src + pos, reference_points, src, spatial_shapes,
                                                             level_start_index)))
        return self.norm2(src + self.dropout3(self.linear2(self.dropout2(F.relu(self.linear1(src))))))


class PixelDecoder(nn.Module):
    """MSDeformAttn encoder over strides 8/16/32 (each layer followed by pixel-to-word cross-attention
    with a learned word-position embedding), then an FPN merge with stride 4 and the 1x1 mask-feature conv."""

    def __init__(self, in_channels: Sequence[int], text_dim: int, text_len: int, conv_dim: int = 256,
                 enc_layers: int = 6, heads: int = 8, ffn: int = 1024, points: int = 4, word_heads: int = 8,
                 word_ffn: int = 2048, gn_groups: int = 32) -> None:
        super().__init__()
        self.num_levels = 3
        # transformer levels from the coarsest (stride 32) to stride 8, as the official input_proj order
        self.input_proj = nn.ModuleList(nn.Sequential(nn.Conv2d(c, conv_dim, 1), nn.GroupNorm(gn_groups, conv_dim))
                                        for c in list(in_channels[1:])[::-1])
        for proj in self.input_proj:
            nn.init.xavier_uniform_(proj[0].weight, gain=1)
            nn.init.constant_(proj[0].bias, 0)
        self.layers = nn.ModuleList(DeformableEncoderLayer(conv_dim, ffn, self.num_levels, heads, points)
                                    for _ in range(enc_layers))
        word_layer = CrossAttentionLayer(conv_dim, text_dim, word_heads, word_ffn)
        self.cross_attn_layers = nn.ModuleList(copy.deepcopy(word_layer) for _ in range(enc_layers))
        self.key_embed = nn.Embedding(text_len, text_dim)
        self.level_embed = nn.Parameter(torch.empty(self.num_levels, conv_dim))
        for part in (self.layers, self.cross_attn_layers, self.key_embed):
            for p in part.parameters():
                if p.dim() > 1:
                    nn.init.xavier_uniform_(p)
        for m in self.layers.modules():
            if isinstance(m, MSDeformAttn):
                m.reset_parameters()
        nn.init.normal_(self.level_embed)
        self.adapter_1 = nn.Sequential(nn.Conv2d(in_channels[0], conv_dim, 1, bias=False), nn.GroupNorm(gn_groups, conv_dim))
        self.layer_1 = nn.Sequential(nn.Conv2d(conv_dim, conv_dim, 3, padding=1, bias=False),
                                     nn.GroupNorm(gn_groups, conv_dim), nn.ReLU(inplace=True))
        nn.init.kaiming_uniform_(self.adapter_1[0].weight, a=1)
        nn.init.kaiming_uniform_(self.layer_1[0].weight, a=1)
        self.mask_features = nn.Conv2d(conv_dim, conv_dim, 1)
        nn.init.kaiming_uniform_(self.mask_features.weight, a=1)
        nn.init.constant_(self.mask_features.bias, 0)
        self.conv_dim = conv_dim

    @staticmethod
    def reference_points(shapes: Sequence[tuple[int, int]], device: torch.device) -> Tensor:
        """Pixel centres of every level, normalised to [0, 1]: (1, S, L, 2) as (x, y) (no padding)."""
        refs = []
        for h, w in shapes:
            ry, rx = torch.meshgrid(torch.linspace(0.5, h - 0.5, h, device=device),
                                    torch.linspace(0.5, w - 0.5, w, device=device), indexing="ij")
            refs.append(torch.stack((rx.reshape(-1) / w, ry.reshape(-1) / h), -1))
        return torch.cat(refs, 0)[None, :, None].expand(-1, -1, len(shapes), -1)

    def forward(self, feats: Sequence[Tensor], words: Tensor, word_mask: Tensor) -> tuple[Tensor, list[Tensor]]:
        """``feats``: the 4 stage maps; ``words`` (B, T, Cl); ``word_mask`` (B, T, 1). Returns the mask
        features (B, C, H/4, W/4) and the 3 encoded levels (strides 32, 16, 8). Runs in fp32 (autocast off,
        as the official decoder)."""
        with torch.autocast(device_type=words.device.type, enabled=False):
            feats = [f.float() for f in feats]
            words = words.float()
            srcs = [proj(f) for proj, f in zip(self.input_proj, feats[1:][::-1], strict=True)]
            shapes = [tuple(s.shape[-2:]) for s in srcs]
            b = srcs[0].shape[0]
            src = torch.cat([s.flatten(2).transpose(1, 2) for s in srcs], 1)
            pos = torch.cat([sine_position_encoding(s, self.conv_dim // 2).flatten(2).transpose(1, 2)
                             + self.level_embed[i].view(1, 1, -1) for i, s in enumerate(srcs)], 1)
            spatial = torch.as_tensor(shapes, dtype=torch.long, device=src.device)
            starts = torch.cat((spatial.new_zeros(1), spatial.prod(1).cumsum(0)[:-1]))
            refs = self.reference_points(shapes, src.device).expand(b, -1, -1, -1)
            key_pos = self.key_embed(torch.arange(words.shape[1], device=words.device))[None].expand(b, -1, -1)
            pad = ~word_mask.squeeze(-1).bool()
            out = src
            for layer, word_layer in zip(self.layers, self.cross_attn_layers, strict=True):
                out = layer(out, pos, refs, spatial, starts)
                out = word_layer(out, words, key_pos, pos, key_mask=pad)
            levels = [y.transpose(1, 2).reshape(b, self.conv_dim, h, w)
                      for y, (h, w) in zip(out.split([h * w for h, w in shapes], 1), shapes, strict=True)]
            lateral = self.adapter_1(feats[0])
            fpn = self.layer_1(lateral + F.interpolate(levels[-1], size=lateral.shape[-2:], mode="bilinear",
                                                       align_corners=False))
            return self.mask_features(fpn), levels


class QueryDecoder(nn.Module):
    """The linguistic query ("center embedding") decoder: cross-attention-only layers cycling over the
    3 levels (sine positions + level embeddings on the keys, a learned query position)."""

    def __init__(self, d_model: int, mask_dim: int, num_layers: int = 6, nhead: int = 8, dim_ffn: int = 2048) -> None:
        super().__init__()
        layer = CrossAttentionLayer(d_model, mask_dim, nhead, dim_ffn)
        self.layers = nn.ModuleList(copy.deepcopy(layer) for _ in range(num_layers))  # identical init (official clones)
        self.query_embed = nn.Embedding(1, d_model)
        self.level_embed = nn.Embedding(3, mask_dim)
        self.mask_dim = mask_dim

    def forward(self, query: Tensor, levels: Sequence[Tensor]) -> list[Tensor]:
        """``query`` (B, 1, D); returns the initial and every layer's state, each (B, 1, D)."""
        b = query.shape[0]
        pos = [sine_position_encoding(f, self.mask_dim // 2).flatten(2).transpose(1, 2) for f in levels]
        qpos = self.query_embed(torch.zeros(b, 1, dtype=torch.long, device=query.device))
        states = [query]
        for i, layer in enumerate(self.layers):
            idx = i % len(levels)
            vis = levels[idx].flatten(2).transpose(1, 2) + self.level_embed.weight[idx][None, None]
            query = layer(query, vis, pos[idx], qpos)
            states.append(query)
        return states


class AlignFormer(nn.Module):
    """Image + expression -> a mask logit map per query state (stride 4); see the module docstring."""

    def __init__(self, text_encoder: nn.Module, embed_dim: int = 128, depths: Sequence[int] = (2, 2, 18, 2),
                 num_heads: Sequence[int] = (4, 8, 16, 32), window_size: int = 12, drop_path: float = 0.3,
                 text_dim: int = 768, text_len: int = 20, fusion_heads: Sequence[int] = (1, 1, 1, 1),
                 fusion_dropout: float = 0.0, mask_dim: int = 256, enc_layers: int = 6, enc_heads: int = 8,
                 enc_ffn: int = 1024, enc_points: int = 4, word_attn_heads: int = 8, word_attn_ffn: int = 2048,
                 gn_groups: int = 32, dec_layers: int = 6, dec_heads: int = 8, dec_ffn: int = 2048,
                 img_size: int = 480, swin_padding: str = "pad_then_shift", contrast_dim: int | None = None,
                 gate_init: str = "zero") -> None:
        super().__init__()
        self.text_encoder = text_encoder
        self.backbone = MultiModalSwin(embed_dim, depths, num_heads, window_size, drop_path, text_dim, fusion_heads,
                                       fusion_dropout, img_size, swin_padding, gate_init)
        dims = self.backbone.dims
        self.pixel_decoder = PixelDecoder(dims, text_dim, text_len, mask_dim, enc_layers, enc_heads, enc_ffn,
                                          enc_points, word_attn_heads, word_attn_ffn, gn_groups)
        self.txt_proj = nn.Linear(text_dim, text_dim)
        self.query_decoder = QueryDecoder(text_dim, mask_dim, dec_layers, dec_heads, dec_ffn)
        self.kernel_head = nn.Sequential(nn.Linear(text_dim, text_dim), nn.ReLU(True), nn.Linear(text_dim, text_dim),
                                         nn.ReLU(True), nn.Linear(text_dim, mask_dim + 1))
        # anchor projection of the cross-modal instance contrastive loss (zsk reconstruction)
        self.contrast_proj = nn.Linear(text_dim, contrast_dim) if contrast_dim else None

    def forward(self, image: Tensor, input_ids: Tensor, attention_mask: Tensor) -> dict[str, Tensor | list[Tensor]]:
        """``image`` (B, 3, H, W), ``input_ids``/``attention_mask`` (B, T). Returns ``logits`` (list of
        (B, 1, H/4, W/4), one per query state), ``mask_features`` (B, C, H/4, W/4), ``queries`` (B, 1, D)
        per state."""
        words = self.text_encoder(input_ids=input_ids, attention_mask=attention_mask)[0]  # (B, T, D)
        mask = attention_mask[..., None].to(words.dtype)
        feats, mm_l, _ = self.backbone(image, words.transpose(1, 2), mask)
        return self.decode(feats, mm_l.transpose(1, 2), mask)

    def decode(self, feats: Sequence[Tensor], words: Tensor, mask: Tensor) -> dict[str, Tensor | list[Tensor]]:
        """Pixel decoder, the center embedding (masked mean of the words, Linear), its refinement and the
        dynamic 1x1 kernels: ``feats`` the 4 stage maps, ``words`` (B, T, D), ``mask`` (B, T, 1)."""
        mask_features, levels = self.pixel_decoder(feats, words, mask)
        pooled = (words.float() * mask).sum(1, keepdim=True) / mask.sum(1, keepdim=True).clamp(min=1e-6)
        queries = self.query_decoder(self.txt_proj(pooled), levels)
        logits = []
        for q in queries:
            kernel = self.kernel_head(q)
            weight, bias = kernel[..., :-1], kernel[..., -1]
            logits.append(torch.einsum("bchw,bqc->bqhw", mask_features, weight) + bias[..., None, None])
        return {"logits": logits, "mask_features": mask_features, "queries": queries}
