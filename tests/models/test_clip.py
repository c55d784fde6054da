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


# ----------------------------------------------------------------------------- OpenAI's checkpoint formats
# A tiny model of the shape rules open_clip's OpenAI loader (build_model_from_openai_state_dict) infers
# from a checkpoint: 64-wide heads, MLP ratio 4, QuickGELU. Registered as a zsk tiny config in the tests.
OPENAI_TINY = {
    "embed_dim": 32,
    "quick_gelu": True,
    "vision_cfg": {"image_size": 32, "layers": 2, "width": 64, "patch_size": 16},
    "text_cfg": {"context_length": 77, "vocab_size": 49408, "width": 64, "heads": 1, "layers": 1},
}


# tracing and torch.jit.save/load warn (TracerWarning, DeprecationWarning): expected while making the files
QUIET_JIT = pytest.mark.filterwarnings("ignore::DeprecationWarning", "ignore::torch.jit.TracerWarning")


@pytest.fixture(scope="module")
def openai_files(tmp_path_factory: pytest.TempPathFactory) -> dict:
    """The same random tiny CLIP written the ways OpenAI and open_clip users have it on disk.

    ``jit``: a TorchScript archive laid out like OpenAI's ``ViT-B-16.pt``: traced, weights mostly float16
    (open_clip's ``build_model_from_openai_state_dict`` makes the same mix), ``input_resolution``,
    ``context_length`` and ``vocab_size`` tensors in its state dict, the causal mask a traced constant.
    ``state_dict``: the same tensors saved with torch.save (OpenAI's non-JIT form; the extras as ints).
    ``wrapped``: a training checkpoint ``{"state_dict": {"module." + name: ...}}``, which open_clip's OpenAI
    loader also accepts. ``open_clip_jit``: open_clip's model traced as it is (its attn_mask buffer saved).
    """
    from open_clip.model import CLIP, build_model_from_openai_state_dict

    root = tmp_path_factory.mktemp("openai")
    torch.manual_seed(0)
    src = CLIP(**OPENAI_TINY).eval()
    oa = build_model_from_openai_state_dict(dict(src.state_dict()))  # float16 where OpenAI's files are
    half = {k: v.clone() for k, v in oa.state_dict().items()}
    assert {v.dtype for v in half.values()} == {torch.float16, torch.float32}
    image, tokens = torch.randn(2, 3, 32, 32), torch.randint(1, 49407, (2, 77))
    files = {}
    with torch.no_grad():
        traced = torch.jit.trace(oa, (image.half(), tokens), check_trace=False)
        torch.jit.save(traced, root / "open_clip_jit.pt")
        files["open_clip_jit"] = root / "open_clip_jit.pt"
        mask = oa._buffers.pop("attn_mask")
        oa.__dict__["attn_mask"] = mask  # a plain tensor attribute, as in OpenAI's model code
        del oa.context_length, oa.vocab_size
        oa.register_buffer("input_resolution", torch.tensor(32))
        oa.register_buffer("context_length", torch.tensor(77))
        oa.register_buffer("vocab_size", torch.tensor(49408))
        traced = torch.jit.trace(oa, (image.half(), tokens), check_trace=False)
    torch.jit.save(traced, root / "ViT-tiny.pt")
    files["jit"] = root / "ViT-tiny.pt"
    torch.save({**half, "input_resolution": 32, "context_length": 77, "vocab_size": 49408}, root / "sd.pt")
    files["state_dict"] = root / "sd.pt"
    torch.save({"state_dict": {f"module.{k}": v for k, v in half.items()}}, root / "wrapped.pt")
    files["wrapped"] = root / "wrapped.pt"
    return {"files": files, "half": half, "image": image, "tokens": tokens}


@QUIET_JIT
def test_openai_torchscript_archive_is_laid_out_like_openais(openai_files: dict) -> None:
    import zipfile

    path = openai_files["files"]["jit"]
    names = zipfile.ZipFile(path).namelist()
    assert any(n.endswith("/constants.pkl") for n in names) and any("/code/" in n for n in names)
    sd = torch.jit.load(str(path), map_location="cpu").state_dict()
    assert {"input_resolution", "context_length", "vocab_size"} <= set(sd) and "attn_mask" not in sd
    assert sd["visual.conv1.weight"].dtype == torch.float16
    assert set(sd) - {"input_resolution", "context_length", "vocab_size"} == set(openai_files["half"])


@QUIET_JIT
@pytest.mark.parametrize("form", ["jit", "state_dict", "wrapped", "open_clip_jit"])
def test_openai_checkpoint_loads_the_weights_open_clip_loads(form: str, openai_files: dict,
                                                             monkeypatch: pytest.MonkeyPatch) -> None:
    """zsk's loader and open_clip's own OpenAI loader give the same float32 weights and the same outputs."""
    from open_clip.openai import load_openai_model

    monkeypatch.setitem(zclip.TINY_CONFIGS, "tiny-openai", OPENAI_TINY)
    path = openai_files["files"][form]
    loaded = zclip.load_clip("tiny-openai", str(path))
    assert not loaded.random_init and loaded.source["file"]["size"] == path.stat().st_size
    got = loaded.model.state_dict()
    assert set(got) == set(openai_files["half"])
    for k, v in openai_files["half"].items():
        assert got[k].dtype == torch.float32 and torch.equal(got[k], v.float()), k
    if form != "open_clip_jit":  # open_clip's OpenAI loader refuses the attn_mask entry of its own traced models
        ref = load_openai_model(str(path), precision="fp32", device="cpu").eval()
        assert ref.state_dict().keys() == got.keys()
        for k, v in ref.state_dict().items():
            assert torch.equal(got[k], v), k
        image, tokens = openai_files["image"], openai_files["tokens"]
        with torch.no_grad():
            assert torch.allclose(loaded.model.encode_image(image), ref.encode_image(image), atol=1e-6)
            assert torch.allclose(loaded.model.encode_text(tokens), ref.encode_text(tokens), atol=1e-6)


@QUIET_JIT
def test_openai_checkpoint_of_another_model_is_refused(openai_files: dict) -> None:
    with pytest.raises(ZskError, match="ViT-tiny.pt.*does not match open_clip model 'tiny-vit-p16'"):
        zclip.load_clip("tiny-vit-p16", str(openai_files["files"]["jit"]))
