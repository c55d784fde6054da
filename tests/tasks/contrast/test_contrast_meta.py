"""The two-step MetAug iteration (jiangmengli/metaug train_MetAug.py): the encoder step leaves the generators alone,
and the meta step's second-order gradient (through the virtual encoder step, torch.func.functional_call) matches
central finite differences in float64."""

from __future__ import annotations

import torch

from zsk.core.recipe import load_recipe, parse_config
from zsk.tasks.contrast.config import Config
from zsk.tasks.contrast.train import MetaStep, MetAugStep, build_model, virtual_encoder_loss


def _setup(dtype: torch.dtype = torch.float64, **loss: float):  # noqa: ANN202
    sets = ["data.root=.", "model.nce_k=5", "model.channels=[3,4,4,4,4]", "model.fc_dim=6", "model.feat_dim=5",
            "model.generator_hidden=6", *(f"train.loss.{k}={v}" for k, v in loss.items())]
    cfg = parse_config(Config, load_recipe("contrast/demo", sets))
    torch.manual_seed(0)
    net = build_model(cfg, 12, 3).to(dtype)
    step = MetAugStep(net, cfg, cfg.train)
    g = torch.Generator().manual_seed(1)
    x = torch.randn(4, 3, 64, 64, generator=g, dtype=dtype)
    index = torch.tensor([0, 3, 5, 7])
    return cfg, net, step, x, index


def _meta_loss(step: MetAugStep, x: torch.Tensor, index: torch.Tensor, lr: float) -> torch.Tensor:
    torch.manual_seed(123)  # the same negatives every call
    return virtual_encoder_loss(step, x, index, margin=True, virtual_lr=lr, update_memory=False)


def test_meta_gradient_matches_finite_differences() -> None:
    cfg, net, step, x, index = _setup(beta=0.5, eta=1.0)
    params = net.generator_parameters()
    for p in params:
        p.requires_grad_(True)
    lr = 0.5  # a large virtual step makes the second-order path visible
    grads = torch.autograd.grad(_meta_loss(step, x, index, lr), params)
    grads0 = torch.autograd.grad(_meta_loss(step, x, index, 0.0), params)
    checked = 0
    eps = 1e-6
    for p, gp in [(params[0], grads[0]), (params[-2], grads[-2])]:
        flat = p.data.view(-1)
        for i in range(0, flat.numel(), max(1, flat.numel() // 4)):
            old = float(flat[i])
            flat[i] = old + eps
            up = float(_meta_loss(step, x, index, lr).detach())
            flat[i] = old - eps
            down = float(_meta_loss(step, x, index, lr).detach())
            flat[i] = old
            fd = (up - down) / (2 * eps)
            assert abs(fd - float(gp.view(-1)[i])) <= 1e-6 + 1e-5 * abs(fd), (i, fd, float(gp.view(-1)[i]))
            checked += 1
    assert checked >= 8
    # the virtual step matters: the gradient differs from the one without it (first order only)
    assert any(not torch.allclose(a, b, atol=1e-9) for a, b in zip(grads, grads0, strict=True))


def test_virtual_pass_does_not_touch_the_real_bn_statistics() -> None:
    cfg, net, step, x, index = _setup()
    net.train()
    bn = net.encoder.ori.fc6[1]
    _meta_loss(step, x, index, 0.1)
    # one real pass (as train_MetAug.py's recomputation) updates the statistics; the virtual pass runs on copies
    assert int(bn.num_batches_tracked) == 1
    mean_after_meta = bn.running_mean.clone()
    bn.reset_running_stats()
    net.encoder(x, 8)
    assert torch.allclose(bn.running_mean, mean_after_meta, atol=1e-12)


def test_encoder_step_leaves_generators_and_meta_step_leaves_encoder() -> None:
    cfg, net, step, x, index = _setup(dtype=torch.float32)
    y = torch.tensor([0, 1, 2, 0])
    gen_before = [p.detach().clone() for p in net.generator_parameters()]
    out = step(net, (x.float(), y, index), 0)
    out["loss"].backward()
    assert all(p.grad is None for p in net.generator_parameters())
    assert any(p.grad is not None and p.grad.abs().sum() > 0 for p in net.encoder_parameters())
    enc_before = [p.detach().clone() for p in net.encoder_parameters()]
    meta = MetaStep(step, cfg.train)
    meta.meta_update(*step.last)
    assert all(torch.equal(a, b) for a, b in zip(enc_before, net.encoder_parameters(), strict=True))
    assert any(not torch.equal(a, b) for a, b in zip(gen_before, net.generator_parameters(), strict=True))
    assert all(not p.requires_grad for p in net.generator_parameters())
