"""ACNet (sbir) replayed against the official figures of leftthomas/ACNet (tools/parity/sbir.py --save): the same
seeded weights (sbir_shims.seed_weights) and inputs through zsk alone; forward passes, the NormSoftmax loss,
two training steps through zsk's Trainer (warm-up, then full) and the four retrieval metrics."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
from common import assert_close as close  # noqa: E402  (tools/parity, see conftest.py)
from common import load_figures  # noqa: E402
from sbir_shims import seed_weights  # noqa: E402

from zsk.core.bench import BenchSpec, trainer_step
from zsk.core.recipe import load_recipe, parse_config
from zsk.metrics.ranking import ranking_metrics
from zsk.tasks.sbir.config import Config
from zsk.tasks.sbir.losses import normalized_softmax_loss
from zsk.tasks.sbir.model import ACNet, Discriminator, Extractor, Generator
from zsk.tasks.sbir.train import make_step_fn, param_groups

OFFICIAL_COMMIT = "60387b1c0429282840fba0fbf76f372b7187f02b"  # leftthomas/ACNet
FIG = Path(__file__).parent / "sbir"


@pytest.fixture(scope="module")
def figures():
    return load_figures(FIG, "sbir")


def test_figures_name_the_official_commit(figures):
    _, meta = figures
    assert meta["official_commit"] == OFFICIAL_COMMIT
    assert all(r["verdict"] != "DIFFERENT" for r in meta["rows"])


def test_networks_match_official(figures):
    f, meta = figures
    seed, x = meta["seed"], torch.from_numpy(f["input/image"])
    g, d = Generator(8, 8), Discriminator(8)
    seed_weights(g, seed + 1)
    seed_weights(d, seed + 2)
    with torch.no_grad():
        close(g(x), f["generator forward (8 ch, 8 blocks)"])
        close(d(x), f["discriminator patch logits"])
        e = Extractor("resnet50", 512).eval()
        seed_weights(e, seed + 3, scale=0.02)
        close(e(x), f["extractor resnet50 embedding (max pool, d = 512, L2)"])


def test_normalized_softmax_matches_pytorch_metric_learning(figures):
    f, _ = figures
    emb, w = torch.from_numpy(f["loss/embeddings"]), torch.from_numpy(f["loss/W"])
    close(normalized_softmax_loss(emb, torch.arange(12) % 5, w.T, 0.05), f["NormalizedSoftmaxLoss value"])


def test_metrics_match_official(figures):
    f, _ = figures
    res = ranking_metrics(torch.from_numpy(f["metrics/queries"]), torch.arange(80) % 6,
                          torch.from_numpy(f["metrics/gallery"]), torch.arange(300) % 6)
    for key in ("mAP@all", "mAP@200", "P@100", "P@200"):
        close(res[key], f[f"metric {key} (SAKE protocol)"], tol=1e-9)


def test_two_training_steps_match_official(figures):
    f, meta = figures
    seed, size, dim, classes = meta["seed"], meta["step_size"], meta["step_dim"], meta["step_classes"]
    cfg = parse_config(Config, load_recipe("sbir/sketchy21", ["model.pretrained=null", f"model.emb_dim={dim}",
                                                             f"data.image_size={size}", "runtime.device=cpu"]))
    model = ACNet(classes, "resnet50", dim)
    seed_weights(model, seed + 20, scale=0.02)
    spec = BenchSpec(model=model, step_fn=make_step_fn(cfg, steps_per_epoch=1), batch=None, train_cfg=cfg.train,
                     infer_step=lambda: None, train_samples=meta["step_batch"], infer_samples=1,
                     param_groups=param_groups(model, cfg.train))
    _, trainer = trainer_step(spec, cfg, torch.device("cpu"))
    for k, what in enumerate(("warm-up step", "full step")):
        batch = {name: torch.from_numpy(f[f"step{k}/{name}"]) for name in ("sketch", "photo", "label")}
        out = trainer.train_step(batch)
        close(out["class"], f[f"{what}: L_cls (mean of sketch, photo, fake)"])
        close(out["generator"], f[f"{what}: L_G (LSGAN)"])
        close(out["identity"], f[f"{what}: L_id (L1)"])
        close(out["discriminator"], f[f"{what}: L_D"])
        close(model.proxies.T, f[f"{what}: proxies after Adam"])
        for part, module in (("G", model.generator), ("D", model.discriminator)):
            mask = f[f"step{k}/{part} mask"]
            flat = torch.cat([p.detach().flatten() for p in module.parameters()]).numpy()
            assert mask.sum() > 0.5 * mask.size
            close(flat[mask], f[f"step{k}/{part} after"][mask])
        params = dict(model.extractor.named_parameters())
        for name in meta["kept_extractor"]:
            mask = f[f"step{k}/E {name} mask"]
            close(params[name].detach().numpy()[mask], f[f"step{k}/E {name} after"][mask])
        if k == 0:  # the warm-up froze the backbone: its weights are the seeded ones, exactly
            frozen = np.asarray(f["step0/E backbone.conv1.weight after"])
            assert np.array_equal(params["backbone.conv1.weight"].detach().numpy(), frozen)
