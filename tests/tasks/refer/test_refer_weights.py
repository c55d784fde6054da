"""Pretrained weights from local files in their real formats: a Swin checkpoint in the microsoft/Swin-Transformer
layout (``{"model": ...}``, patch merging at the end of a stage, as swin_base_patch4_window12_384_22k.pth) and a
BERT folder written by ``save_pretrained``."""

from __future__ import annotations

import re

import pytest
import torch

from zsk.core.errors import ZskError
from zsk.core.recipe import load_recipe, parse_config
from zsk.tasks.refer.config import Config
from zsk.tasks.refer.train import build_model, build_text_encoder


def cfg_with(*sets: str) -> Config:
    return parse_config(Config, load_recipe("refer/demo", ["data.root=/nonexistent", *sets]))


def to_original_layout(state: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """timm names -> the original Swin names (downsample of stage i+1 belongs to stage i there)."""
    out = {}
    for k, v in state.items():
        m = re.match(r"layers\.(\d+)\.downsample\.(.*)", k)
        out[f"layers.{int(m.group(1)) - 1}.downsample.{m.group(2)}" if m else k] = v
    return out


def test_swin_checkpoint_in_the_original_layout_loads(tmp_path) -> None:
    torch.manual_seed(0)
    source = build_model(cfg_with()).backbone.swin
    path = tmp_path / "swin_tiny_patch4_window4.pth"
    torch.save({"model": to_original_layout(source.state_dict())}, path)
    torch.manual_seed(1)
    model = build_model(cfg_with(f"model.swin_weights={path}"), pretrained=True)
    for k, v in source.state_dict().items():
        assert torch.equal(model.backbone.swin.state_dict()[k], v), k
    torch.save({"model": {"layers.0.blocks.0.norm1.weight": torch.ones(3)}}, path)
    with pytest.raises(ZskError, match="model.swin_weights.*shape"):
        build_model(cfg_with(f"model.swin_weights={path}"), pretrained=True)


def test_bert_folder_loads_without_a_pooler(tmp_path) -> None:
    torch.manual_seed(0)
    bert = build_text_encoder(cfg_with(), pretrained=False)
    bert.save_pretrained(tmp_path / "bert")
    loaded = build_text_encoder(cfg_with(f"model.text_encoder={tmp_path / 'bert'}"), pretrained=True)
    assert loaded.pooler is None
    for k, v in bert.state_dict().items():
        assert torch.equal(loaded.state_dict()[k], v), k
    with pytest.raises(ZskError, match="model.text_dim"):
        build_text_encoder(cfg_with(f"model.text_encoder={tmp_path / 'bert'}", "model.text_dim=64"), pretrained=True)


def test_swin_hub_id_loads_timm_weights_from_the_hf_cache(tmp_path, monkeypatch) -> None:
    """``model.swin_weights=timm/<name>``: timm's hub layout (``model.safetensors`` in a snapshot of
    ``models--timm--<name>``, timm key names with a classifier head) read offline from the HF cache."""
    import huggingface_hub.constants
    from safetensors.torch import save_file

    torch.manual_seed(0)
    source = build_model(cfg_with()).backbone.swin
    state = {k: v.contiguous() for k, v in source.state_dict().items() if "relative_position_index" not in k}
    state["head.fc.weight"] = torch.zeros(5, source.num_features)  # real timm files carry their head
    snapshot = tmp_path / "hub" / "models--timm--swin_tiny_zsk_test" / "snapshots" / ("a" * 40)
    snapshot.mkdir(parents=True)
    (tmp_path / "hub" / "models--timm--swin_tiny_zsk_test" / "refs").mkdir()
    (tmp_path / "hub" / "models--timm--swin_tiny_zsk_test" / "refs" / "main").write_text("a" * 40)
    save_file(state, str(snapshot / "model.safetensors"))
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_CACHE", str(tmp_path / "hub"))
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    torch.manual_seed(1)
    model = build_model(cfg_with("model.swin_weights=timm/swin_tiny_zsk_test"), pretrained=True)
    for k, v in source.state_dict().items():
        assert torch.equal(model.backbone.swin.state_dict()[k], v), k
    with pytest.raises(ZskError, match="model.swin_weights.*timm/not_cached.*local Hugging Face cache"):
        build_model(cfg_with("model.swin_weights=timm/not_cached"), pretrained=True)
