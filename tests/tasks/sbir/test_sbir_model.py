"""ACNet's networks and losses against independently written formulas: shapes and parameter counts, the
proxy normalised softmax, gradient routing of the joint step (D sees only L_D, G and E only their objective),
the warm-up, BatchNorm frozen, the four Adam parameter groups."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from zsk.core.recipe import load_recipe, parse_config
from zsk.core.trainer import build_optimizer
from zsk.tasks.sbir.config import Config
from zsk.tasks.sbir.losses import discriminator_loss, normalized_softmax_loss
from zsk.tasks.sbir.model import ACNet, Discriminator, Extractor, Generator
from zsk.tasks.sbir.train import acnet_losses, make_step_fn, param_groups


def _cfg(*sets: str) -> Config:
    return parse_config(Config, load_recipe("sbir/demo", ["data.root=/nowhere", *sets]))


def test_generator_shapes_and_parameter_count() -> None:
    g = Generator(8, 8)
    x = torch.rand(2, 3, 64, 64) * 2 - 1
    y = g(x)
    assert y.shape == x.shape and y.abs().max() <= 1
    c = 8
    conv = lambda i, o, k: i * o * k * k + o  # noqa: E731
    want = (conv(3, c, 7) + conv(c, 2 * c, 3) + conv(2 * c, 4 * c, 3) + 8 * 2 * conv(4 * c, 4 * c, 3)
            + conv(4 * c, 2 * c, 3) + conv(2 * c, c, 3) + conv(c, 3, 7))  # InstanceNorm2d has no affine weights
    assert sum(p.numel() for p in g.parameters()) == want


def test_discriminator_patch_map() -> None:
    d = Discriminator(8)
    # 224 -> 112 -> 56 -> 28 (stride 2) -> 27 -> 26 (4x4, stride 1, padding 1)
    assert d(torch.zeros(1, 3, 224, 224)).shape == (1, 1, 26, 26)


def test_normalized_softmax_matches_the_formula() -> None:
    g = torch.Generator().manual_seed(0)
    x, w = torch.randn(6, 5, generator=g), torch.randn(5, 4, generator=g)  # W as pytorch-metric-learning: (d, C)
    y = torch.tensor([0, 1, 2, 3, 0, 1])
    xn, wn = x / x.norm(dim=1, keepdim=True), w / w.norm(dim=0, keepdim=True)
    logits = xn @ wn / 0.05
    want = -(logits.gather(1, y[:, None]).squeeze(1) - logits.logsumexp(1)).mean()
    assert normalized_softmax_loss(x, y, w.T, 0.05) == pytest.approx(float(want), rel=1e-5)


def test_joint_step_routes_each_gradient_to_its_network() -> None:
    torch.manual_seed(0)
    cfg = _cfg()
    net = ACNet(3, backbone="resnet10t", emb_dim=8, generator_channels=4, generator_blocks=1, frozen_bn=True).train()
    s, p, y = torch.rand(2, 3, 32, 32) * 2 - 1, torch.rand(2, 3, 32, 32) * 2 - 1, torch.tensor([0, 2])
    losses = acnet_losses(net(s, p), p, y, net.proxies, cfg.train)
    losses["loss"].backward()
    joint = {n: q.grad.clone() for n, q in net.named_parameters() if q.grad is not None}
    # the official two-optimizer step, written out: D on its own loss, G/E/proxies on their objective
    net.zero_grad()
    fake = net.generator(s)
    d_only = discriminator_loss(net.discriminator(p), net.discriminator(fake.detach()))
    d_grads = torch.autograd.grad(d_only, list(net.discriminator.parameters()))
    t = cfg.train
    ge = (F.mse_loss(d_fake := net.discriminator(fake), torch.ones_like(d_fake)) + t.identity_weight * F.l1_loss(net.generator(p), p)
          + t.class_weight * sum(normalized_softmax_loss(net.extractor(z), y, net.proxies, t.temperature)
                                 for z in (s, p, fake)) / 3)
    ge_params = [*net.generator.parameters(), *net.extractor.parameters(), net.proxies]
    ge_grads = torch.autograd.grad(ge, ge_params, allow_unused=True)
    names = {id(q): n for n, q in net.named_parameters()}
    for q, gq in zip(net.discriminator.parameters(), d_grads, strict=True):
        assert torch.allclose(joint[names[id(q)]], gq, atol=1e-6)
    scale = max(float(gq.abs().max()) for gq in ge_grads if gq is not None)  # biases before InstanceNorm get ~0
    for q, gq in zip(ge_params, ge_grads, strict=True):
        if gq is not None:
            assert float((joint[names[id(q)]] - gq).abs().max()) <= 1e-4 * scale, names[id(q)]


def test_warmup_trains_only_the_last_layer_and_batchnorm_stays_frozen() -> None:
    cfg = _cfg("model.norm=batchnorm")
    net = ACNet(3, backbone="resnet10t", emb_dim=8, generator_channels=4, generator_blocks=1).train()
    assert all(not m.training for m in net.extractor.modules() if isinstance(m, torch.nn.BatchNorm2d))
    step_fn = make_step_fn(cfg, steps_per_epoch=4)
    batch = {"sketch": torch.rand(2, 3, 32, 32), "photo": torch.rand(2, 3, 32, 32), "label": torch.tensor([0, 1])}
    step_fn(net, batch, 3)["loss"].backward()  # step 3 < 1 epoch x 4 steps: warm-up
    head = {id(q) for q in net.extractor.last_layer().parameters()}
    for q in net.extractor.parameters():
        assert (q.grad is not None) == (id(q) in head)
    assert all(q.grad is not None for q in net.generator.parameters())
    net.zero_grad(set_to_none=True)
    step_fn(net, batch, 4)["loss"].backward()  # after the warm-up everything trains
    assert all(q.grad is not None for q in net.extractor.parameters())


def test_param_groups_give_the_official_learning_rates_and_betas() -> None:
    cfg = parse_config(Config, load_recipe("sbir/sketchy21", ["model.pretrained=null"]))
    net = ACNet(3, backbone="resnet10t", emb_dim=8, generator_channels=4, generator_blocks=1)
    opt = build_optimizer(param_groups(net, cfg.train), cfg.train)
    got = [(g["lr"], tuple(g["betas"]), len(g["params"])) for g in opt.param_groups]
    assert isinstance(opt, torch.optim.Adam)
    assert [round(lr, 12) for lr, _, _ in got] == [1e-5, 1e-3, 1e-3, 1e-4]
    assert [b for _, b, _ in got] == [(0.9, 0.999), (0.9, 0.999), (0.5, 0.999), (0.5, 0.999)]
    assert got[1][2] == 1 and got[2][2] == len(list(net.generator.parameters()))


def test_pretrained_state_dict_file_loads_all_but_the_head(tmp_path) -> None:
    import timm

    source = timm.create_model("resnet10t", num_classes=1000)  # an ImageNet-style file: 1000-way fc
    torch.save({"state_dict": source.state_dict()}, tmp_path / "r10t.pth")
    e = Extractor("resnet10t", 8, pretrained=str(tmp_path / "r10t.pth"))
    mine = e.backbone.state_dict()
    for k, v in source.state_dict().items():
        if not k.startswith("fc."):
            assert torch.equal(mine[k], v), k
    assert mine["fc.weight"].shape == (8, 512)  # the embedding layer stays freshly initialised


@pytest.mark.parametrize("backbone", ["resnet50", "vgg16"])
def test_warmup_freezes_what_acnet_freezes(backbone: str) -> None:
    """ACNet freezes ``list(backbone.parameters())[:-2]`` in epoch 1; set_warmup must leave the same two trainable."""
    with torch.device("meta"):  # shapes only: VGG-16 has 138 M parameters
        e = Extractor(backbone, 512)
    e.set_warmup(True)
    params = list(e.backbone.parameters())
    assert [p.requires_grad for p in params] == [False] * (len(params) - 2) + [True, True]
    assert params[-2].shape == (512, 4096 if backbone == "vgg16" else 2048)
    e.set_warmup(False)
    assert all(p.requires_grad for p in params)
