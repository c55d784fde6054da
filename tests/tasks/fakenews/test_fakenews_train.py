"""The task contract's stages for fakenews: `train.stages.<name>` blocks, the demo recipe's embedded
sample data, and the hard-example pool as a Trainer callback (kept across --resume)."""

from __future__ import annotations

import json
from pathlib import Path
from types import SimpleNamespace

import pytest
import torch
from typer.testing import CliRunner

from zsk.tasks.fakenews.cli import app
from zsk.tasks.fakenews.config import Config, EncoderConfig, HardExamplesConfig
from zsk.tasks.fakenews.data import TokenizedTexts, encode_texts, write_sample
from zsk.tasks.fakenews.model import (
    Branch,
    FakeNewsClassifier,
    TransformerBranch,
    encoder_from_config,
    random_encoder_config,
)
from zsk.tasks.fakenews.tokenization import build_wordpiece_tokenizer
from zsk.tasks.fakenews.train import HardExamplePool

runner = CliRunner()
TINY = ("{ctbert: {encoder: {hidden_size: 16, num_layers: 1, num_heads: 2, intermediate_size: 32, "
        "max_position_embeddings: 64}, new_tokens: paper}}")


def invoke(*args: object, input: str | None = None):
    return runner.invoke(app, [str(a) for a in args], input=input)


@pytest.fixture(scope="module")
def data(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("fakenews-data")
    write_sample(root)
    return root


def _steps(run: Path) -> dict[str, int]:
    return {stage: torch.load(run / f"last-{stage}.pt", weights_only=True)["step"] for stage in ("roberta", "ctbert", "fusion")}


def test_demo_recipe_trains_without_a_written_sample(tmp_path, monkeypatch):
    cache = tmp_path / "cache"
    monkeypatch.setenv("ZSK_CACHE", str(cache))
    run = tmp_path / "run"
    r = invoke("train", "--recipe", "fakenews/demo", "--set", "train.max_steps=2", "--set", "train.epochs=1",
               "--set", "train.stages.fusion.max_steps=2", "--out", run, "--json", "--quiet")
    assert r.exit_code == 0, r.output
    sample = cache / "samples" / "fakenews-v1"
    assert (sample / "Constraint_Train.csv").is_file() and (sample / "english_test_with_labels.csv").is_file()
    recipe = (run / "recipe.yaml").read_text()
    assert "@sample" not in recipe and str(sample) in recipe
    out = json.loads(r.stdout.strip().splitlines()[-1])
    for name in ("best.pt", "last.pt", "eval.json"):
        assert (run / name).is_file(), name
    # flat enough for mean ± std over --runs: the test metrics under their own names, plus val_* / test_*
    assert out["f1_weighted"] == out["test_f1_weighted"] and "val_f1_weighted" in out


def test_stage_blocks_override_train_keys_per_stage(tmp_path, data):
    run = tmp_path / "run"
    r = invoke("train", "--recipe", "fakenews/demo", "--set", f"data.root={data}", "--set", "train.max_steps=3",
               "--set", "train.epochs=1", "--set", "train.stages.roberta.max_steps=2",
               "--set", "train.stages.ctbert.lr=5e-4", "--set", "train.stages.fusion.max_steps=1",
               "--set", "train.log_every=1", "--out", run, "--json", "--quiet")
    assert r.exit_code == 0, r.output
    assert _steps(run) == {"roberta": 2, "ctbert": 3, "fusion": 1}
    rows = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    lr = {row["stage"]: row["lr"] for row in rows if row["kind"] == "train" and row["step"] == 2}
    # one epoch of 10 steps, 1 of warm-up, then linear decay: the second step trains at 0.9 x its stage's lr
    assert lr["ctbert"] == pytest.approx(0.9 * 5e-4) and lr["roberta"] == pytest.approx(0.9 * 1e-3)
    assert torch.load(run / "last-ctbert.pt", weights_only=True)["extra"]["branch"] == "ctbert"


def test_unknown_stage_block_exits_2(tmp_path, data):
    r = invoke("train", "--recipe", "fakenews/demo", "--set", f"data.root={data}", "--set", "train.stages.bert.lr=1",
               "--out", tmp_path / "run")
    assert r.exit_code == 2 and "train.stages.bert" in r.output and "roberta, ctbert, fusion" in r.output
    r = invoke("train", "--recipe", "fakenews/demo", "--set", f"data.root={data}", "--set", "train.fusion.epochs=1",
               "--out", tmp_path / "run2")
    assert r.exit_code == 2 and "train.fusion" in r.output


def test_hard_example_pool_is_a_callback_with_its_state_in_trainer_extra():
    texts = ["covid cases rise fast today", "miracle cure hoax exposed now", "official tests confirmed new cases",
             "secret garlic remedy shocking truth"] * 4
    labels = [0, 1, 0, 1] * 4
    torch.manual_seed(0)
    tok = build_wordpiece_tokenizer(texts, vocab_size=80, lowercase=True)
    enc = EncoderConfig(hidden_size=8, num_layers=1, num_heads=2, intermediate_size=16, max_position_embeddings=32)
    branch = TransformerBranch(encoder_from_config(random_encoder_config(enc, len(tok), tok.pad_token_id)), 2)
    model = FakeNewsClassifier({"b": branch}, 2)
    ds = TokenizedTexts({"b": encode_texts(tok, texts, 16)}, labels, {"b": tok.pad_token_id})
    cfg = Config()
    branches = {"b": Branch("b", branch, tok, [], "random-init")}
    with torch.no_grad():  # the untrained model's predictions: the pool takes its mistakes
        wrong = int((model.eval()(inputs=ds.collate(list(range(len(ds))))["inputs"]).argmax(-1) != ds.labels).sum())
    model.train()
    assert wrong > 0

    def make_pool() -> HardExamplePool:
        return HardExamplePool([(ds, texts)], branches, cfg, HardExamplesConfig(enabled=True, source="train"), "",
                               lambda m, b: m(inputs=b["inputs"]), torch.device("cpu"))

    trainer = SimpleNamespace(step=2, stop_at=6, model=model, extra={"classes": ["real", "fake"]})
    pool = make_pool().bind(trainer)  # type: ignore[arg-type]
    pool.on_eval_end(trainer, {})  # type: ignore[arg-type]
    state = trainer.extra["hard_examples"]
    assert state["rounds"] == 1 and len(state["texts"]) == len(state["labels"]) == wrong == len(pool)
    assert model.training  # the round ran in eval mode and handed the model back in training mode
    assert len(pool.dataset(ds)) == len(ds) + wrong
    trainer.step = trainer.stop_at  # no round after the last step
    pool.on_eval_end(trainer, {})  # type: ignore[arg-type]
    assert trainer.extra["hard_examples"]["rounds"] == 1
    # a resumed trainer restores `extra` from the checkpoint: a new pool bound to it continues with it
    resumed = SimpleNamespace(step=2, stop_at=6, model=model, extra=json.loads(json.dumps(trainer.extra)))
    again = make_pool().bind(resumed)  # type: ignore[arg-type]
    assert len(again) == wrong and len(again.dataset(ds)) == len(ds) + wrong


def test_resume_keeps_the_hard_example_pool(tmp_path, data):
    common = ["--recipe", "fakenews/demo", "--set", f"data.root={data}", "--set", f"model.branches={TINY}",
              "--set", "train.select=last", "--set", "train.batch_size=64", "--set", "train.epochs=2",
              "--set", "train.hard_examples.enabled=true", "--set", "train.hard_examples.source=train",
              "--set", f"train.hard_examples.synonyms={data / 'synonyms.txt'}", "--quiet", "--json"]
    r = invoke("train", *common, "--out", tmp_path / "full")
    assert r.exit_code == 0, r.output
    r = invoke("train", *common, "--set", "train.max_steps=7", "--out", tmp_path / "cut")
    assert r.exit_code == 0, r.output
    cut = torch.load(tmp_path / "cut" / "last.pt", weights_only=True)
    assert cut["step"] == 7 and cut["extra"]["hard_examples"]["rounds"] == 1  # grown after epoch 1 (step 5)
    r = invoke("train", *common, "--out", tmp_path / "cut", "--resume")
    assert r.exit_code == 0, r.output
    a = torch.load(tmp_path / "full" / "last.pt", weights_only=True)
    b = torch.load(tmp_path / "cut" / "last.pt", weights_only=True)
    assert a["step"] == b["step"] == 10
    assert a["extra"]["hard_examples"] == b["extra"]["hard_examples"]
    for k in a["model"]:
        assert torch.allclose(a["model"][k], b["model"][k], atol=1e-6), k
