"""Learning test: MetAug pretraining on the sample set makes the L and ab views of held-out images find each other
(cross-view nearest neighbour: the pretext task the contrastive loss trains) far better than the untrained
encoders: the L embedding's nearest ab embedding is of the same class far above chance (0.25), and the positive
pair's similarity rises above the mean pair's."""

from __future__ import annotations

import numpy as np
import torch
from PIL import Image

from zsk.core.dist import get_dist
from zsk.core.recipe import load_recipe, parse_config
from zsk.core.run import RunContext
from zsk.core.stages import Stage, run_stages
from zsk.tasks.contrast import data as cdata
from zsk.tasks.contrast.config import Config
from zsk.tasks.contrast.train import build_model, load_splits, pretrain_trainer


@torch.no_grad()
def cross_view(net, images, cfg: Config) -> tuple[float, float]:  # noqa: ANN001
    """(class agreement of each L embedding's nearest ab embedding, mean positive-pair minus mean pair similarity)."""
    net.eval()
    tf = cdata.test_transform(cfg.data)
    x = torch.stack([cdata.to_lab_tensor(np.asarray(tf(Image.fromarray(images.image(i))), np.uint8))
                     for i in range(len(images))])
    f_l, f_ab, _ = net.encoder(x, 8)
    sim = f_l @ f_ab.T
    y = torch.as_tensor(images.labels)
    net.train()
    return float((y[sim.argmax(1)] == y).float().mean()), float(sim.diag().mean() - sim.mean())


def test_pretraining_beats_the_untrained_encoder(tmp_path) -> None:  # noqa: ANN001
    cdata.write_sample(tmp_path / "data", per_class_train=16, per_class_val=8)
    cfg = parse_config(Config, load_recipe("contrast/demo", [f"data.root={tmp_path / 'data'}", "train.steps=40",
                                                             "train.batch_size=16"]))
    torch.manual_seed(0)
    splits = load_splits(cfg)
    net = build_model(cfg, len(splits.pretrain), len(splits.classes))
    val = splits.probe_val.images
    before = cross_view(net, val, cfg)
    ctx = RunContext(task="contrast", cfg=cfg, recipe={}, run_dir=tmp_path / "run", device=torch.device("cpu"),
                     dist=get_dist())
    ctx.run_dir.mkdir()
    run_stages(ctx, [Stage("pretrain", lambda t: pretrain_trainer(ctx, t, net, splits, {}))], final_model=net)
    after = cross_view(net, val, cfg)
    assert before[0] <= 0.4 and after[0] >= before[0] + 0.3, (before, after)
    assert after[1] >= before[1] + 0.1, (before, after)
