"""End-to-end: sample -> train (branches + fusion) -> eval --json -> predict (file and stdin) -> info,
fine-tuning from a Hugging Face directory saved locally, and bad inputs exiting 2."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
import torch
from typer.testing import CliRunner

from zsk.tasks.fakenews.cli import app

runner = CliRunner()
KEYS = {"accuracy", "f1_weighted", "precision_weighted", "recall_weighted", "f1_macro", "confusion"}
# a short version of recipes/fakenews/demo.yaml: both branches + fusion, a few steps each
FAST = ["--set", "train.max_steps=4", "--set", "train.stages.fusion.max_steps=3", "--set", "train.epochs=2",
        "--set", "train.stages.fusion.epochs=1", "--set", "train.log_every=2"]


def invoke(*args: str, input: str | bytes | None = None):
    return runner.invoke(app, [str(a) for a in args], input=input)


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    root = tmp_path_factory.mktemp("fakenews")
    data = root / "data"
    with pytest.MonkeyPatch.context() as mp:  # module-scoped: set up before the per-test cache isolation
        mp.setenv("ZSK_CACHE", str(root / "cache"))
        r = invoke("sample", data, "--json")
        assert r.exit_code == 0, r.output
        assert json.loads(r.stdout.strip().splitlines()[-1])["Constraint_Train.csv"] == 320
        run = root / "run"
        r = invoke("train", "--recipe", "fakenews/demo", "--set", f"data.root={data}", *FAST, "--out", run, "--json",
                   "--quiet")
        assert r.exit_code == 0, r.output
    # tokenised corpora went through the zsk cache: train, val, test for each of the two branches
    assert len(list((root / "cache" / "fakenews-tokens").glob("*.pt"))) == 6
    return data, run, json.loads(r.stdout.strip().splitlines()[-1])


def test_train_writes_run_and_stages(trained):
    data, run, summary = trained
    assert Path(summary["checkpoint"]) == run / "best.pt"
    for name in ("recipe.yaml", "metrics.jsonl", "best.pt", "last.pt", "eval.json", "last-roberta.pt",
                 "last-ctbert.pt", "last-fusion.pt"):
        assert (run / name).is_file(), name
    stages = {json.loads(line).get("stage") for line in (run / "metrics.jsonl").read_text().splitlines()}
    assert {"roberta", "ctbert", "fusion"} <= stages
    ev = json.loads((run / "eval.json").read_text())
    assert KEYS <= set(ev["val"]) and KEYS <= set(ev["test"])
    ckpt = torch.load(run / "best.pt", weights_only=True)
    branches = ckpt["extra"]["branches"]
    assert list(branches) == ["roberta", "ctbert"]
    assert branches["roberta"]["added_tokens"] == []  # new tokens only on the CT-BERT branch
    assert set(branches["ctbert"]["added_tokens"]) <= {"covid-19", "covid19", "coronavirus", "pandemic",
                                                       "indiafightscorona", "lockdown"}
    assert any(k.startswith("fusion_head.") for k in ckpt["model"])


def test_eval_json_matches_train_and_sklearn(trained):
    data, run, summary = trained
    r = invoke("eval", "--checkpoint", run / "best.pt", "--json")
    assert r.exit_code == 0, r.output
    out = json.loads(r.stdout.strip())
    assert KEYS <= set(out) and out["split"] == "test" and out["samples"] == 96
    assert out["f1_weighted"] == pytest.approx(summary["test_f1_weighted"])
    cm = out["confusion"]
    assert sum(map(sum, cm)) == 96
    assert out["accuracy"] == pytest.approx((cm[0][0] + cm[1][1]) / 96)
    r = invoke("eval", "--checkpoint", run / "best.pt", "--split", "val", "--json")
    assert json.loads(r.stdout)["samples"] == 96
    # several checkpoints (e.g. seeds): mean ± std
    r = invoke("eval", "--checkpoint", run / "best.pt", "--checkpoint", run / "last.pt", "--json")
    both = json.loads(r.stdout)
    assert both["runs"] == 2 and set(both["f1_weighted"]) == {"mean", "std"}


def test_predict_file_and_stdin(trained, tmp_path):
    data, run, _ = trained
    r = invoke("predict", data / "english_test_with_labels.csv", "--checkpoint", run / "best.pt", "--batch-size", "40",
               "--out", tmp_path, "--json")
    assert r.exit_code == 0, r.output
    rows = [json.loads(line) for line in r.stdout.strip().splitlines()]
    assert len(rows) == 96 and rows[0]["id"] == "417" and rows[0]["line"] == 2
    assert {"input", "line", "id", "text", "label", "score", "probabilities"} == set(rows[0])
    assert rows[0]["input"] == str(data / "english_test_with_labels.csv")
    assert all(row["label"] in ("real", "fake") and 0.5 <= row["score"] <= 1.0 for row in rows)
    assert all(row["score"] == max(row["probabilities"].values()) for row in rows)
    assert all(abs(sum(row["probabilities"].values()) - 1) < 1e-5 for row in rows)
    saved = (tmp_path / "english_test_with_labels_predictions.jsonl").read_text().splitlines()
    assert [json.loads(line) for line in saved] == rows
    # the same texts through stdin as plain lines give the same labels
    texts = [row["text"] for row in rows[:5]]
    r = invoke("predict", "-", "--checkpoint", run / "best.pt", "--out", tmp_path / "piped", "--json",
               input="\n".join(texts) + "\n")
    assert r.exit_code == 0, r.output
    piped = [json.loads(line) for line in r.stdout.strip().splitlines()]
    assert [p["text"] for p in piped] == texts and "id" not in piped[0]
    assert piped[0]["input"] == "<stdin>" and [p["line"] for p in piped] == [1, 2, 3, 4, 5]
    assert (tmp_path / "piped" / "stdin_predictions.jsonl").is_file()
    assert [p["label"] for p in piped] == [row["label"] for row in rows[:5]]
    assert [p["score"] for p in piped] == pytest.approx([row["score"] for row in rows[:5]], abs=1e-5)
    r = invoke("predict", "-", "--checkpoint", run / "best.pt", "--out", tmp_path / "bad", "--json",
               input=b"ok line\n\xff\xfe bad\n")
    assert r.exit_code == 2 and "<stdin>, line 2" in r.output and "not valid utf-8" in r.output


def test_predict_inputs_sharing_a_name_keep_their_own_outputs(trained, tmp_path):
    """Issue 12: a/test.csv and b/test.csv get their own prediction files (names from output_names), the
    same names on a second run; rows carry their "input" with --json."""
    data, run, _ = trained
    lines = (data / "english_test_with_labels.csv").read_text().splitlines()
    for folder, part in (("a", lines[1:6]), ("b", lines[20:23])):
        (tmp_path / folder).mkdir()
        (tmp_path / folder / "test.csv").write_text("\n".join([lines[0], *part]) + "\n")
    args = ["predict", tmp_path / "a" / "test.csv", tmp_path / "b" / "test.csv", "--checkpoint", run / "best.pt",
            "--json", "--quiet"]
    r = invoke(*args, "--out", tmp_path / "p1")
    assert r.exit_code == 0, r.output
    rows = [json.loads(line) for line in r.stdout.strip().splitlines()]
    assert [row["input"] for row in rows] == [str(tmp_path / "a" / "test.csv")] * 5 + [str(tmp_path / "b" / "test.csv")] * 3
    files = sorted(p.name for p in (tmp_path / "p1").iterdir())
    assert len(files) == 2 and all(f.endswith("_predictions.jsonl") for f in files)
    a, b = ((tmp_path / "p1" / f).read_text().splitlines() for f in files)
    assert len(a) == 5 and len(b) == 3 and a[:3] != b
    assert [json.loads(x)["input"] for x in a + b] == [row["input"] for row in rows]
    r = invoke(*args, "--out", tmp_path / "p2")
    assert r.exit_code == 0, r.output
    assert sorted(p.name for p in (tmp_path / "p2").iterdir()) == files
    assert all((tmp_path / "p1" / f).read_text() == (tmp_path / "p2" / f).read_text() for f in files)


def test_info(trained):
    data, run, _ = trained
    r = invoke("info", "--recipe", "fakenews/demo", "--set", f"data.root={data}", "--json")
    assert r.exit_code == 0, r.output
    info = json.loads(r.stdout.strip().splitlines()[-1])
    assert info["classes"] == ["real", "fake"] and info["splits"]["sizes"] == {"train": 320, "val": 96}
    assert set(info["branches"]) == {"roberta", "ctbert"}
    # fusion MLP: (48 + 48) -> 64 -> 2
    assert info["fusion"].startswith("features: MLP 96 -> 64 -> 2")
    assert info["fusion_params"] == 96 * 64 + 64 + 64 * 2 + 2
    assert info["gflops"] > 0
    assert info["params_total"] == sum(b["params"] for b in info["branches"].values()) + info["fusion_params"]


def test_finetune_from_local_hf_directory(tmp_path, trained):
    from transformers import BertConfig, BertModel

    from zsk.tasks.fakenews.tokenization import build_wordpiece_tokenizer

    data, _, _ = trained
    hf_dir = tmp_path / "tiny-bert"
    texts = [line.split(",", 1)[1] for line in (data / "Constraint_Train.csv").read_text().splitlines()[1:]]
    tok = build_wordpiece_tokenizer(texts, 400, True)
    torch.manual_seed(0)
    BertModel(BertConfig(vocab_size=len(tok), hidden_size=32, num_hidden_layers=1, num_attention_heads=2,
                         intermediate_size=64, max_position_embeddings=64)).save_pretrained(hf_dir)
    tok.save_pretrained(hf_dir)
    run = tmp_path / "run"
    branch = "{ctbert: {pretrained: " + str(hf_dir) + ", new_tokens: paper}}"
    r = invoke("train", "--recipe", "fakenews/demo", "--set", f"data.root={data}", "--set", f"model.branches={branch}",
               "--set", "train.max_steps=3", "--set", "train.epochs=1", "--out", run, "--json", "--quiet")
    assert r.exit_code == 0, r.output
    ckpt = torch.load(run / "best.pt", weights_only=True)
    assert ckpt["extra"]["branches"]["ctbert"]["source"] == str(hf_dir)
    assert "covid-19" in ckpt["extra"]["branches"]["ctbert"]["added_tokens"]
    rows = ckpt["model"]["branches.ctbert.encoder.embeddings.word_embeddings.weight"].shape[0]
    assert rows == len(tok) + len(ckpt["extra"]["branches"]["ctbert"]["added_tokens"])
    # the checkpoint is self-contained: it predicts without the pretrained directory
    shutil.rmtree(hf_dir)
    r = invoke("predict", "-", "--checkpoint", run / "best.pt", "--out", tmp_path / "pred", "--json",
               input="covid-19 lockdown news\n")
    assert r.exit_code == 0, r.output
    assert json.loads(r.stdout)["label"] in ("real", "fake")


def test_missing_pretrained_model_is_a_clear_error(tmp_path, trained):
    data, _, _ = trained
    r = invoke("train", "--recipe", "fakenews/demo", "--set", f"data.root={data}",
               "--set", "model.branches={x: {pretrained: no-such-org/no-such-model}}", "--out", tmp_path / "r")
    assert r.exit_code == 2
    assert "no-such-org/no-such-model" in r.output and "--set model.branches.x.pretrained=" in r.output


@pytest.mark.parametrize(
    "mutate, expected",
    [
        (lambda d: (d / "Constraint_Val.csv").write_text("id,tweet,label\n1,ok text,real\n2,bad,satire\n"),
         ["Constraint_Val.csv, line 3", "unknown label 'satire'"]),
        (lambda d: (d / "Constraint_Train.csv").write_text(""), ["Constraint_Train.csv", "empty"]),
        (lambda d: (d / "Constraint_Train.csv").write_bytes(b"id,tweet,label\n1,caf\xe9,real\n"),
         ["Constraint_Train.csv, line 2", "not valid utf-8"]),
        (lambda d: (d / "Constraint_Val.csv").unlink(), ["Constraint_Val.csv", "not found"]),
    ],
)
def test_bad_data_exits_2_naming_file_and_line(tmp_path, trained, mutate, expected):
    data, _, _ = trained
    bad = tmp_path / "data"
    shutil.copytree(data, bad)
    mutate(bad)
    r = invoke("train", "--recipe", "fakenews/demo", "--set", f"data.root={bad}", "--out", tmp_path / "run")
    assert r.exit_code == 2, r.output
    assert "Traceback" not in r.output
    for piece in expected:
        assert piece in r.output


def test_missing_column_and_bad_recipe_key(tmp_path, trained):
    data, run, _ = trained
    r = invoke("train", "--recipe", "fakenews/demo", "--set", f"data.root={data}", "--set", "data.text_column=text",
               "--out", tmp_path / "r")
    assert r.exit_code == 2 and "no column 'text'" in r.output and "Constraint_Train.csv" in r.output
    r = invoke("train", "--recipe", "fakenews/demo", "--set", "train.fgm.eps=1", "--out", tmp_path / "r2")
    assert r.exit_code == 2 and "train.fgm.eps" in r.output and "epsilon" in r.output
    r = invoke("eval", "--checkpoint", tmp_path / "missing.pt")
    assert r.exit_code == 2 and "missing.pt" in r.output


def test_hard_example_augmentation_grows_the_training_pool(tmp_path, trained):
    data, _, _ = trained
    run = tmp_path / "run"
    one = "{ctbert: {encoder: {hidden_size: 16, num_layers: 1, num_heads: 2, intermediate_size: 32, max_position_embeddings: 64}}}"
    r = invoke("train", "--recipe", "fakenews/demo", "--set", f"data.root={data}", "--set", f"model.branches={one}",
               "--set", "train.epochs=2", "--set", "train.batch_size=64", "--set", "train.lr=1e-6",
               "--set", "train.hard_examples.enabled=true", "--set", "train.hard_examples.source=train",
               "--set", f"train.hard_examples.synonyms={data / 'synonyms.txt'}", "--out", run, "--json", "--quiet")
    assert r.exit_code == 0, r.output
    ckpt = torch.load(run / "last.pt", weights_only=True)
    pool = ckpt["extra"]["hard_examples"]
    # one round after epoch 1 (none after the last step); an untrained model gets ~half of the 320 wrong
    assert pool["rounds"] == 1
    assert 60 < len(pool["texts"]) == len(pool["labels"]) < 320
    evals = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines() if '"eval"' in line]
    # each evaluation reports the pool it trained with; the HardExamplePool callback grows it afterwards
    assert evals[0]["hard_examples"] == 0 and evals[-1]["hard_examples"] == len(pool["texts"])


def test_resume_after_interruption_matches_an_uninterrupted_run(tmp_path, trained):
    data, _, _ = trained
    one = ("{ctbert: {encoder: {hidden_size: 16, num_layers: 1, num_heads: 2, intermediate_size: 32, "
           "max_position_embeddings: 64}, new_tokens: paper}}")
    common = ["--recipe", "fakenews/demo", "--set", f"data.root={data}", "--set", f"model.branches={one}",
              "--set", "train.select=last", "--set", "train.batch_size=16", "--quiet", "--json"]
    r = invoke("train", *common, "--set", "train.max_steps=6", "--out", tmp_path / "full")
    assert r.exit_code == 0, r.output
    r = invoke("train", *common, "--set", "train.max_steps=3", "--out", tmp_path / "cut")
    assert r.exit_code == 0, r.output
    assert torch.load(tmp_path / "cut" / "last.pt", weights_only=True)["step"] == 3
    r = invoke("train", *common, "--set", "train.max_steps=6", "--out", tmp_path / "cut", "--resume")
    assert r.exit_code == 0, r.output
    a = torch.load(tmp_path / "full" / "last.pt", weights_only=True)
    b = torch.load(tmp_path / "cut" / "last.pt", weights_only=True)
    assert a["step"] == b["step"] == 6
    for k in a["model"]:
        assert torch.allclose(a["model"][k], b["model"][k], atol=1e-6), k
    ea = json.loads((tmp_path / "full" / "eval.json").read_text())
    eb = json.loads((tmp_path / "cut" / "eval.json").read_text())
    assert ea["test"] == eb["test"]


def test_generic_jsonl_corpus_with_three_classes(tmp_path):
    import random

    rng = random.Random(0)
    cues = {"sport": ["goal", "match", "team"], "health": ["vaccine", "doctor", "virus"], "money": ["bank", "price", "tax"]}
    for name, n in (("train.jsonl", 60), ("val.jsonl", 30), ("test.jsonl", 30)):
        with open(tmp_path / name, "w", encoding="utf-8") as f:
            for i in range(n):
                topic = list(cues)[i % 3]
                f.write(json.dumps({"text": " ".join(rng.choices(cues[topic], k=4)), "y": topic}) + "\n")
    one = "{b: {encoder: {hidden_size: 16, num_layers: 1, num_heads: 2, intermediate_size: 32}}}"
    sets = [f"data.root={tmp_path}", "data.train_file=train.jsonl", "data.val_file=val.jsonl",
            "data.test_file=test.jsonl", "data.text_column=text", "data.label_column=y", "data.id_column=null",
            "data.classes=[]", f"model.branches={one}", "train.max_steps=2", "train.batch_size=16"]
    args = [a for s in sets for a in ("--set", s)]
    r = invoke("train", "--recipe", "fakenews/demo", *args, "--out", tmp_path / "run", "--json", "--quiet")
    assert r.exit_code == 0, r.output
    r = invoke("eval", "--checkpoint", tmp_path / "run" / "best.pt", "--json")
    out = json.loads(r.stdout)
    assert len(out["confusion"]) == 3 and sum(map(sum, out["confusion"])) == 30
    r = invoke("predict", "-", "--checkpoint", tmp_path / "run" / "best.pt", "--out", tmp_path / "pred", "--json",
               input="goal team\n")
    assert json.loads(r.stdout)["label"] in ("health", "money", "sport")
