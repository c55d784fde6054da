"""CLIP through open_clip: loading by name + tag or local file, tiny random configs, text embeddings.

Tasks that build on CLIP (zero-shot segmentation, retrieval, ...) get the model here, so that the
rules are the same everywhere: an open_clip model name (``ViT-B-16``) with a pretrained tag
(``openai``) or a local checkpoint file; a name from :data:`TINY_CONFIGS` builds a small random-weight
model of the same classes for tests and demos. Class text embeddings are computed once per
(model weights, class names, templates) and kept in the zsk cache.
"""

from __future__ import annotations

import os
import zipfile
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from torch import nn

from zsk.core.cache import Cache, default_cache, file_fingerprint
from zsk.core.errors import ZskError

# Prompt templates of ZegCLIP's `configs/_base_/datasets/text_embedding/get_embedding.ipynb`
# (ZiqinZhou66/ZegCLIP): "single" is the one template used for VOC, "multi" the 15 templates whose
# per-template normalised embeddings are averaged and re-normalised (COCO-Stuff, Context).
TEMPLATES: dict[str, tuple[str, ...]] = {
    "single": ("a photo of a {}",),
    "multi": (
        "a photo of a {}.",
        "a photo of a small {}.",
        "a photo of a medium {}.",
        "a photo of a large {}.",
        "This is a photo of a {}.",
        "This is a photo of a small {}.",
        "This is a photo of a medium {}.",
        "This is a photo of a large {}.",
        "a {} in the scene.",
        "a photo of a {} in the scene.",
        "There is a {} in the scene.",
        "There is the {} in the scene.",
        "This is a {} in the scene.",
        "This is the {} in the scene.",
        "This is one {} in the scene.",
    ),
}

# Tiny random-weight configs built with the same open_clip classes (CLIP, VisionTransformer,
# TextTransformer) as the real models. The vocabulary stays 49408 so the real tokenizer works.
TINY_CONFIGS: dict[str, dict] = {
    "tiny-vit-p8": {
        "embed_dim": 64,
        "quick_gelu": True,
        "vision_cfg": {"image_size": 64, "layers": 3, "width": 64, "head_width": 32, "patch_size": 8, "mlp_ratio": 2.0},
        "text_cfg": {"context_length": 77, "vocab_size": 49408, "width": 32, "heads": 2, "layers": 2},
    },
    "tiny-vit-p16": {
        "embed_dim": 64,
        "quick_gelu": True,
        "vision_cfg": {"image_size": 64, "layers": 2, "width": 64, "head_width": 32, "patch_size": 16, "mlp_ratio": 2.0},
        "text_cfg": {"context_length": 77, "vocab_size": 49408, "width": 32, "heads": 2, "layers": 2},
    },
}


def _open_clip():
    """Import open_clip, turning a broken install into a clear error."""
    try:
        import open_clip
    except Exception as e:  # an ImportError, or a torchvision whose C ops do not match torch
        raise ZskError(
            f"open_clip could not be imported ({type(e).__name__}: {e}); reinstall open_clip_torch and a "
            "torchvision built for the installed torch (pip install --force-reinstall torchvision)"
        ) from e
    return open_clip


@dataclass
class LoadedCLIP:
    """An open_clip model with its tokenizer and where its weights come from."""

    model: nn.Module
    tokenizer: object
    source: dict  # {"name", "pretrained", ...}: enough to rebuild the frozen weights
    random_init: bool


def _load_state_from_file(model: nn.Module, path: Path, name: str) -> None:
    """Load a local CLIP checkpoint: open_clip/HF state dict (.bin/.pt/.pth/.safetensors) or OpenAI TorchScript.

    OpenAI's checkpoints use the parameter names of open_clip's ``CLIP`` (open_clip's own OpenAI loader
    builds that class from them), store most weights in float16 (cast to the model's float32 here) and
    carry ``input_resolution``/``context_length``/``vocab_size`` entries, which are dropped.
    """
    if path.suffix == ".safetensors":
        from safetensors.torch import load_file

        state = load_file(str(path))
    elif zipfile.is_zipfile(path) and _is_torchscript(path):
        state = torch.jit.load(str(path), map_location="cpu").state_dict()
    else:
        try:
            state = torch.load(str(path), map_location="cpu", weights_only=True)
        except Exception as e:
            raise ZskError(f"{path}: not a readable CLIP checkpoint ({type(e).__name__}: {e})") from e
    if isinstance(state, dict) and "state_dict" in state and isinstance(state["state_dict"], dict):
        state = state["state_dict"]
    state = {k.removeprefix("module."): v for k, v in state.items() if torch.is_tensor(v)}
    for k in ("input_resolution", "context_length", "vocab_size"):  # OpenAI JIT extras
        state.pop(k, None)
    own = model.state_dict()
    # buffers the model does not save (open_clip's attn_mask) that a traced/scripted copy of it does save
    transient = {n for n, _ in model.named_buffers()} - set(own)
    state = {k: v for k, v in state.items() if k not in transient}
    missing = [k for k in own if k not in state]
    unexpected = [k for k in state if k not in own]
    shape_bad = [k for k in own if k in state and state[k].shape != own[k].shape]
    if missing or unexpected or shape_bad:
        detail = (missing[:3] and f"missing {missing[:3]}") or (unexpected[:3] and f"unexpected {unexpected[:3]}") or f"shape mismatch {shape_bad[:3]}"
        raise ZskError(f"{path}: does not match open_clip model '{name}' ({detail}); pass the checkpoint of that model")
    model.load_state_dict(state, strict=True)


def _is_torchscript(path: Path) -> bool:
    with zipfile.ZipFile(path) as z:
        return any(n.endswith("constants.pkl") or "/code/" in n for n in z.namelist())


def load_clip(name: str, pretrained: str | None, quick_gelu: bool | None = None) -> LoadedCLIP:
    """Build an open_clip model by name and load its weights from a tag or a local file.

    ``pretrained`` is an open_clip tag (``openai``, ``laion2b_s34b_b88k``; resolved from the local
    Hugging Face / open_clip cache, downloaded when online), a local checkpoint file, or None/"" for
    random weights (tiny configs in tests). ``quick_gelu`` defaults to what the tag asks for (OpenAI
    weights use QuickGELU).
    """
    open_clip = _open_clip()
    tokenizer_name = name if name not in TINY_CONFIGS else "ViT-B-16"
    if name in TINY_CONFIGS:
        from open_clip.model import CLIP

        cfg = dict(TINY_CONFIGS[name])
        model = CLIP(**cfg)
        random_init = True
        if pretrained:
            _load_state_from_file(model, _existing_file(pretrained, name), name)
            random_init = False
    else:
        if open_clip.get_model_config(name) is None:
            raise ZskError(
                f"unknown open_clip model '{name}'; choose one of {', '.join(sorted(TINY_CONFIGS))} or an "
                f"open_clip name such as ViT-B-16 (open_clip.list_models())"
            )
        if not pretrained:
            model = open_clip.create_model(name, pretrained=None, force_quick_gelu=bool(quick_gelu))
            random_init = True
        elif Path(pretrained).expanduser().exists() or os.sep in pretrained or pretrained.endswith((".pt", ".bin", ".pth", ".safetensors")):
            path = _existing_file(pretrained, name)
            model = open_clip.create_model(name, pretrained=None, force_quick_gelu=True if quick_gelu is None else quick_gelu)
            _load_state_from_file(model, path, name)
            random_init = False
        else:
            tag_cfg = open_clip.get_pretrained_cfg(name, pretrained)
            if not tag_cfg:
                raise ZskError(
                    f"unknown pretrained tag '{pretrained}' for open_clip model '{name}'; known tags: "
                    f"{', '.join(open_clip.list_pretrained_tags_by_model(name)) or 'none'}, or pass a local file "
                    "with --set model.clip.pretrained=/path/to/open_clip_pytorch_model.bin"
                )
            qg = tag_cfg.get("quick_gelu", False) if quick_gelu is None else quick_gelu
            try:
                model = open_clip.create_model(name, pretrained=pretrained, force_quick_gelu=qg)
            except Exception as e:
                raise ZskError(
                    f"CLIP weights for model '{name}' tag '{pretrained}' are not available locally and could not be "
                    f"downloaded ({type(e).__name__}); download them once (e.g. the Hugging Face repo "
                    f"{tag_cfg.get('hf_hub', '') or tag_cfg.get('url', '')}) and pass the file with "
                    "--set model.clip.pretrained=/path/to/open_clip_pytorch_model.bin (or OpenAI's ViT-B-16.pt)"
                ) from e
            random_init = False
    model.eval()
    tokenizer = open_clip.get_tokenizer(tokenizer_name)
    source = {"name": name, "pretrained": pretrained or None}
    if pretrained and Path(pretrained).expanduser().is_file():
        source["file"] = file_fingerprint(Path(pretrained).expanduser())
    return LoadedCLIP(model=model, tokenizer=tokenizer, source=source, random_init=random_init)


def _existing_file(pretrained: str, name: str) -> Path:
    path = Path(pretrained).expanduser()
    if not path.is_file():
        raise ZskError(
            f"CLIP checkpoint {path} for model '{name}' does not exist; pass an existing file with "
            "--set model.clip.pretrained=/path/to/open_clip_pytorch_model.bin or an open_clip tag such as 'openai'"
        )
    return path


class CLIPTextEncoder(nn.Module):
    """The frozen text tower of an open_clip model (the vision tower is removed)."""

    def __init__(self, clip_model: nn.Module, tokenizer: object) -> None:
        super().__init__()
        if hasattr(clip_model, "visual"):
            clip_model.visual = nn.Identity()  # the vision tower lives elsewhere; keep only the text side
        self.clip = clip_model
        self.tokenizer = tokenizer
        for p in self.parameters():
            p.requires_grad_(False)

    @property
    def context_length(self) -> int:
        return int(getattr(self.clip, "context_length", 77))

    @torch.no_grad()
    def encode(self, texts: Sequence[str], batch_size: int = 256) -> torch.Tensor:
        """L2-normalised text embeddings (len(texts), D) in float32."""
        device = next(self.clip.parameters()).device
        out = []
        for i in range(0, len(texts), batch_size):
            tokens = self.tokenizer(list(texts[i : i + batch_size])).to(device)
            emb = self.clip.encode_text(tokens).float()
            out.append(emb / emb.norm(dim=-1, keepdim=True))
        return torch.cat(out)


def resolve_templates(templates: str | Sequence[str]) -> tuple[str, ...]:
    """``single`` / ``multi`` or an explicit list of templates containing ``{}``."""
    if isinstance(templates, str):
        if templates not in TEMPLATES:
            raise ZskError(f"unknown template set '{templates}'; choose single, multi or give a list of templates with {{}}")
        return TEMPLATES[templates]
    out = tuple(templates)
    if not out or any("{}" not in t for t in out):
        raise ZskError("text templates must be a non-empty list of strings that each contain '{}'")
    return out


@torch.no_grad()
def class_text_embeddings(
    encoder: CLIPTextEncoder,
    class_names: Sequence[str],
    templates: str | Sequence[str] = "single",
) -> torch.Tensor:
    """Class embeddings (C, D): each template embedding L2-normalised, averaged, re-normalised.

    With one template this is just the normalised embedding of "a photo of a {c}" (ZegCLIP's
    ``single``); with ``multi`` it is the 15-template ensemble.
    """
    if not class_names:
        raise ZskError("the class name list is empty; give at least one class name")
    tpl = resolve_templates(templates)
    texts = [t.format(c) for c in class_names for t in tpl]
    emb = encoder.encode(texts).view(len(class_names), len(tpl), -1)
    mean = emb.mean(dim=1)
    return mean / mean.norm(dim=-1, keepdim=True)


def weights_identity(encoder: CLIPTextEncoder, source: dict, random_init: bool) -> dict:
    """Key parts naming the text weights: the source for pretrained weights, a checksum for random ones."""
    if not random_init:
        return dict(source)
    h = torch.zeros((), dtype=torch.float64)
    for i, p in enumerate(encoder.state_dict().values()):
        if torch.is_floating_point(p):
            h = h + p.double().sum() * (i + 1) + p.double().abs().sum()
    return {**source, "random_checksum": f"{h.item():.10e}"}


def cached_class_embeddings(
    encoder: CLIPTextEncoder,
    class_names: Sequence[str],
    templates: str | Sequence[str],
    weights_key: dict,
    cache: Cache | None = None,
) -> torch.Tensor:
    """:func:`class_text_embeddings` computed once per (weights, classes, templates) and kept in the zsk cache."""
    cache = cache or default_cache()
    parts = {
        "weights": weights_key,
        "classes": list(class_names),
        "templates": list(resolve_templates(templates)),
        "producer": "zsk.models.clip.class_text_embeddings/1",
    }
    value = cache.get_or_compute("clip_text", parts, lambda: class_text_embeddings(encoder, class_names, templates).cpu())
    return value.float()


def load_npy_embeddings(path: str | Path, num_classes: int, dim: int | None = None) -> torch.Tensor:
    """Precomputed class embeddings from a ``.npy`` file (C, D), re-normalised (ZegCLIP ships these)."""
    p = Path(path).expanduser()
    if not p.is_file():
        raise ZskError(f"class embedding file {p} does not exist; pass an existing .npy file of shape (classes, dim)")
    try:
        arr = np.load(p, allow_pickle=False)
    except Exception as e:
        raise ZskError(f"{p}: not a readable .npy array ({type(e).__name__}: {e})") from e
    if arr.ndim != 2 or arr.shape[0] != num_classes or (dim is not None and arr.shape[1] != dim):
        want = f"({num_classes}, {dim if dim is not None else 'D'})"
        raise ZskError(f"{p}: class embeddings have shape {tuple(arr.shape)}, expected {want} for the dataset's classes")
    t = torch.from_numpy(arr.astype(np.float32))
    return t / t.norm(dim=-1, keepdim=True).clamp_min(1e-12)
