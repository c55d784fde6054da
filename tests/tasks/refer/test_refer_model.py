"""AlignFormer's parts against independent implementations: VLBA (both attention directions, masking), the
Swin padding order, the dynamic 1x1 kernels, the losses; and the whole model's masking of padded words."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from zsk.core.recipe import load_recipe, parse_config
from zsk.tasks.refer.config import Config, ContrastiveConfig
from zsk.tasks.refer.losses import instance_contrastive_loss, mask_loss, unambiguous_masks
from zsk.tasks.refer.model import VLBA, MultiModalSwin
from zsk.tasks.refer.train import build_model


def demo_cfg(*sets: str) -> Config:
    return parse_config(Config, load_recipe("refer/demo", ["data.root=/nonexistent", *sets]))


def _conv(seq_or_conv, x):  # 1x1 Conv1d as a matrix product: (B, C, L) -> (B, C', L)
    conv = seq_or_conv[0] if isinstance(seq_or_conv, torch.nn.Sequential) else seq_or_conv
    return torch.einsum("oc,bcl->bol", conv.weight[..., 0], x) + conv.bias[None, :, None]


def _inorm(x, eps=1e-5):  # InstanceNorm1d without affine over the length axis
    return (x - x.mean(-1, keepdim=True)) / torch.sqrt(x.var(-1, unbiased=False, keepdim=True) + eps)


def reference_vlba(mod: VLBA, x, words, mask):
    """VLBA written out with one head: A = IN(Wq x)·(Wk l)/√C (−1e4 on padding), both softmaxes, the fusion MLPs."""
    att, m = mod.image_lang_att, mask[:, :, 0]  # (B, T)
    xc = x.transpose(1, 2)
    q = _inorm(_conv(att.query, xc)).transpose(1, 2)  # (B, HW, C)
    k, v = _conv(att.key, words) * m[:, None], _conv(att.value, words) * m[:, None]
    a = q @ k / x.shape[-1] ** 0.5 + (m[:, None] - 1) * 1e4
    vis_aux = _inorm(_conv(att.W, (a.softmax(-1) @ v.transpose(1, 2)).transpose(1, 2))).transpose(1, 2)
    pix = _inorm(_conv(att.sym_value, xc))  # (B, Cl, HW)
    lang_aux = _conv(att.sym_W, (a.transpose(1, 2).softmax(-1) @ pix.transpose(1, 2)).transpose(1, 2) * m[:, None])
    vis = F.gelu(_conv(mod.vis_project, xc))
    lang = F.gelu(_conv(mod.lang_project, words)) * m[:, None]

    def mlp(seq, z):
        return F.gelu(_conv(seq[3], F.gelu(_conv(seq, z))))

    mm_v = mlp(mod.project_mm, torch.cat([vis, vis_aux.transpose(1, 2)], 1)).transpose(1, 2)
    mm_l = mlp(mod.sym_project_mm, torch.cat([lang, lang_aux * m[:, None]], 1)) * m[:, None]
    return mm_v, mm_l


def test_vlba_equals_the_written_out_formula() -> None:
    torch.manual_seed(0)
    mod = VLBA(dim=8, l_channels=6).double().eval()
    x, words = torch.randn(2, 12, 8, dtype=torch.float64), torch.randn(2, 6, 5, dtype=torch.float64)
    mask = torch.tensor([[1, 1, 1, 0, 0], [1, 1, 1, 1, 1]], dtype=torch.float64)[..., None]
    got, want = mod(x, words, mask), reference_vlba(mod, x, words, mask)
    torch.testing.assert_close(got[0], want[0])
    torch.testing.assert_close(got[1], want[1])
    assert got[1][0, :, 3:].abs().max() == 0  # padded words stay zero
    # padded words' features do not reach the pixels
    words2 = words.clone()
    words2[0, :, 3:] = 50.0
    torch.testing.assert_close(mod(x, words2, mask)[0], got[0])


def test_swin_padding_order() -> None:
    torch.manual_seed(0)
    kw = dict(embed_dim=8, depths=[2, 2, 2, 2], num_heads=[1, 1, 2, 2], window_size=4, drop_path=0.0, l_channels=6,
              fusion_heads=[1, 1, 1, 1], img_size=64)
    ours, timm_order = MultiModalSwin(**kw, padding="pad_then_shift"), MultiModalSwin(**kw, padding="timm")
    timm_order.load_state_dict(ours.state_dict())
    words, mask = torch.randn(1, 6, 4), torch.ones(1, 4, 1)
    # the orders group tokens differently only where the padding exceeds the shift: at 80 px stage 3 has 5x5
    # tokens (window 4, shift 2, padding 3), as stage 4 of the paper's 480 px input has 15x15 (window 12, padding 9)
    for size, equal in ((64, True), (80, False)):
        img = torch.randn(1, 3, size, size)
        a, b = ours(img, words, mask)[0], timm_order(img, words, mask)[0]
        assert torch.allclose(a[1], b[1], atol=1e-5)  # stage 2: 8x8 (whole windows) or 10x10 (padding 2 = shift)
        assert torch.allclose(a[2], b[2], atol=1e-5) is equal
    # zero-initialised gates: the fusion leaves words unchanged (up to the mask) at the start of training
    _, _, updated = ours(torch.randn(1, 3, 64, 64), words, torch.tensor([[1.0, 1, 0, 0]])[..., None])
    torch.testing.assert_close(updated[..., :2], words[..., :2])
    assert updated[..., 2:].abs().max() == 0


def test_model_outputs_kernels_and_padding_invariance() -> None:
    torch.manual_seed(0)
    cfg = demo_cfg()
    model = build_model(cfg).eval()
    img = torch.randn(2, 3, 64, 64)
    ids = torch.randint(5, 60, (2, 12))
    att = torch.ones(2, 12, dtype=torch.long)
    att[0, 7:] = 0
    out = model(img, ids, att)
    assert len(out["logits"]) == cfg.model.dec_layers + 1 and out["logits"][0].shape == (2, 1, 16, 16)
    for q, lg in zip(out["queries"], out["logits"], strict=True):
        kernel = model.kernel_head(q)[:, 0]  # (B, C + 1): a dynamic 1x1 convolution per expression
        for b in range(2):
            ref = F.conv2d(out["mask_features"][b:b + 1], kernel[b, :-1].view(1, -1, 1, 1), kernel[b, -1:])
            torch.testing.assert_close(lg[b:b + 1], ref, atol=1e-5, rtol=1e-5)
    ids2 = ids.clone()
    ids2[0, 7:] = 3  # different tokens under the padding mask
    torch.testing.assert_close(model(img, ids2, att)["logits"][-1], out["logits"][-1], atol=1e-5, rtol=1e-5)


def test_mask_loss_is_the_summed_weighted_bce() -> None:
    torch.manual_seed(0)
    logits = [torch.randn(2, 1, 4, 4) for _ in range(3)]
    target = (torch.rand(2, 8, 8) > 0.5).long()
    want = 0.0
    for lg in logits:
        p = torch.sigmoid(F.interpolate(lg, size=(8, 8), mode="bilinear", align_corners=False))[:, 0]
        t = target.float()
        want += (-(1.1 * t * torch.log(p) + (1 - t) * torch.log(1 - p))).mean()
    torch.testing.assert_close(mask_loss(logits, target, 1.1), want)
    torch.testing.assert_close(mask_loss(logits, target, 1.1, all_outputs=False),
                               mask_loss(logits[-1:], target, 1.1))


def test_boundary_band_and_contrastive_loss_against_a_loop() -> None:
    target = torch.zeros(1, 16, 16)
    target[0, 2:14, 2:14] = 1
    fg, bg = unambiguous_masks(target, (16, 16), 2)
    fg, bg = fg.view(16, 16), bg.view(16, 16)
    assert fg[4:12, 4:12].all() and fg.sum() == 64  # erosion by 5x5 keeps the inner 8x8
    assert not bg[2:14, 2:14].any() and bg.sum() == 0  # the 16x16 map has no background 3 px from the square
    band = ~(fg | bg)
    assert band[0:16, 0:2].sum() == 32 and band[2:14, 2:14].sum() == 144 - 64  # 2 px each side of the boundary

    torch.manual_seed(1)
    b, c, h, w = 3, 4, 6, 6
    emb, anchors = torch.randn(b, c, h, w, dtype=torch.float64), torch.randn(b, c, dtype=torch.float64)
    target = torch.zeros(b, 24, 24)
    target[0, 4:20, 4:20] = 1
    target[1, 0:12, 0:24] = 1
    target[2, 12:16, 0:4] = 1  # tiny: vanishes after the band, all its foreground is kept
    for negatives in ("batch", "image"):
        cfg = ContrastiveConfig(tau=0.1, boundary_width=1, negatives=negatives)
        got = instance_contrastive_loss(anchors, emb, target, cfg)
        fgm, bgm = unambiguous_masks(target, (h, w), 1)
        e = F.normalize(emb, dim=1).flatten(2)
        a = F.normalize(anchors, dim=1)
        losses = []
        for i in range(b):
            negs = [float(a[i] @ e[i, :, p]) for p in range(h * w) if bgm[i, p]]
            if negatives == "batch":
                negs += [float(a[i] @ e[k, :, p]) for k in range(b) if k != i for p in range(h * w) if fgm[k, p]]
            terms = []
            for p in range(h * w):
                if fgm[i, p]:
                    s = float(a[i] @ e[i, :, p]) / 0.1
                    den = torch.tensor([s] + [n / 0.1 for n in negs], dtype=torch.float64).logsumexp(0)
                    terms.append(float(den) - s)
            losses.append(sum(terms) / len(terms))
        assert got.item() == pytest.approx(sum(losses) / b, rel=1e-6)  # the loss computes in fp32


def test_parameter_groups_follow_the_official_optimizer() -> None:
    from zsk.tasks.refer.train import param_groups

    model = build_model(demo_cfg("model.train_text_embeddings=false"))
    groups = param_groups(model)
    names = {id(p): n for n, p in model.named_parameters()}
    no_decay, decay, decoder, text = ([names[id(p)] for p in g["params"]] for g in groups)
    assert groups[0]["weight_decay"] == 0.0 and all("weight_decay" not in g for g in groups[1:])
    assert all(n.startswith("backbone.") and ("norm" in n or "relative_position_bias_table" in n) for n in no_decay)
    assert any("relative_position_bias_table" in n for n in no_decay) and any(".norms." in n for n in no_decay)
    assert any(".fusions." in n for n in decay) and not any("norm" in n for n in decay)
    assert all(n.startswith("text_encoder.encoder.") for n in text)  # embeddings are not optimised (official)
    assert not any(n.startswith(("backbone.", "text_encoder.")) for n in decoder) and "txt_proj.weight" in decoder
    assert sum(len(g["params"]) for g in groups) == sum(p.requires_grad for p in model.parameters())


def test_instance_mean_variant_is_infonce_over_instances() -> None:
    torch.manual_seed(2)
    b, c, h, w = 3, 4, 6, 6
    emb, anchors = torch.randn(b, c, h, w), torch.randn(b, c)
    target = torch.zeros(b, 24, 24)
    target[0, 4:20, 4:20] = 1
    target[1, 0:12, :] = 1
    target[2, 12:24, 0:12] = 1
    cfg = ContrastiveConfig(tau=0.1, boundary_width=1, positive="instance_mean")
    fg, _ = unambiguous_masks(target, (h, w), 1)
    e = F.normalize(emb, dim=1).flatten(2)
    inst = torch.stack([F.normalize(e[k][:, fg[k]].mean(1), dim=0) for k in range(b)])
    logits = F.normalize(anchors, dim=1) @ inst.t() / 0.1
    want = torch.stack([-(logits[i].log_softmax(0)[i]) for i in range(b)]).mean()
    torch.testing.assert_close(instance_contrastive_loss(anchors, emb, target, cfg), want, rtol=1e-5, atol=1e-6)


def test_gate_init_options() -> None:
    kw = dict(embed_dim=8, depths=[1, 1, 1, 1], num_heads=[1, 1, 1, 1], window_size=4, drop_path=0.0, l_channels=6,
              fusion_heads=[1, 1, 1, 1], img_size=64)
    zero, tn = MultiModalSwin(**kw), MultiModalSwin(**kw, gate_init="trunc_normal")
    assert all(g[j].weight.abs().max() == 0 for g in [*zero.res_gates, *zero.sym_res_gates] for j in (0, 2))
    w = torch.cat([g[j].weight.flatten() for g in [*tn.res_gates, *tn.sym_res_gates] for j in (0, 2)])
    assert 0.015 < float(w.std()) < 0.025  # trunc_normal_(std=0.02) as timm's in the official init_weights
