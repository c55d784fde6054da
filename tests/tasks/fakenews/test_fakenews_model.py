"""Model shapes, the fusion head's input size, metrics against scikit-learn, checkpoint round trip, bench."""

from __future__ import annotations

import json

import pytest
import torch
from sklearn.metrics import accuracy_score, confusion_matrix, f1_score, precision_score, recall_score

from zsk.core.bench import trainer_step
from zsk.core.recipe import load_recipe, parse_config
from zsk.metrics.confusion import ConfusionMatrix
from zsk.tasks.fakenews.config import Config, EncoderConfig
from zsk.tasks.fakenews.evaluate import classification_metrics
from zsk.tasks.fakenews.hooks import bench_spec, info
from zsk.tasks.fakenews.model import (
    FakeNewsClassifier,
    FusionHead,
    TransformerBranch,
    encoder_from_config,
    random_encoder_config,
)
from zsk.tasks.fakenews.train import param_groups


def branch(hidden: int, arch: str = "bert", classes: int = 2, vocab: int = 50) -> TransformerBranch:
    enc = EncoderConfig(arch=arch, hidden_size=hidden, num_layers=1, num_heads=2, intermediate_size=2 * hidden,
                        max_position_embeddings=40)
    return TransformerBranch(encoder_from_config(random_encoder_config(enc, vocab, 0)), classes)


def inputs(n: int, length: int, names=("a", "b")) -> dict:
    g = torch.Generator().manual_seed(0)
    return {k: {"input_ids": torch.randint(1, 50, (n, length), generator=g),
                "attention_mask": torch.ones(n, length, dtype=torch.long)} for k in names}


def test_branch_shapes_and_no_unused_pooler():
    b = branch(16)
    assert b.encoder.pooler is None  # [CLS] pooling: no dangling pooler weights
    x = inputs(3, 7, ("a",))["a"]
    assert b(**x).shape == (3, 2) and b.features(**x).shape == (3, 16)
    assert b.word_embeddings.weight.shape == (50, 16)


@pytest.mark.parametrize("fusion, expected", [("features", 16 + 24), ("scores", 3 * 2)])
def test_fusion_head_input_size(fusion, expected):
    torch.manual_seed(0)
    model = FakeNewsClassifier({"a": branch(16, "roberta", 3), "b": branch(24, "bert", 3)}, 3, fusion, fusion_hidden=8)
    assert model.fusion_dim() == expected
    assert model.fusion_head.mlp[0].in_features == expected and model.fusion_head.mlp[0].out_features == 8
    model.eval()
    x = inputs(4, 6)
    fused = model.fusion_inputs(x)
    assert fused.shape == (4, expected)
    assert torch.allclose(model(inputs=x), model(fused=fused))
    # paper dimensions: two 1024-d [CLS] vectors -> 2048 -> 512 -> 2
    head = FusionHead(2048, 2)
    assert [m.weight.shape for m in head.mlp if hasattr(m, "weight")] == [(512, 2048), (2, 512)]


def test_fusion_standardisation_uses_train_statistics():
    head = FusionHead(3, 2, hidden=4, dropout=0.0)
    feats = torch.tensor([[1.0, 10.0, 0.0], [3.0, 30.0, 0.0]])
    head.set_input_stats(feats)
    assert torch.allclose(head.input_mean, torch.tensor([2.0, 20.0, 0.0]))
    assert torch.allclose(head.input_std[:2], torch.tensor([1.0, 10.0]))
    plain = FusionHead(3, 2, hidden=4, dropout=0.0, standardize=False)
    plain.load_state_dict(head.state_dict())
    z = (feats - head.input_mean) / head.input_std
    assert torch.allclose(head(feats), plain(z))
    assert "input_mean" in head.state_dict()  # saved with the checkpoint


def test_single_branch_model_is_the_branch():
    b = branch(16)
    model = FakeNewsClassifier({"only": b}, 2).eval()
    x = inputs(2, 5, ("only",))
    assert model.fusion_head is None
    assert torch.equal(model(inputs=x), b(**x["only"]))


def test_metrics_match_scikit_learn_on_random_labels():
    g = torch.Generator().manual_seed(3)
    for classes in (2, 4):
        y = torch.randint(0, classes, (200,), generator=g)
        p = torch.randint(0, classes, (200,), generator=g)
        cm = ConfusionMatrix(classes)
        cm.update(p, y)
        m = classification_metrics(cm)
        assert m["accuracy"] == pytest.approx(accuracy_score(y, p))
        assert m["f1_weighted"] == pytest.approx(f1_score(y, p, average="weighted"))
        assert m["precision_weighted"] == pytest.approx(precision_score(y, p, average="weighted", zero_division=0))
        assert m["recall_weighted"] == pytest.approx(recall_score(y, p, average="weighted"))
        assert m["f1_macro"] == pytest.approx(f1_score(y, p, average="macro"))
        assert m["confusion"] == confusion_matrix(y, p).tolist()


def test_weight_decay_groups_exclude_bias_and_norms():
    b = branch(8)
    decay, no_decay = param_groups(b, 0.01)
    named = {id(p): n for n, p in b.named_parameters()}
    assert decay["weight_decay"] == 0.01 and no_decay["weight_decay"] == 0.0
    assert all(not named[id(p)].endswith("bias") and "LayerNorm" not in named[id(p)] for p in decay["params"])
    assert any("LayerNorm" in named[id(p)] for p in no_decay["params"])
    assert len(decay["params"]) + len(no_decay["params"]) == len(list(b.parameters()))


def paper_cfg(name: str) -> Config:
    return parse_config(Config, load_recipe(f"fakenews/{name}"))


@pytest.mark.parametrize("name", ["constraint_fusion", "constraint_roberta", "constraint_ctbert", "demo"])
def test_paper_recipes_parse(name):
    cfg = paper_cfg(name)
    if name != "demo":
        assert cfg.train.lr == 2e-5 and cfg.train.batch_size == 64 and cfg.train.epochs == 30
        assert cfg.eval.batch_size == 128 and cfg.data.max_length == 128
        assert cfg.train.heated_softmax.alphas == [4.0, 1.0, 0.5] and cfg.train.heated_softmax.milestones == [10, 20]
    if name in ("constraint_fusion", "constraint_ctbert"):
        assert cfg.model.branches["ctbert"].pretrained == "digitalepidemiologylab/covid-twitter-bert-v2"
        assert cfg.model.branches["ctbert"].new_tokens == "paper"


def test_info_without_data_and_bench_on_demo_architecture(tmp_path):
    cfg = paper_cfg("demo")
    cfg.data.root = str(tmp_path / "nowhere")
    out = info(cfg)
    assert out["splits"]["train"].endswith("(missing)")
    assert set(out["branches"]) == {"roberta", "ctbert"}
    json.dumps(out)
    spec = bench_spec(cfg, torch.device("cpu"), 4)
    step, trainer = trainer_step(spec, cfg, torch.device("cpu"))
    step()
    assert trainer.step == 1 and isinstance(trainer.optimizer, torch.optim.AdamW)  # the recipe's optimizer
    spec.infer_step()
    assert spec.train_samples == 4 and spec.infer_samples == 4 and spec.infer_unit == "texts"


def test_mean_and_std_over_runs():
    from zsk.metrics.summary import summarize_runs
    from zsk.tasks.fakenews.cli import TASK

    out = summarize_runs([{"f1_weighted": 0.9, "accuracy": 0.8}, {"f1_weighted": 0.8, "accuracy": 0.8}],
                         TASK.summary_keys)
    assert out["runs"] == 2
    assert out["f1_weighted"]["mean"] == pytest.approx(0.85)
    assert out["f1_weighted"]["std"] == pytest.approx((2 * 0.05**2 / 1) ** 0.5)  # sample std, n - 1 = 1
    assert out["accuracy"] == {"mean": pytest.approx(0.8), "std": 0.0}
