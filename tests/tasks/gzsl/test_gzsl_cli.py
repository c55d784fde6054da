"""End to end through the command line: sample -> train -> eval --json -> predict -> info -> make-graph,
the baselines, and bad inputs that exit 2 naming the file."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
from typer.testing import CliRunner

from zsk.tasks.gzsl.cli import app

runner = CliRunner()


def run(*args: str, code: int = 0, stdin: str | None = None):
    result = runner.invoke(app, list(args), input=stdin)
    assert result.exit_code == code, f"exit {result.exit_code}\nstdout:{result.stdout}\nstderr:{result.stderr}"
    return result


def lines(result) -> list[dict]:
    return [json.loads(line) for line in result.stdout.strip().splitlines()]


@pytest.fixture(scope="module")
def trained(tmp_path_factory) -> tuple[Path, Path]:
    """(sample folder, run folder) of one short demo training."""
    root = tmp_path_factory.mktemp("gzsl-cli")
    data = root / "data"
    summary = lines(run("sample", str(data), "--json"))[0]
    assert summary["nodes"] == 49 and summary["seen"] == 12 and summary["unseen"] == 24
    res = run("train", "--recipe", "gzsl/demo", "--set", f"data.root={data}", "--set", "train.epochs=20",
              "--set", "train.eval_every=10", "--set", "train.checkpoint_every=10", "--out", str(root / "run"),
              "--json", "--quiet")
    out = lines(res)[-1]
    assert out["run_dir"] == str(root / "run") and 0 <= out["hit@1"] <= 1 and out["seen_loss"] > 0
    return data, root / "run"


def test_train_writes_run_files_and_snapshots(trained) -> None:
    _, run_dir = trained
    for name in ("best.pt", "last.pt", "eval.json", "metrics.jsonl", "recipe.yaml", "last-propagate.pt",
                 "best-propagate.pt", "eval-propagate.json"):
        assert (run_dir / name).is_file(), name
    records = [json.loads(x) for x in (run_dir / "metrics.jsonl").read_text().splitlines()]
    evals = [r for r in records if r["kind"] == "eval"]
    assert [r["step"] for r in evals] == [10, 20] and all("hit@5" in r for r in evals)
    for epoch in (10, 20):
        snap = torch.load(run_dir / "snapshots" / f"epoch-{epoch}.pred", weights_only=True)
        assert snap["pred"].shape == (49, 513) and len(snap["wnids"]) == 49
        assert torch.allclose(snap["pred"].norm(dim=1), torch.ones(49), atol=1e-5)  # unit rows
    first = torch.load(run_dir / "snapshots" / "epoch-10.pred", weights_only=True)["pred"]
    last = torch.load(run_dir / "snapshots" / "epoch-20.pred", weights_only=True)["pred"]
    assert not torch.allclose(first, last)


def test_eval_json_zsl_generalized_keep_ratio(trained) -> None:
    data, run_dir = trained
    ckpt = str(run_dir / "last.pt")
    zsl = lines(run("eval", "-c", ckpt, "--json", "--testset", "all"))[0]
    assert set(f"hit@{k}" for k in (1, 2, 5, 10, 20)) <= set(zsl)
    assert zsl["images"] == 24 * 12 and zsl["candidates"] == 24 and zsl["missing_classes"] == 0
    assert zsl["hit@1"] <= zsl["hit@2"] <= zsl["hit@5"] <= zsl["hit@10"] <= zsl["hit@20"]
    # the checkpoint reproduces the final training evaluation (same classifiers, same images)
    final = json.loads((run_dir / "eval.json").read_text())
    assert zsl["hit@1"] == pytest.approx(final["hit@1"])
    gzsl = lines(run("eval", "-c", ckpt, "--json", "--testset", "all", "--generalized"))[0]
    assert gzsl["candidates"] == 24 + 12 and gzsl["images"] == zsl["images"]
    for k in (1, 2, 5, 10, 20):  # more candidates can only push the true class down
        assert gzsl[f"hit@{k}"] <= zsl[f"hit@{k}"] + 1e-9
    two = lines(run("eval", "-c", ckpt, "--json", "--testset", "2-hops", "--keep-ratio", "0.5"))[0]
    assert two["testset"] == "2-hops" and two["images"] == 12 * 6 and two["candidates"] == 12
    awa = lines(run("eval", "-c", ckpt, "--json", "--testset", "awa2"))[0]
    assert awa["candidates"] == 4 and 0 <= awa["top1_per_class"] <= 1


def test_eval_reports_missing_classes(trained, tmp_path: Path) -> None:
    data, run_dir = trained
    feats = np.load(data / "features" / "test.npy")
    labels = (data / "features" / "test-labels.txt").read_text().splitlines()
    keep = [i for i, w in enumerate(labels) if w != labels[0]]
    np.save(tmp_path / "f.npy", feats[keep])
    (tmp_path / "f-labels.txt").write_text("\n".join(labels[i] for i in keep) + "\n")
    res = run("eval", "-c", str(run_dir / "last.pt"), "--json", "--testset", "all", "--features",
              str(tmp_path / "f.npy"))
    out = lines(res)[0]
    assert out["missing_classes"] == 1 and out["classes"] == 23 and out["candidates"] == 24
    assert "have no images" in res.stderr


def test_predict_npy_candidates_and_stdin(trained, tmp_path: Path) -> None:
    data, run_dir = trained
    feats = np.load(data / "features" / "test.npy")[:2]
    np.save(tmp_path / "two.npy", feats)
    recs = lines(run("predict", str(tmp_path / "two.npy"), "-c", str(run_dir / "last.pt"), "--top-k", "3", "--json",
                     "--out", str(tmp_path / "pred")))
    assert len(recs) == 2 and [r["row"] for r in recs] == [0, 1]
    saved = [json.loads(x) for x in (tmp_path / "pred" / "predictions.jsonl").read_text().splitlines()]
    assert saved == recs
    names = dict(line.split("\t") for line in (data / "words.txt").read_text().splitlines())
    assert len(recs[0]["top"]) == 3 and all(t["name"] == names[t["wnid"]] for t in recs[0]["top"])
    scores = [t["score"] for t in recs[0]["top"]]
    assert scores == sorted(scores, reverse=True)
    test = json.loads((data / "imagenet-split.json").read_text())["test"]
    (tmp_path / "cands.txt").write_text("\n".join(test[:5]) + "\n")
    recs = lines(run("predict", "-", "-c", str(run_dir / "last.pt"), "--candidates", str(tmp_path / "cands.txt"),
                     "--top-k", "10", "--json", "--out", str(tmp_path / "pred"), stdin=f"{tmp_path / 'two.npy'}\n"))
    assert {t["wnid"] for t in recs[0]["top"]} == set(test[:5])  # top-k capped at the 5 candidates
    (tmp_path / "bad.txt").write_text("n99999999\n")
    res = run("predict", str(tmp_path / "two.npy"), "-c", str(run_dir / "last.pt"), "--candidates",
              str(tmp_path / "bad.txt"), "--out", str(tmp_path / "pred"), code=2)
    assert "bad.txt" in res.stderr and "n99999999" in res.stderr


def test_info_json(trained) -> None:
    data, _ = trained
    out = lines(run("info", "--recipe", "gzsl/demo", "--set", f"data.root={data}", "--json"))[0]
    assert out["nodes"] == 49 and out["seen"] == 12 and out["classifier_dim"] == 513 and out["word_dim"] == 50
    # tree 3-3-4 plus 4 second parents: 52 edges at distance 1; self pairs at distance 0
    assert out["edges_per_distance"]["0"] == 49 and out["edges_per_distance"]["1"] == 52
    assert out["params_total"] == out["params_trainable"] > 0
    assert out["testsets"]["all"] == {"classes": 24, "missing_from_graph": 0, "missing_features": 0,
                                      "missing_images": 0}


def test_make_graph_from_edge_list_rebuilds_sample_graph(trained, tmp_path: Path) -> None:
    data, _ = trained
    res = run("make-graph", "--split", str(data / "imagenet-split.json"), "--edges", str(data / "edges.txt"),
              "--glove", str(data / "glove.sample.50d.txt"), "--names", str(data / "words.txt"),
              "--out", str(tmp_path), "--json")
    summary = lines(res)[0]
    assert summary["nodes"] == 49 and summary["word_dim"] == 50
    ours = json.loads((tmp_path / "imagenet-induced-graph.json").read_text())
    ref = json.loads((data / "imagenet-induced-graph.json").read_text())
    n_split = 36  # seen + test come first, in split order
    assert ours["wnids"][:n_split] == ref["wnids"][:n_split] and set(ours["wnids"]) == set(ref["wnids"])
    pos = {w: i for i, w in enumerate(ours["wnids"])}
    order = [pos[w] for w in ref["wnids"]]
    assert np.allclose(np.asarray(ours["vectors"])[order], np.asarray(ref["vectors"]), atol=1e-5)
    named = lambda g: {(g["wnids"][c], g["wnids"][p]) for c, p in g["edges"]}  # noqa: E731
    assert named(ours) == named(ref)
    dense = json.loads((tmp_path / "imagenet-dense-grouped-graph.json").read_text())
    assert [len(g) for g in dense["edges_set"]] == summary["edges_per_distance"]


@pytest.mark.parametrize("name,extra", [
    ("sgcn", ["--set", "model.hidden=[32]"]),
    ("gcnz", ["--set", "model.hidden=[32,32,16,16,8]", "--set", "model.target_bias=false", "--set", "train.loss=mse"]),
])
def test_baselines_train_and_eval(trained, tmp_path: Path, name: str, extra: list[str]) -> None:
    data, _ = trained
    run("train", "--recipe", "gzsl/demo", "--set", f"data.root={data}", "--set", f"model.name={name}",
        "--set", "train.epochs=3", "--set", "train.eval_every=0", *extra, "--out", str(tmp_path / name), "--quiet")
    out = lines(run("eval", "-c", str(tmp_path / name / "last.pt"), "--json", "--testset", "3-hops"))[0]
    assert out["candidates"] == 12 and 0 <= out["hit@1"] <= 1
    state = torch.load(tmp_path / name / "last.pt", weights_only=True)["model"]
    width = 512 if name == "gcnz" else 513  # GCNZ regresses the weights without the bias column
    last = max(k for k in state if k.endswith("linear.weight"))
    assert state[last].shape[0] == width


# ----------------------------------------------------------------------------- bad inputs


def test_fc_weights_count_mismatch_exits_2(trained, tmp_path: Path) -> None:
    data, _ = trained
    rows = json.loads((data / "fc-weights.json").read_text())
    (tmp_path / "fc.json").write_text(json.dumps(rows[:-1]))
    res = run("train", "--recipe", "gzsl/demo", "--set", f"data.root={data}", "--set",
              f"data.fc_weights={tmp_path / 'fc.json'}", "--out", str(tmp_path / "r"), code=2)
    assert "fc.json holds 11 classifiers but the split has 12" in res.stderr
    assert "Traceback" not in res.stderr


def test_split_wnid_missing_from_graph_exits_2(trained, tmp_path: Path) -> None:
    data, _ = trained
    split = json.loads((data / "imagenet-split.json").read_text())
    split["test"].append("n09999999")
    (tmp_path / "split.json").write_text(json.dumps(split))
    res = run("info", "--recipe", "gzsl/demo", "--set", f"data.root={data}", "--set",
              f"data.split={tmp_path / 'split.json'}", code=2)
    assert "n09999999" in res.stderr and "imagenet-induced-graph.json" in res.stderr


def test_embedding_dimension_mismatch_exits_2(trained, tmp_path: Path) -> None:
    data, run_dir = trained
    g = json.loads((data / "imagenet-induced-graph.json").read_text())
    g["vectors"] = [v[:20] for v in g["vectors"]]
    (tmp_path / "g20.json").write_text(json.dumps(g))
    res = run("eval", "-c", str(run_dir / "last.pt"), "--set", f"data.graph={tmp_path / 'g20.json'}",
              "--set", "data.dense_graph=null", code=2)
    assert "g20.json has 20-d word vectors" in res.stderr and "50-d" in res.stderr
    res = run("train", "--recipe", "gzsl/demo", "--set", f"data.root={data}", "--set",
              f"data.graph={tmp_path / 'g20.json'}", "--out", str(tmp_path / "r"), code=2)
    assert "embedding dimension mismatch" in res.stderr


def test_unknown_testset_and_missing_checkpoint_exit_2(trained, tmp_path: Path) -> None:
    _, run_dir = trained
    res = run("eval", "-c", str(run_dir / "last.pt"), "--testset", "4-hops", code=2)
    assert "4-hops" in res.stderr and "2-hops" in res.stderr
    res = run("eval", "-c", str(tmp_path / "nope.pt"), code=2)
    assert "nope.pt" in res.stderr
    res = run("train", "--recipe", "gzsl/demo", "--set", "train.bogus=1", code=2)
    assert "train.bogus" in res.stderr


def test_make_graph_without_wordnet_corpus_exits_2(trained, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    import nltk

    data, _ = trained
    monkeypatch.setattr(nltk.data, "path", [str(tmp_path)])
    res = run("make-graph", "--split", str(data / "imagenet-split.json"), "--out", str(tmp_path / "g"), code=2)
    assert "nltk.downloader wordnet" in res.stderr and "--nltk-data" in res.stderr
    res = run("make-graph", "--split", str(data / "imagenet-split.json"), "--edges", str(data / "edges.txt"),
              "--xml-wnids", str(data / "imagenet-xml-wnids.json"), code=2)
    assert "does not apply to --edges" in res.stderr


def test_resume_matches_uninterrupted_run(trained, tmp_path: Path) -> None:
    data, run_dir = trained
    common = ["--recipe", "gzsl/demo", "--set", f"data.root={data}", "--set", "train.epochs=20",
              "--set", "train.eval_every=10", "--set", "train.checkpoint_every=10", "--quiet"]
    run("train", *common, "--set", "train.max_steps=10", "--out", str(tmp_path / "r"))
    assert not (tmp_path / "r" / "snapshots" / "epoch-20.pred").exists()
    run("train", *common, "--out", str(tmp_path / "r"), "--resume")
    a = torch.load(tmp_path / "r" / "last-propagate.pt", weights_only=True)
    b = torch.load(run_dir / "last-propagate.pt", weights_only=True)
    assert a["step"] == b["step"] == 20
    for k in b["model"]:
        assert torch.allclose(a["model"][k], b["model"][k], atol=1e-6), k
    final_a = torch.load(tmp_path / "r" / "last.pt", weights_only=True)["model"]
    final_b = torch.load(run_dir / "last.pt", weights_only=True)["model"]
    for k in final_b:
        assert torch.allclose(final_a[k], final_b[k], atol=1e-6), k
    snap = torch.load(tmp_path / "r" / "snapshots" / "epoch-20.pred", weights_only=True)["pred"]
    assert torch.allclose(snap, torch.load(run_dir / "snapshots" / "epoch-20.pred", weights_only=True)["pred"], atol=1e-6)


def test_info_lists_test_classes_without_images(trained, tmp_path: Path) -> None:
    data, _ = trained
    sets = json.loads((data / "imagenet-testsets.json").read_text())
    for w in sets["all"][2:]:
        (tmp_path / "imgs" / w).mkdir(parents=True)
    out = lines(run("info", "--recipe", "gzsl/demo", "--set", f"data.root={data}", "--set",
                    f"data.images={tmp_path / 'imgs'}", "--json"))[0]
    assert out["testsets"]["all"]["missing_images"] == 2
    assert out["testsets"]["all"]["missing_images_first"] == sets["all"][:2]


def test_seen_testset_needs_generalized(trained, tmp_path: Path) -> None:
    data, run_dir = trained
    split = json.loads((data / "imagenet-split.json").read_text())
    feats = np.load(data / "features" / "test.npy")[:3]
    np.save(tmp_path / "s.npy", feats)
    (tmp_path / "s-labels.txt").write_text("".join(w + "\n" for w in split["train"][:3]))
    res = run("eval", "-c", str(run_dir / "last.pt"), "--testset", "train", "--features", str(tmp_path / "s.npy"),
              code=2)
    assert "only seen classes" in res.stderr
    out = lines(run("eval", "-c", str(run_dir / "last.pt"), "--testset", "train", "--features",
                    str(tmp_path / "s.npy"), "--generalized", "--json"))[0]
    assert out["images"] == 3 and out["candidates"] == 12


# ----------------------------------------------------------------------------- issue 12


def test_predict_inputs_sharing_a_stem_keep_their_own_rows(trained, tmp_path: Path) -> None:
    """a/x.npy and b/x.npy (different features) each keep their rows, named apart by output_names, and the
    names are the same when the command is run again; --json rows carry "input" plus the result keys."""
    data, run_dir = trained
    feats = np.load(data / "features" / "test.npy")
    for folder, rows in (("a", feats[:1]), ("b", feats[200:202])):
        (tmp_path / folder).mkdir()
        np.save(tmp_path / folder / "x.npy", rows)
    args = ["predict", str(tmp_path / "a" / "x.npy"), str(tmp_path / "b" / "x.npy"), "-c", str(run_dir / "last.pt"),
            "--out", str(tmp_path / "pred"), "--json"]
    first = lines(run(*args))
    assert [(Path(r["input"]).parent.name, r["row"]) for r in first] == [("a", 0), ("b", 0), ("b", 1)]
    assert all(set(r) == {"input", "input_name", "row", "top"} for r in first)
    names = {Path(r["input"]).parent.name: r["input_name"] for r in first}
    assert names["a"] != names["b"] and "x" in names["a"]
    assert first[0]["top"] != first[1]["top"]  # the two files' own features, not one file twice
    saved = [json.loads(x) for x in (tmp_path / "pred" / "predictions.jsonl").read_text().splitlines()]
    assert saved == first
    again = lines(run(*args))
    assert [r["input_name"] for r in again] == [r["input_name"] for r in first] and again == first


def test_predict_checks_every_input_before_writing(trained, tmp_path: Path) -> None:
    """A bad second input fails the command before any output: an earlier predictions.jsonl stays as it was."""
    data, run_dir = trained
    np.save(tmp_path / "good.npy", np.load(data / "features" / "test.npy")[:2])
    np.save(tmp_path / "bad.npy", np.zeros((2, 7), np.float32))
    (tmp_path / "pred").mkdir()
    (tmp_path / "pred" / "predictions.jsonl").write_text("earlier\n")
    res = run("predict", str(tmp_path / "good.npy"), str(tmp_path / "bad.npy"), "-c", str(run_dir / "last.pt"),
              "--out", str(tmp_path / "pred"), code=2)
    assert "bad.npy" in res.stderr and "7-d" in res.stderr
    assert (tmp_path / "pred" / "predictions.jsonl").read_text() == "earlier\n"

