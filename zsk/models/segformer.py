"""SegFormer's Mix Transformer encoder (MiT-B0..B5) that also returns attention maps, and the simplified
all-MLP decoder of the SATS code base.

Xie et al., "SegFormer: Simple and Efficient Design for Semantic Segmentation with Transformers",
NeurIPS 2021 (NVlabs/SegFormer, ``mmseg/models/backbones/mix_transformer.py``); the attention-returning
variant and the decoder without BN/activation follow QIU023/SATS_Continual_Semantic_Seg
(``modules/segformer_offical/mix_transformer.py``, ``modules/segformer.py`` ``SegFormer_Head``).
Parameter names match the official MiT, so ImageNet ``mit_b*.pth`` files load without renaming.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import Path

import torch
import torch.nn.functional as F
from timm.layers import DropPath, trunc_normal_
from torch import Tensor, nn

from zsk.core.checkpoint import read_state_dict
from zsk.core.errors import ZskError


@dataclass(frozen=True)
class MiTConfig:
    """Widths, heads, depths and spatial-reduction ratios of the four stages (SegFormer Table 6)."""

    embed_dims: tuple[int, int, int, int] = (64, 128, 320, 512)
    num_heads: tuple[int, int, int, int] = (1, 2, 5, 8)
    depths: tuple[int, int, int, int] = (3, 4, 6, 3)
    sr_ratios: tuple[int, int, int, int] = (8, 4, 2, 1)
    mlp_ratio: float = 4.0


# The released MiT variants (NVlabs/SegFormer mix_transformer.py: mit_b0 ... mit_b5).
MIT_CONFIGS: dict[str, MiTConfig] = {
    "mit_b0": MiTConfig((32, 64, 160, 256), depths=(2, 2, 2, 2)),
    "mit_b1": MiTConfig(depths=(2, 2, 2, 2)),
    "mit_b2": MiTConfig(depths=(3, 4, 6, 3)),
    "mit_b3": MiTConfig(depths=(3, 4, 18, 3)),
    "mit_b4": MiTConfig(depths=(3, 8, 27, 3)),
    "mit_b5": MiTConfig(depths=(3, 6, 40, 3)),
}


def _init_weights(m: nn.Module) -> None:
    """The official initialisation: truncated-normal linears, unit LayerNorms, He-normal convolutions."""
    if isinstance(m, nn.Linear):
        trunc_normal_(m.weight, std=0.02)
        if m.bias is not None:
            nn.init.zeros_(m.bias)
    elif isinstance(m, nn.LayerNorm):
        nn.init.ones_(m.weight)
        nn.init.zeros_(m.bias)
    elif isinstance(m, nn.Conv2d):
        fan_out = m.kernel_size[0] * m.kernel_size[1] * m.out_channels // m.groups
        m.weight.data.normal_(0, math.sqrt(2.0 / fan_out))
        if m.bias is not None:
            m.bias.data.zero_()


class EfficientAttention(nn.Module):
    """Multi-head attention over a spatially reduced key/value sequence (SegFormer eq. 2).

    Returns the output and the attention matrix A = softmax(QK^T / sqrt(d)) of shape [B, h, N, N / sr^2].
    """

    def __init__(self, dim: int, num_heads: int, sr_ratio: int, qkv_bias: bool = True) -> None:
        super().__init__()
        if dim % num_heads:
            raise ValueError(f"dim {dim} is not divisible by num_heads {num_heads}")
        self.num_heads = num_heads
        self.scale = (dim // num_heads) ** -0.5
        self.q = nn.Linear(dim, dim, bias=qkv_bias)
        self.kv = nn.Linear(dim, dim * 2, bias=qkv_bias)
        self.proj = nn.Linear(dim, dim)
        self.sr_ratio = sr_ratio
        if sr_ratio > 1:
            self.sr = nn.Conv2d(dim, dim, kernel_size=sr_ratio, stride=sr_ratio)
            self.norm = nn.LayerNorm(dim)

    def forward(self, x: Tensor, h: int, w: int) -> tuple[Tensor, Tensor]:
        b, n, c = x.shape
        q = self.q(x).reshape(b, n, self.num_heads, c // self.num_heads).permute(0, 2, 1, 3)
        if self.sr_ratio > 1:
            x = self.sr(x.transpose(1, 2).reshape(b, c, h, w)).reshape(b, c, -1).transpose(1, 2)
            x = self.norm(x)
        kv = self.kv(x).reshape(b, -1, 2, self.num_heads, c // self.num_heads).permute(2, 0, 3, 1, 4)
        attn = (q @ kv[0].transpose(-2, -1) * self.scale).softmax(dim=-1)
        out = (attn @ kv[1]).transpose(1, 2).reshape(b, n, c)
        return self.proj(out), attn


class DWConv(nn.Module):
    """3x3 depth-wise convolution on the token grid (the Mix-FFN's positional cue)."""

    def __init__(self, dim: int) -> None:
        super().__init__()
        self.dwconv = nn.Conv2d(dim, dim, 3, 1, 1, groups=dim)

    def forward(self, x: Tensor, h: int, w: int) -> Tensor:
        b, n, c = x.shape
        return self.dwconv(x.transpose(1, 2).reshape(b, c, h, w)).flatten(2).transpose(1, 2)


class MixFFN(nn.Module):
    """Linear -> depth-wise 3x3 conv -> GELU -> linear (SegFormer eq. 3)."""

    def __init__(self, dim: int, hidden: int) -> None:
        super().__init__()
        self.fc1 = nn.Linear(dim, hidden)
        self.dwconv = DWConv(hidden)
        self.act = nn.GELU()
        self.fc2 = nn.Linear(hidden, dim)

    def forward(self, x: Tensor, h: int, w: int) -> Tensor:
        return self.fc2(self.act(self.dwconv(self.fc1(x), h, w)))


class MiTBlock(nn.Module):
    """Pre-norm transformer block: efficient attention then Mix-FFN, each with stochastic depth."""

    def __init__(self, dim: int, num_heads: int, mlp_ratio: float, sr_ratio: int, drop_path: float) -> None:
        super().__init__()
        self.norm1 = nn.LayerNorm(dim, eps=1e-6)
        self.attn = EfficientAttention(dim, num_heads, sr_ratio)
        self.drop_path = DropPath(drop_path) if drop_path > 0 else nn.Identity()
        self.norm2 = nn.LayerNorm(dim, eps=1e-6)
        self.mlp = MixFFN(dim, int(dim * mlp_ratio))

    def forward(self, x: Tensor, h: int, w: int) -> tuple[Tensor, Tensor]:
        y, attn = self.attn(self.norm1(x), h, w)
        x = x + self.drop_path(y)
        x = x + self.drop_path(self.mlp(self.norm2(x), h, w))
        return x, attn


class OverlapPatchEmbed(nn.Module):
    """Overlapping patch merging: a strided convolution (7x7/4 or 3x3/2) and LayerNorm."""

    def __init__(self, patch_size: int, stride: int, in_chans: int, embed_dim: int) -> None:
        super().__init__()
        self.proj = nn.Conv2d(in_chans, embed_dim, patch_size, stride, padding=patch_size // 2)
        self.norm = nn.LayerNorm(embed_dim)

    def forward(self, x: Tensor) -> tuple[Tensor, int, int]:
        x = self.proj(x)
        _, _, h, w = x.shape
        return self.norm(x.flatten(2).transpose(1, 2)), h, w


class MixVisionTransformer(nn.Module):
    """MiT encoder: four stages at 1/4 .. 1/32 resolution.

    ``forward`` returns the four feature maps [B, C_i, H_i, W_i] and the attention matrix of the last
    block of each stage [B, h_i, N_i, M_i] (the maps SATS transfers).
    """

    def __init__(self, cfg: MiTConfig = MIT_CONFIGS["mit_b2"], in_chans: int = 3, drop_path_rate: float = 0.1) -> None:
        super().__init__()
        self.cfg = cfg
        dims = cfg.embed_dims
        dpr = [x.item() for x in torch.linspace(0, drop_path_rate, sum(cfg.depths))]
        cur = 0
        for i in range(4):
            embed = OverlapPatchEmbed(7 if i == 0 else 3, 4 if i == 0 else 2, in_chans if i == 0 else dims[i - 1],
                                      dims[i])
            blocks = nn.ModuleList([MiTBlock(dims[i], cfg.num_heads[i], cfg.mlp_ratio, cfg.sr_ratios[i], dpr[cur + j])
                                    for j in range(cfg.depths[i])])
            cur += cfg.depths[i]
            setattr(self, f"patch_embed{i + 1}", embed)
            setattr(self, f"block{i + 1}", blocks)
            setattr(self, f"norm{i + 1}", nn.LayerNorm(dims[i], eps=1e-6))
        self.apply(_init_weights)

    def forward(self, x: Tensor) -> tuple[list[Tensor], list[Tensor]]:
        b = x.shape[0]
        feats, attns = [], []
        for i in range(1, 5):
            x, h, w = getattr(self, f"patch_embed{i}")(x)
            attn = x.new_zeros(0)
            for blk in getattr(self, f"block{i}"):
                x, attn = blk(x, h, w)
            attns.append(attn)
            x = getattr(self, f"norm{i}")(x).reshape(b, h, w, -1).permute(0, 3, 1, 2).contiguous()
            feats.append(x)
        return feats, attns


def load_mit_weights(model: MixVisionTransformer, path: str | Path) -> dict[str, list[str]]:
    """ImageNet MiT weights from a local ``mit_b*.pth`` (a state dict, optionally under ``state_dict``),
    loaded non-strictly as the official code does (the ImageNet ``head.*`` is dropped). A missing file, a
    file of another variant (wrong shapes) or one sharing no key with the encoder is a ``ZskError``."""
    p = Path(path).expanduser()
    state = read_state_dict(p, "MiT weights", "download mit_b2.pth (NVlabs/SegFormer ImageNet-1K weights) and set "
                            "model.pretrained to its path, or null for random weights")
    own = model.state_dict()
    wrong = [k for k, v in state.items() if k in own and tuple(v.shape) != tuple(own[k].shape)]
    if wrong:
        raise ZskError(f"MiT weights {p} do not fit the encoder ({wrong[0]}: {tuple(state[wrong[0]].shape)} vs "
                       f"{tuple(own[wrong[0]].shape)}); use the file of the recipe's variant (model.encoder)")
    shared = [k for k in state if k in own]
    if not shared:
        raise ZskError(f"MiT weights {p} share no parameter name with the MiT encoder; give an official mit_b*.pth")
    model.load_state_dict({k: state[k] for k in shared}, strict=False)
    return {"missing": [k for k in own if k not in state], "unused": [k for k in state if k not in own]}


class SegFormerHead(nn.Module):
    """The simplified all-MLP decoder of the SATS code: per stage a 1x1 conv to ``decoder_dim`` and nearest
    upsampling by 2^i to 1/4 resolution, concatenation, one 1x1 conv (no BN, no activation)."""

    def __init__(self, in_dims: tuple[int, ...], decoder_dim: int = 256) -> None:
        super().__init__()
        self.to_fused = nn.ModuleList([nn.Sequential(nn.Conv2d(d, decoder_dim, 1), nn.Upsample(scale_factor=2 ** i))
                                       for i, d in enumerate(in_dims)])
        self.to_segmentation = nn.Conv2d(len(in_dims) * decoder_dim, decoder_dim, 1)

    def forward(self, feats: list[Tensor]) -> Tensor:
        fused = [f(x) for x, f in zip(feats, self.to_fused, strict=True)]
        size = fused[0].shape[-2:]  # inputs not divisible by 32: align every stage to stage 1's grid
        fused = [x if x.shape[-2:] == size else F.interpolate(x, size=size, mode="nearest") for x in fused]
        return self.to_segmentation(torch.cat(fused, dim=1))


# Hugging Face SegFormer encoder names -> the official MiT names: transformers >= 5 (``stages.i.blocks.j``)
# and the names of hub checkpoints / transformers 4 (``encoder.block.i.j``); ``{i}`` is the 0-based stage.
_HF_RULES: tuple[tuple[str, str], ...] = (
    (r"stages\.(\d+)\.patch_embeddings\.proj\.", "patch_embed{i}.proj."),
    (r"stages\.(\d+)\.patch_embeddings\.layer_norm\.", "patch_embed{i}.norm."),
    (r"stages\.(\d+)\.blocks\.(\d+)\.layernorm_before\.", "block{i}.{j}.norm1."),
    (r"stages\.(\d+)\.blocks\.(\d+)\.attention\.q_proj\.", "block{i}.{j}.attn.q."),
    (r"stages\.(\d+)\.blocks\.(\d+)\.attention\.([kv])_proj\.", "block{i}.{j}.attn.{kv}."),
    (r"stages\.(\d+)\.blocks\.(\d+)\.attention\.o_proj\.", "block{i}.{j}.attn.proj."),
    (r"stages\.(\d+)\.blocks\.(\d+)\.attention\.sequence_reduction\.sequence_reduction\.", "block{i}.{j}.attn.sr."),
    (r"stages\.(\d+)\.blocks\.(\d+)\.attention\.sequence_reduction\.layer_norm\.", "block{i}.{j}.attn.norm."),
    (r"stages\.(\d+)\.blocks\.(\d+)\.layernorm_after\.", "block{i}.{j}.norm2."),
    (r"stages\.(\d+)\.blocks\.(\d+)\.mlp\.", "block{i}.{j}.mlp."),
    (r"stages\.(\d+)\.layer_norm\.", "norm{i}."),
    (r"encoder\.patch_embeddings\.(\d+)\.proj\.", "patch_embed{i}.proj."),
    (r"encoder\.patch_embeddings\.(\d+)\.layer_norm\.", "patch_embed{i}.norm."),
    (r"encoder\.block\.(\d+)\.(\d+)\.layer_norm_1\.", "block{i}.{j}.norm1."),
    (r"encoder\.block\.(\d+)\.(\d+)\.attention\.self\.query\.", "block{i}.{j}.attn.q."),
    (r"encoder\.block\.(\d+)\.(\d+)\.attention\.self\.(key|value)\.", "block{i}.{j}.attn.{kv}."),
    (r"encoder\.block\.(\d+)\.(\d+)\.attention\.self\.sr\.", "block{i}.{j}.attn.sr."),
    (r"encoder\.block\.(\d+)\.(\d+)\.attention\.self\.layer_norm\.", "block{i}.{j}.attn.norm."),
    (r"encoder\.block\.(\d+)\.(\d+)\.attention\.output\.dense\.", "block{i}.{j}.attn.proj."),
    (r"encoder\.block\.(\d+)\.(\d+)\.layer_norm_2\.", "block{i}.{j}.norm2."),
    (r"encoder\.block\.(\d+)\.(\d+)\.mlp\.dense1\.", "block{i}.{j}.mlp.fc1."),
    (r"encoder\.block\.(\d+)\.(\d+)\.mlp\.dense2\.", "block{i}.{j}.mlp.fc2."),
    (r"encoder\.block\.(\d+)\.(\d+)\.mlp\.dwconv\.", "block{i}.{j}.mlp.dwconv."),
    (r"encoder\.layer_norm\.(\d+)\.", "norm{i}."),
)


def mit_state_from_hf(state: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """A Hugging Face SegFormer encoder state dict (``SegformerModel`` or the ``segformer.`` part of a
    segmentation model, either naming) in the official MiT names; separate key and value projections are
    stacked into the MiT's ``kv`` layer (keys first). Decoder weights are dropped."""
    import re

    out: dict[str, torch.Tensor] = {}
    kv: dict[str, dict[str, torch.Tensor]] = {}
    for name, value in state.items():
        name = name.removeprefix("segformer.")
        for pattern, target in _HF_RULES:
            m = re.match(pattern, name)
            if m is None:
                continue
            groups = m.groups()
            new = target.format(i=int(groups[0]) + 1, j=groups[1] if len(groups) > 1 else "",
                                kv=groups[2][0] if len(groups) > 2 else "") + name[m.end():]
            if ".attn.k." in new or ".attn.v." in new:
                part = "k" if ".attn.k." in new else "v"
                kv.setdefault(new.replace(f".attn.{part}.", ".attn.kv."), {})[part] = value
            else:
                out[new] = value
            break
    for name, parts in kv.items():
        out[name] = torch.cat([parts["k"], parts["v"]], dim=0)
    return out


def load_hf_mit_weights(model: MixVisionTransformer, name_or_path: str) -> dict[str, list[str]]:
    """ImageNet MiT weights from a Hugging Face SegFormer encoder (a hub id such as ``nvidia/mit-b2`` in the
    local cache, or a ``save_pretrained`` folder), converted by :func:`mit_state_from_hf`."""
    from transformers import SegformerModel

    from zsk.models.hf import load_hf_model

    hf = load_hf_model(name_or_path, option="model.pretrained", loader=SegformerModel)
    state = mit_state_from_hf(hf.state_dict())
    own = model.state_dict()
    wrong = [k for k, v in state.items() if k in own and tuple(v.shape) != tuple(own[k].shape)]
    if wrong or not state:
        raise ZskError(f"Hugging Face model {name_or_path} does not fit the MiT encoder"
                       f"{f' ({wrong[0]})' if wrong else ''}; use the encoder of the recipe's variant (model.encoder)")
    model.load_state_dict(state, strict=False)
    return {"missing": [k for k in own if k not in state], "unused": []}
