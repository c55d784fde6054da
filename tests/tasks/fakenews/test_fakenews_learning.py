"""Learning test: fine-tuning with heated softmax + FGM + new tokens learns the synthetic corpus."""

from __future__ import annotations

import json

from typer.testing import CliRunner

from zsk.tasks.fakenews.cli import app
from zsk.tasks.fakenews.data import write_sample

BRANCH = ("{ctbert: {encoder: {hidden_size: 48, num_layers: 2, num_heads: 2, intermediate_size: 96, "
          "max_position_embeddings: 64}, tokenizer: {build_vocab_size: 600}, new_tokens: paper}}")


def test_training_reaches_high_weighted_f1(tmp_path):
    write_sample(tmp_path / "data")
    r = CliRunner().invoke(app, ["train", "--recipe", "fakenews/demo", "--set", f"data.root={tmp_path / 'data'}",
                                 "--set", f"model.branches={BRANCH}", "--set", "train.batch_size=16",
                                 "--out", str(tmp_path / "run"), "--json", "--quiet"])
    assert r.exit_code == 0, r.output
    summary = json.loads(r.stdout.strip().splitlines()[-1])
    evals = [json.loads(line) for line in (tmp_path / "run" / "metrics.jsonl").read_text().splitlines()
             if '"eval"' in line]
    # chance level is 0.5 (and 0.33 weighted F1 when one class is predicted for all)
    assert summary["test_f1_weighted"] >= 0.9
    assert summary["val_f1_weighted"] >= 0.9
    assert max(e["f1_weighted"] for e in evals) > evals[0]["f1_weighted"] or evals[0]["f1_weighted"] >= 0.9
    # the heated-up softmax schedule ran its three phases (alphas 2, 1, 0.5 of the demo recipe)
    alphas = [json.loads(line).get("alpha") for line in (tmp_path / "run" / "metrics.jsonl").read_text().splitlines()
              if '"train"' in line]
    assert {2.0, 1.0, 0.5} <= set(alphas)
