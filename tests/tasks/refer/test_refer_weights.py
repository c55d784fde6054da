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
