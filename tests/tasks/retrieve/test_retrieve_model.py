"""Encoders of VSE++ / VSE infinity: shapes, unit norms, padding invariance, GPO by hand."""

from __future__ import annotations

import pytest
import torch

from zsk.tasks.retrieve.model import (
    GPO,
    AggrGPOImageEncoder,
    BiGRUGPOTextEncoder,
    GRUTextEncoder,
    PrecompLinearImageEncoder,
    positional_encoding_1d,
)


def test_flatten_encoder_uses_all_regions() -> None:
    enc = PrecompLinearImageEncoder(img_dim=6, num_regions=3, embed_size=5, pool="flatten")
    assert enc.fc.in_features == 18  # LSEH's VSE++: 36 x 2048 = 73,728 inputs
    x = torch.randn(4, 3, 6)
    out = enc(x)
    assert out.shape == (4, 5) and torch.allclose(out.norm(dim=1), torch.ones(4), atol=1e-5)
    # region order matters for the flattened encoder (it is not a set function)
    assert not torch.allclose(enc(x.flip(1)), out)


def test_mean_encoder_ignores_padding() -> None:
    enc = PrecompLinearImageEncoder(6, 3, 5, pool="mean")
    x = torch.randn(2, 3, 6)
    padded = torch.cat([x, 100 * torch.ones(2, 2, 6)], dim=1)
    assert torch.allclose(enc(padded, torch.tensor([3, 3])), enc(x), atol=1e-5)


def test_positional_encoding_values() -> None:
    pe = positional_encoding_1d(4, 3)
    assert torch.allclose(pe[0], torch.tensor([0.0, 1.0, 0.0, 1.0]))
    assert pe[2, 0].item() == pytest.approx(torch.sin(torch.tensor(2.0)).item(), abs=1e-6)
    assert pe[2, 3].item() == pytest.approx(torch.cos(torch.tensor(2.0 / 100.0)).item(), abs=1e-6)


def test_gpo_is_weighted_sum_of_sorted_values() -> None:
    torch.manual_seed(0)
    gpo = GPO(8, 8)
    feats = torch.randn(2, 5, 3)
    lengths = torch.tensor([5, 3])
    out = gpo(feats, lengths)
    w = gpo.pool_weights(lengths, 5)[..., 0]
    assert torch.allclose(w.sum(1), torch.ones(2), atol=1e-5)
    assert torch.all(w[1, 3:] == 0)  # no weight beyond the set size
    for b in range(2):
        n = int(lengths[b])
        sorted_vals = feats[b, :n].sort(dim=0, descending=True).values
        want = (sorted_vals * w[b, :n, None]).sum(0)
        assert torch.allclose(out[b], want, atol=1e-5)
    # a set function: permuting the elements does not change the pooled vector
    assert torch.allclose(gpo(feats[:, torch.randperm(5)], torch.tensor([5, 5]))[0], out[0], atol=1e-5)


def test_gpo_image_encoder_padding_invariant() -> None:
    enc = AggrGPOImageEncoder(img_dim=6, embed_size=8, gpo_dim=4).eval()
    x = torch.randn(3, 4, 6)
    padded = torch.cat([x, torch.randn(3, 3, 6)], dim=1)
    assert torch.allclose(enc(padded, torch.tensor([4, 4, 4])), enc(x), atol=1e-5)
    assert torch.allclose(enc(x).norm(dim=1), torch.ones(3), atol=1e-5)


@pytest.mark.parametrize("cls", [GRUTextEncoder, BiGRUGPOTextEncoder])
def test_text_encoders_padding_invariant(cls) -> None:
    torch.manual_seed(0)
    enc = cls(20, 6, 8).eval()
    tokens = torch.tensor([[1, 5, 6, 7, 2], [1, 8, 2, 0, 0]])
    out = enc(tokens, torch.tensor([5, 3]))
    assert out.shape == (2, 8) and torch.allclose(out.norm(dim=1), torch.ones(2), atol=1e-5)
    alone = enc(tokens[1:, :3], torch.tensor([3]))
    assert torch.allclose(out[1], alone[0], atol=1e-5)
    changed = tokens.clone()
    changed[1, 3:] = 9  # garbage in the padding is ignored
    assert torch.allclose(enc(changed, torch.tensor([5, 3])), out, atol=1e-5)


def test_gru_encoder_takes_last_valid_state() -> None:
    torch.manual_seed(0)
    enc = GRUTextEncoder(20, 6, 8).eval()
    tokens = torch.tensor([[1, 5, 6, 2]])
    out, _ = enc.rnn(enc.embed(tokens))
    want = out[0, -1] / out[0, -1].norm()
    assert torch.allclose(enc(tokens, torch.tensor([4]))[0], want, atol=1e-5)
