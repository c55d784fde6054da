"""Learning test: on the synthetic hierarchy, DGP trained on the 12 seen classifiers predicts unseen
classifiers that classify unseen-class features far above chance (and far above the untrained model)."""

from __future__ import annotations

from pathlib import Path

import torch

from zsk.core.recipe import load_recipe, parse_config
from zsk.tasks.gzsl.config import Config
from zsk.tasks.gzsl.data import load_graph_data, load_targets, write_sample
from zsk.tasks.gzsl.evaluate import evaluate_classifiers
from zsk.tasks.gzsl.losses import classifier_l2_loss
from zsk.tasks.gzsl.train import build_gnn, build_operators


def test_dgp_learns_unseen_classifiers(tmp_path: Path) -> None:
    torch.manual_seed(0)
    write_sample(tmp_path)
    cfg = parse_config(Config, load_recipe("gzsl/demo", [f"data.root={tmp_path}", "eval.testset=all"]))
    data = load_graph_data(cfg)
    targets = load_targets(cfg, data, None)
    x = torch.from_numpy(data.vectors)
    ops = build_operators(cfg, data)
    model = build_gnn(cfg, x.shape[1], targets.shape[1])
    seen = torch.from_numpy(data.seen_idx)
    device = torch.device("cpu")

    def hit1() -> float:
        model.eval()
        with torch.no_grad():
            r = evaluate_classifiers(cfg, data, model(x, ops), None, device)
        model.train()
        return r["hit@1"]

    before = hit1()
    optim = torch.optim.Adam(model.parameters(), lr=1e-3, weight_decay=5e-4)  # spec "Loss and training"
    losses = []
    for _ in range(150):
        optim.zero_grad()
        loss = classifier_l2_loss(model(x, ops)[seen], targets)
        loss.backward()
        optim.step()
        losses.append(loss.item())
    after = hit1()
    chance = 1 / 24  # 24 unseen candidates
    assert losses[-1] < 0.5 * losses[0]
    assert after > 5 * chance, (before, after)
    assert after > before + 0.1, (before, after)
