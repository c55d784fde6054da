"""CLIP loading (tiny random configs, local files, offline errors) and cached class text embeddings."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch

from zsk.core.cache import Cache
from zsk.core.errors import ZskError
from zsk.models import clip as zclip


@pytest.fixture(scope="module")
def tiny():
    torch.manual_seed(0)
    return zclip.load_clip("tiny-vit-p16", None)


def test_tiny_config_builds_open_clip_classes(tiny) -> None:
    from open_clip.model import CLIP
    from open_clip.transformer import VisionTransformer

    assert isinstance(tiny.model, CLIP) and isinstance(tiny.model.visual, VisionTransformer)
    assert tiny.random_init and tiny.source == {"name": "tiny-vit-p16", "pretrained": None}
    tokens = tiny.tokenizer(["a photo of a cat"])
    assert tokens.shape == (1, 77)


def test_local_checkpoint_file_loads_the_same_weights(tmp_path: Path, tiny) -> None:
    path = tmp_path / "tiny.pt"
    torch.save(tiny.model.state_dict(), path)
    loaded = zclip.load_clip("tiny-vit-p16", str(path))
    assert not loaded.random_init and loaded.source["file"]["size"] == path.stat().st_size
    for (k, a), (_, b) in zip(tiny.model.state_dict().items(), loaded.model.state_dict().items(), strict=True):
        assert torch.equal(a, b), k
    # a checkpoint of another model is refused with the file named
    other = zclip.load_clip("tiny-vit-p8", None)
    torch.save(other.model.state_dict(), tmp_path / "other.pt")
    with pytest.raises(ZskError, match="other.pt"):
        zclip.load_clip("tiny-vit-p16", str(tmp_path / "other.pt"))


def test_missing_file_unknown_model_and_tag_errors(tmp_path: Path) -> None:
    with pytest.raises(ZskError, match="does not exist.*model.clip.pretrained"):
        zclip.load_clip("tiny-vit-p8", str(tmp_path / "nope.pt"))
    with pytest.raises(ZskError, match="unknown open_clip model 'ViT-Q-99'"):
        zclip.load_clip("ViT-Q-99", "openai")
    with pytest.raises(ZskError, match="unknown pretrained tag 'nosuchtag'.*openai"):
        zclip.load_clip("ViT-B-16", "nosuchtag")


def test_offline_tag_error_names_model_tag_and_fix(monkeypatch: pytest.MonkeyPatch) -> None:
    import open_clip.factory

    def no_network(*args, **kwargs):
        raise OSError("no network")

    monkeypatch.setattr(open_clip.factory, "download_pretrained", no_network)
    with pytest.raises(ZskError) as err:
        zclip.load_clip("ViT-B-16", "openai")
    msg = str(err.value)
    assert "ViT-B-16" in msg and "'openai'" in msg and "--set model.clip.pretrained=" in msg


def test_embeddings_average_normalised_templates(tiny) -> None:
    enc = zclip.CLIPTextEncoder(_text_copy(tiny), tiny.tokenizer)
    names = ["cat", "traffic light"]
    tpl = ["a photo of a {}.", "There is a {} in the scene."]
    got = zclip.class_text_embeddings(enc, names, tpl)
    for i, n in enumerate(names):
        tok = tiny.tokenizer([t.format(n) for t in tpl])
        with torch.no_grad():
            e = enc.clip.encode_text(tok).float()
        e = e / e.norm(dim=-1, keepdim=True)
        m = e.mean(0)
        assert torch.allclose(got[i], m / m.norm(), atol=1e-5)
    single = zclip.class_text_embeddings(enc, names, "single")
    with torch.no_grad():
        e = enc.clip.encode_text(tiny.tokenizer(["a photo of a cat"])).float()[0]
    assert torch.allclose(single[0], e / e.norm(), atol=1e-5)
    assert len(zclip.TEMPLATES["multi"]) == 15
    with pytest.raises(ZskError, match="empty"):
        zclip.class_text_embeddings(enc, [], "single")
    with pytest.raises(ZskError, match="contain"):
        zclip.class_text_embeddings(enc, names, ["no placeholder"])


def _text_copy(tiny):
    import copy

    return copy.deepcopy(tiny.model)


def test_cached_embeddings_are_computed_once(tmp_path: Path, tiny, monkeypatch: pytest.MonkeyPatch) -> None:
    enc = zclip.CLIPTextEncoder(_text_copy(tiny), tiny.tokenizer)
    cache = Cache(tmp_path / "cache")
    key = zclip.weights_identity(enc, tiny.source, True)
    first = zclip.cached_class_embeddings(enc, ["cat", "dog"], "single", key, cache)
    calls = []
    real = zclip.class_text_embeddings
    monkeypatch.setattr(zclip, "class_text_embeddings", lambda *a, **k: calls.append(1) or real(*a, **k))
    again = zclip.cached_class_embeddings(enc, ["cat", "dog"], "single", key, cache)
    assert torch.equal(first, again) and calls == []
    zclip.cached_class_embeddings(enc, ["cat", "bird"], "single", key, cache)
    assert calls == [1]
    # other random weights give another key
    with torch.no_grad():
        next(enc.clip.parameters()).add_(1.0)
    assert zclip.weights_identity(enc, tiny.source, True) != key


def test_npy_embeddings(tmp_path: Path) -> None:
    arr = np.array([[3.0, 4.0], [0.0, 2.0]], dtype=np.float32)
    np.save(tmp_path / "e.npy", arr)
    t = zclip.load_npy_embeddings(tmp_path / "e.npy", 2, 2)
    assert torch.allclose(t, torch.tensor([[0.6, 0.8], [0.0, 1.0]]))
    with pytest.raises(ZskError, match=r"e.npy.*\(3, 2\)"):
        zclip.load_npy_embeddings(tmp_path / "e.npy", 3, 2)
