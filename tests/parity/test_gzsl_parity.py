"""gzsl against the figures of DGP's official code (yinboc/DGP), replayed through zsk alone.

tools/parity/gzsl.py --official DGP --save tests/parity/gzsl wrote the seeded inputs, the official weights
and the official outputs; this test rebuilds zsk's side from them (no official checkout needed).
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

HERE = Path(__file__).resolve().parent

from common import load_figures  # noqa: E402

from zsk.core.trainer import TrainConfig, build_optimizer  # noqa: E402
from zsk.data.graphs import ancestor_groups  # noqa: E402
from zsk.tasks.gzsl.config import Config, ModelConfig  # noqa: E402
from zsk.tasks.gzsl.data import eval_transform, normalize_inputs  # noqa: E402
from zsk.tasks.gzsl.losses import classifier_l2_loss  # noqa: E402
from zsk.tasks.gzsl.metrics import HitAtK, append_bias_input, candidate_indices, per_class_top1  # noqa: E402
from zsk.tasks.gzsl.train import build_gnn, operators_for  # noqa: E402

FIG, META = load_figures(HERE / "gzsl", "gzsl")
TOL = 1e-5
OFFICIAL_COMMIT = "b497ebba0f43b21a77059c7fc3eb4e5d599c5679"

PAIRS = {
    "DGP": ("dgp", [("conv1.w", "descendant_phase.linear.weight", True), ("conv1.b", "descendant_phase.linear.bias", False),
                    ("conv-last.w", "ancestor_phase.linear.weight", True), ("conv-last.b", "ancestor_phase.linear.bias", False),
                    ("a_att", "descendant_phase.distance_weights", False),
                    ("r_att", "ancestor_phase.distance_weights", False)]),
    "GCN_Dense": ("gcn_dense", [("conv1.w", "descendant_phase.linear.weight", True),
                                ("conv1.b", "descendant_phase.linear.bias", False),
                                ("conv-last.w", "ancestor_phase.linear.weight", True),
                                ("conv-last.b", "ancestor_phase.linear.bias", False)]),
    "SGCN": ("sgcn", [("conv1.w", "layers.0.linear.weight", True), ("conv1.b", "layers.0.bias", False),
                      ("conv-last.w", "layers.1.linear.weight", True), ("conv-last.b", "layers.1.bias", False)]),
}


def diff(a, b) -> float:
    a = a.detach().numpy() if isinstance(a, torch.Tensor) else np.asarray(a)
    return float(np.max(np.abs(np.asarray(a, dtype=np.float64) - np.asarray(b, dtype=np.float64))))


def test_figures_name_the_official_commit() -> None:
    assert META["official_commit"] == OFFICIAL_COMMIT
    assert all(r["verdict"] != "DIFFERENT" for r in META["rows"])
    wn = META.get("wordnet_graph")
    if wn:  # make_induced_graph.py on WordNet 3.0 with DGP's split and xml wnids
        assert (wn["official_nodes"], wn["official_edges"]) == (32324, 32544)
        assert wn["nodes_equal_in_order"] and wn["edges_equal_in_order"]


@pytest.mark.parametrize("name", list(PAIRS))
def test_model_forward_loss_grads_step(name: str) -> None:
    kind, pairs = PAIRS[name]
    x, target = torch.from_numpy(FIG["inputs/x"]), torch.from_numpy(FIG["inputs/target"])
    edges = FIG["inputs/edges"]
    n, seen = x.shape[0], target.shape[0]
    cfg = Config(model=ModelConfig(name=kind, hidden=[META["n_hidden"]]))
    model = build_gnn(cfg, META["n_in"], META["n_out"])
    ops = operators_for(cfg, n, edges, ancestor_groups(n, edges))
    params = dict(model.named_parameters())
    with torch.no_grad():
        for a, b, t in pairs:
            w = torch.from_numpy(FIG[f"{name}/weights/{a}"])
            if t:
                params[b].copy_(w.T)
            else:
                params[b][: w.shape[0]].copy_(w)
    model.eval()
    assert diff(model(x, ops), FIG[f"{name} forward (eval)"]) <= TOL
    model.train()
    torch.manual_seed(0)
    out = model(x, ops)
    assert diff(out, FIG[f"{name} forward (train mode, dropout)"]) <= TOL
    loss = classifier_l2_loss(out[:seen], target)
    assert diff(loss, FIG[f"{name} loss l2 (utils.l2_loss)"]) <= TOL
    opt = build_optimizer([{"params": list(model.parameters())}],
                          TrainConfig(optimizer="adam", lr=1e-3, weight_decay=5e-4, epochs=1))
    loss.backward()
    assert diff(params[pairs[0][1]].grad.T, FIG[f"{name}/grad_first"]) <= TOL
    opt.step()
    trainable = sum(p.numel() for p in model.parameters() if p.requires_grad)
    count_key = next(k for k in FIG if k.startswith(f"{name} parameter count"))
    assert trainable == int(FIG[count_key])


def test_hit_at_k_and_awa2_top1() -> None:
    pred, feats = torch.from_numpy(FIG["metrics/pred"]), torch.from_numpy(FIG["metrics/feats"])
    n_test, per, d = feats.shape
    n_train = pred.shape[0] - n_test
    for gzsl, tag in ((False, "ZSL"), (True, "GZSL +train")):
        cand = candidate_indices(list(range(n_train, n_train + n_test)), list(range(n_train)), gzsl)
        pos = {int(c): k for k, c in enumerate(cand)}
        f = append_bias_input(feats.reshape(-1, d), d + 1)
        labels = torch.tensor([pos[n_train + c] for c in range(n_test) for _ in range(per)])
        scores = f @ pred[torch.from_numpy(cand)].T
        hits = HitAtK([1, 2, 5, 10, 20])
        hits.update(scores, labels)
        ours = hits.compute()
        assert diff([ours[f"hit@{k}"] for k in (1, 2, 5, 10, 20)],
                    FIG[f"hit@1/2/5/10/20 ({tag}, evaluate_imagenet.py)"]) <= TOL
        top1 = per_class_top1(scores.argmax(1), labels, len(cand))
        assert diff(top1, FIG[f"AwA2 mean per-class top-1 ({tag}, evaluate_awa2.py)"]) <= TOL


def test_eval_transform_and_vector_normalisation() -> None:
    img = Image.fromarray(FIG["transform/image"])
    assert diff(eval_transform(256, 224)(img), FIG["eval transform (Resize 256, CenterCrop 224, normalise)"]) <= TOL
    assert diff(normalize_inputs(FIG["reader/raw_vectors"], "l2"),
                FIG["reader: graph vectors, F.normalize on load (train_gcn_*.py)"]) <= TOL
    assert json.loads((HERE / "gzsl" / "gzsl.json").read_text())["task"] == "gzsl"


def test_glove_lookup_follows_materials_glove(tmp_path: Path) -> None:
    from zsk.data.embeddings import read_glove
    from zsk.tasks.gzsl.word_vectors import embed_lemmas

    path = tmp_path / "glove.synthetic.txt"
    path.write_text(str(FIG["glove/text"]))
    lemmas = [str(s).split("|") for s in FIG["glove/lemmas"]]
    ours = embed_lemmas(read_glove(path), lemmas, normalize=False)
    assert diff(ours, FIG["GloVe lookup of lemma lists (materials/glove.py, case kept)"]) <= TOL


def test_bf16_rows_are_measurements() -> None:
    rows = {r["component"]: r for r in META["rows"]}
    for part in ("forward", "loss l2", "grads"):
        row = rows[f"DGP {part}, bf16 autocast vs fp32 (CPU)"]
        assert row["verdict"].startswith("measured:") and 0 < row["max_abs_diff"] < 0.05
