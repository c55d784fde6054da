"""SegFormer MiT shapes and attention maps, local weight loading, per-step classifiers and MiB init."""

from __future__ import annotations

import torch

from zsk.core.errors import ZskError
from zsk.models.segformer import MIT_CONFIGS, MiTConfig, MixVisionTransformer, load_mit_weights
from zsk.tasks.css.model import IncrementalSegFormer, frozen_copy

TINY = MiTConfig((8, 16, 20, 32), (1, 2, 5, 8), (1, 1, 1, 1), (8, 4, 2, 1))


def test_mit_b2_size_and_attention_shapes() -> None:
    enc = MixVisionTransformer(MIT_CONFIGS["mit_b2"])
    n = sum(p.numel() for p in enc.parameters())
    assert 24.0e6 < n < 24.5e6  # MiT-B2 encoder: 24.2M parameters (SegFormer Table 1 lists 24.2M for the encoder)
    assert len(enc.block3) == 6 and enc.block4[0].attn.num_heads == 8 and enc.block1[0].attn.sr_ratio == 8


def test_attention_maps_of_the_last_block_per_stage() -> None:
    enc = MixVisionTransformer(TINY, drop_path_rate=0.0).eval()
    feats, attns = enc(torch.randn(2, 3, 128, 128))
    assert [tuple(f.shape[1:]) for f in feats] == [(8, 32, 32), (16, 16, 16), (20, 8, 8), (32, 4, 4)]
    # N = s^2 queries; M = N / sr^2 keys: at 128 px 16 keys in every stage (256 at 512 px)
    assert [tuple(a.shape) for a in attns] == [(2, 1, 1024, 16), (2, 2, 256, 16), (2, 5, 64, 16), (2, 8, 16, 16)]
    assert torch.allclose(attns[2].sum(-1), torch.ones(2, 5, 64), atol=1e-5)


def test_mit_weights_round_trip_and_errors(tmp_path) -> None:  # noqa: ANN001
    a, b = MixVisionTransformer(TINY), MixVisionTransformer(TINY)
    state = {**a.state_dict(), "head.weight": torch.zeros(1000, 32)}  # the ImageNet head is dropped
    torch.save({"state_dict": state}, tmp_path / "mit.pth")
    report = load_mit_weights(b, tmp_path / "mit.pth")
    assert report["unused"] == ["head.weight"] and not report["missing"]
    assert all(torch.equal(a.state_dict()[k], v) for k, v in b.state_dict().items())
    torch.save(MixVisionTransformer(MiTConfig((16, 16, 20, 32), depths=(1, 1, 1, 1))).state_dict(), tmp_path / "b.pth")
    for path, fragment in ((tmp_path / "none.pth", "none.pth not found"), (tmp_path / "b.pth", "do not fit")):
        try:
            load_mit_weights(b, path)
        except ZskError as e:
            assert fragment in str(e)
        else:
            raise AssertionError(path)


def test_incremental_heads_and_mib_init() -> None:
    torch.manual_seed(0)
    model = IncrementalSegFormer(TINY, [4, 2, 1], drop_path_rate=0.0, decoder_dim=8).eval()
    x = torch.randn(1, 3, 64, 64)
    assert model(x).shape == (1, 7, 64, 64)
    model.active_step = 0
    with torch.no_grad():
        p_old = model(x).softmax(1)
    model.init_new_classifier(1)
    model.active_step = 1
    with torch.no_grad():
        p_new = model(x).softmax(1)
    # MiB init: background and the new classes share the old background probability; old classes unchanged
    assert torch.allclose(p_new[:, [0, 4, 5]].sum(1), p_old[:, 0], atol=1e-5)
    assert torch.allclose(p_new[:, 1:4], p_old[:, 1:4], atol=1e-5)
    assert torch.allclose(p_new[:, 4], p_new[:, 0], atol=1e-5)
    old = frozen_copy(model, 0)
    assert old.num_classes() == 4 and not any(p.requires_grad for p in old.parameters())


def test_sliding_window_logits_average_the_clamped_windows() -> None:
    from zsk.core.recipe import parse_config
    from zsk.tasks.css.config import Config
    from zsk.tasks.css.evaluate import slide_logits

    torch.manual_seed(0)
    model = IncrementalSegFormer(TINY, [3], 0.0, 8).eval()
    cfg = parse_config(Config, {"eval": {"crop_size": 32, "stride": 24, "mode": "slide"}})
    x = torch.randn(3, 32, 80)
    with torch.no_grad():
        out = slide_logits(model, x, cfg, None)
        expected, count = torch.zeros(3, 32, 80), torch.zeros(1, 32, 80)
        for left in (0, 24, 48):  # windows every 24 px, the last one clamped to end at the border
            expected[:, :, left:left + 32] += model(x[None, :, :, left:left + 32])[0]
            count[:, :, left:left + 32] += 1
    assert torch.allclose(out, expected / count, atol=1e-5)


def test_hugging_face_segformer_encoder_converts_to_the_same_network(tmp_path) -> None:  # noqa: ANN001
    """An independent implementation: transformers' SegformerModel with random weights, converted by
    mit_state_from_hf (and saved/loaded as a save_pretrained folder), gives zsk's MiT the same stage outputs."""
    from transformers import SegformerConfig, SegformerModel

    from zsk.models.segformer import load_hf_mit_weights, mit_state_from_hf

    torch.manual_seed(0)
    hf_cfg = SegformerConfig(depths=[1, 1, 1, 1], hidden_sizes=list(TINY.embed_dims), num_attention_heads=[1, 2, 5, 8],
                             sr_ratios=[8, 4, 2, 1], hidden_dropout_prob=0.0, attention_probs_dropout_prob=0.0,
                             drop_path_rate=0.0, layer_norm_eps=1e-6)
    hf = SegformerModel(hf_cfg).eval()
    hf.save_pretrained(tmp_path / "mit")
    ours = MixVisionTransformer(TINY, drop_path_rate=0.0).eval()
    report = load_hf_mit_weights(ours, str(tmp_path / "mit"))
    assert not report["missing"]
    x = torch.randn(1, 3, 64, 96)
    with torch.no_grad():
        theirs = hf(x, output_hidden_states=True).hidden_states
        feats, _ = ours(x)
    for a, b in zip(feats, theirs, strict=True):
        assert torch.allclose(a, b, atol=1e-4), float((a - b).abs().max())
    # the hub checkpoints' (transformers 4) names convert to the same tensors
    legacy = {"segformer.encoder.block.0.0.attention.self.key.weight": torch.ones(2, 2),
              "segformer.encoder.block.0.0.attention.self.value.weight": torch.zeros(2, 2),
              "segformer.encoder.layer_norm.3.bias": torch.ones(3), "decode_head.classifier.weight": torch.ones(1)}
    conv = mit_state_from_hf(legacy)
    assert set(conv) == {"block1.0.attn.kv.weight", "norm4.bias"}
    assert torch.equal(conv["block1.0.attn.kv.weight"], torch.cat([torch.ones(2, 2), torch.zeros(2, 2)]))
