"""End to end through the command line: sample -> train -> eval --json -> predict -> index/query -> info,
and bad inputs that must exit 2 with a message naming the file."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from typer.testing import CliRunner

from zsk.tasks.retrieve.cli import app

runner = CliRunner()


def run(*args: str, code: int = 0, stdin: str | None = None):
    result = runner.invoke(app, list(args), input=stdin)
    assert result.exit_code == code, f"exit {result.exit_code}\nstdout:{result.stdout}\nstderr:{result.stderr}"
    return result


@pytest.fixture(scope="module")
def trained(tmp_path_factory) -> tuple[Path, Path]:
    """(sample data folder, run folder) of one short demo training."""
    root = tmp_path_factory.mktemp("retrieve-cli")
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("ZSK_CACHE", str(root / "cache"))
        return _train(root)


def _train(root: Path) -> tuple[Path, Path]:
    data = root / "data"
    out = run("sample", str(data), "--json")
    assert json.loads(out.stdout)["data"] == str(data)
    res = run("train", "--recipe", "retrieve/demo", "--set", f"data.root={data}", "--set", "train.epochs=2",
              "--out", str(root / "run"), "--quiet", "--json")
    summary = json.loads(res.stdout.strip().splitlines()[-1])
    assert summary["rsum"] > 0 and "epochs_to_best" in summary
    return data, root / "run"


def test_train_writes_run_files(trained) -> None:
    _, run_dir = trained
    for name in ("best.pt", "last.pt", "eval.json", "metrics.jsonl", "recipe.yaml"):
        assert (run_dir / name).is_file(), name
    doc = json.loads((run_dir / "eval.json").read_text())
    assert 0 < doc["epochs_to_best"] <= 2 and doc["best_rsum"] == doc["best"]["value"]
    kinds = [json.loads(line)["kind"] for line in (run_dir / "metrics.jsonl").read_text().splitlines()]
    assert kinds.count("eval") == 2  # one validation per epoch


def test_eval_json_matches_training_selection(trained) -> None:
    _, run_dir = trained
    out = json.loads(run("eval", "-c", str(run_dir / "best.pt"), "--split", "dev", "--json").stdout)
    assert set(out["i2t"]) == {"r1", "r5", "r10", "medr", "meanr"} and set(out["t2i"]) == set(out["i2t"])
    assert out["captions"] == 5 * out["images"] == 200
    # the reloaded best checkpoint reproduces the validation rsum it was selected with
    best = json.loads((run_dir / "eval.json").read_text())["best_rsum"]
    assert out["rsum"] == pytest.approx(best, abs=1e-6)
    assert out["rsum"] == pytest.approx(sum(out[d][f"r{k}"] for d in ("i2t", "t2i") for k in (1, 5, 10)))


def test_eval_coco_protocols(trained) -> None:
    _, run_dir = trained
    one_k = json.loads(run("eval", "-c", str(run_dir / "best.pt"), "--protocol", "coco1k", "--json").stdout)
    five_k = json.loads(run("eval", "-c", str(run_dir / "best.pt"), "--protocol", "coco5k", "--json").stdout)
    assert one_k["split"] == five_k["split"] == "testall" and len(one_k["folds"]) == 5
    assert one_k["i2t"]["r1"] == pytest.approx(np.mean([f["i2t"]["r1"] for f in one_k["folds"]]))
    # 20-image folds are easier than the full 100-image gallery
    assert one_k["rsum"] >= five_k["rsum"]


def test_eval_faiss_search_equals_the_exact_scan(trained) -> None:
    """--search faiss (flat index): the same R@K and medr as the exact scan; meanr is not given (None)."""
    _, run_dir = trained
    exact = json.loads(run("eval", "-c", str(run_dir / "best.pt"), "--json").stdout)
    fast = json.loads(run("eval", "-c", str(run_dir / "best.pt"), "--search", "faiss", "--set", "eval.faiss_depth=40",
                          "--json").stdout)
    assert fast["search"] == {"backend": "faiss", "index": "flat", "depth": 40, "exact": True}
    for d in ("i2t", "t2i"):
        for k in ("r1", "r5", "r10"):
            assert fast[d][k] == pytest.approx(exact[d][k])
        assert fast[d]["meanr"] is None
        assert fast[d]["medr"] is None or fast[d]["medr"] == exact[d]["medr"]
    assert fast["rsum"] == pytest.approx(exact["rsum"])
    ivf = json.loads(run("eval", "-c", str(run_dir / "best.pt"), "--search", "faiss", "--set", "eval.faiss_nlist=4",
                         "--set", "eval.faiss_nprobe=4", "--json").stdout)  # every list visited: exhaustive
    assert ivf["search"]["index"] == "ivf" and ivf["rsum"] == pytest.approx(exact["rsum"])


def test_predict_both_directions(trained, tmp_path) -> None:
    data, run_dir = trained
    res = run("predict", "a dog sitting on the beach", "-c", str(run_dir / "best.pt"), "-k", "4", "--json",
              "--out", str(tmp_path / "p0"))
    row = json.loads(res.stdout)
    assert row["direction"] == "t2i" and [m["rank"] for m in row["matches"]] == [1, 2, 3, 4]
    scores = [m["score"] for m in row["matches"]]
    assert scores == sorted(scores, reverse=True)
    np.save(tmp_path / "q.npy", np.load(data / "test_ims.npy")[:3])
    rows = [json.loads(x) for x in run("predict", str(tmp_path / "q.npy"), "-c", str(run_dir / "best.pt"),
                                       "--out", str(tmp_path / "p"), "--json").stdout.splitlines()]
    assert len(rows) == 3 and all(r["direction"] == "i2t" and "caption" in r["matches"][0] for r in rows)
    assert (tmp_path / "p" / "predictions.jsonl").read_text().count("\n") == 3
    stdin = runner.invoke(app, ["predict", "-", "-c", str(run_dir / "best.pt"), "--json", "--out", str(tmp_path / "p1")],
                          input="a cat\na horse on snow\n")
    assert stdin.exit_code == 0 and len(stdin.stdout.splitlines()) == 2


def test_index_and_query(trained, tmp_path) -> None:
    data, run_dir = trained
    ckpt = str(run_dir / "best.pt")
    info = json.loads(run("index", "-c", ckpt, "--images", str(data / "test_ims.npy"), "--out",
                          str(tmp_path / "img"), "--json").stdout)
    assert info == {"index": str(tmp_path / "img"), "kind": "images", "count": 40, "dim": 64, "faiss": False}
    hits = json.loads(run("query", "--index", str(tmp_path / "img"), "a cat in the kitchen", "-k", "3").stdout)
    assert len(hits["matches"]) == 3 and hits["matches"][0]["name"].startswith("test_")
    # the exact search agrees with predict on the same split
    pred = json.loads(run("predict", "a cat in the kitchen", "-c", ckpt, "-k", "3", "--json", "--out",
                          str(tmp_path / "p")).stdout)
    assert [m["name"] for m in hits["matches"]] == [m["image"] for m in pred["matches"]]
    # a caption gallery above the FAISS threshold is searched through an IVF index, same top hits
    run("index", "-c", ckpt, "--captions", str(data / "test_caps.txt"), "--out", str(tmp_path / "cap"),
        "--faiss-threshold", "50", "--nlist", "4")
    run("index", "-c", ckpt, "--captions", str(data / "test_caps.txt"), "--out", str(tmp_path / "cap_exact"))
    assert json.loads((tmp_path / "cap" / "index.json").read_text())["faiss"] is True
    np.save(tmp_path / "q.npy", np.load(data / "test_ims.npy")[5])
    a = json.loads(run("query", "--index", str(tmp_path / "cap"), str(tmp_path / "q.npy"), "--nprobe", "4").stdout)
    b = json.loads(run("query", "--index", str(tmp_path / "cap_exact"), str(tmp_path / "q.npy")).stdout)
    assert [m["index"] for m in a["matches"]] == [m["index"] for m in b["matches"]]
    assert "caption" in a["matches"][0]


def test_info_and_lsa(trained, tmp_path) -> None:
    data, _ = trained
    info = json.loads(run("info", "-r", "retrieve/demo", "--set", f"data.root={data}", "--json").stdout)
    p = info["params"]
    # flattened 4 x 32 features -> 64: 128 * 64 + 64 weights
    assert p["image_encoder"]["total"] == 128 * 64 + 64
    assert p["total"] == p["image_encoder"]["total"] + p["text_encoder"]["total"]
    assert info["splits"]["train"] == {"images": 240, "captions": 1200}
    out = json.loads(run("lsa", "-r", "retrieve/demo", "--set", f"data.root={data}", "--out",
                         str(tmp_path / "train_svd.txt"), "--json").stdout)
    assert out["rows"] == 1200 and out["rank"] == 400
    assert len((tmp_path / "train_svd.txt").read_text().splitlines()) == 1200


def _copy_sample(src: Path, dst: Path) -> Path:
    dst.mkdir()
    for f in src.iterdir():
        (dst / f.name).write_bytes(f.read_bytes())
    return dst


def test_bad_inputs_exit_2(trained, tmp_path) -> None:
    data, run_dir = trained
    bad = _copy_sample(data, tmp_path / "bad")
    lines = (bad / "train_caps.txt").read_text().splitlines()
    (bad / "train_caps.txt").write_text("\n".join(lines[:-2]) + "\n")
    res = run("train", "-r", "retrieve/demo", "--set", f"data.root={bad}", "--out", str(tmp_path / "r1"), code=2)
    assert "train_caps.txt: 1198 captions for 240 images" in res.stderr and "Traceback" not in res.stderr
    res = run("train", "-r", "retrieve/demo", "--set", f"data.root={data}", "--set", "model.img_dim=2048",
              "--out", str(tmp_path / "r2"), code=2)
    assert "train_ims.npy" in res.stderr and "model.img_dim" in res.stderr
    (bad / "train_caps.txt").write_text("\n".join(lines[:3] + [""] + lines[4:]) + "\n")
    res = run("train", "-r", "retrieve/demo", "--set", f"data.root={bad}", "--out", str(tmp_path / "r3"), code=2)
    assert "line 4 is an empty caption" in res.stderr
    res = run("train", "-r", "retrieve/demo", "--set", "train.loss.kind=vse", "--out", str(tmp_path / "r4"), code=2)
    assert "train.loss.kind" in res.stderr
    res = run("train", "-r", "retrieve/demo", "--set", "model.text_encoder=bert", "--out", str(tmp_path / "r5"), code=2)
    assert "vsepp" in res.stderr
    res = run("predict", "", "-c", str(run_dir / "best.pt"), "--out", str(tmp_path / "p"), code=2)
    res = run("predict", "-", "-c", str(run_dir / "best.pt"), "--out", str(tmp_path / "p"), code=2, stdin="\n")
    assert "empty query" in res.stderr
    res = run("eval", "-c", str(tmp_path / "missing.pt"), code=2)
    assert "checkpoint not found" in res.stderr
    res = run("query", "--index", str(tmp_path), "x", code=2)
    assert "not a retrieve index" in res.stderr


def test_eval_several_checkpoints_mean_std(trained, tmp_path) -> None:
    _, run_dir = trained
    ckpts = [str(run_dir / "best.pt"), str(run_dir / "last.pt")]
    out = json.loads(run("eval", "-c", ckpts[0], "-c", ckpts[1], "--split", "dev", "--json", "--out",
                         str(tmp_path / "ev")).stdout)
    one = [json.loads(run("eval", "-c", c, "--split", "dev", "--json").stdout) for c in ckpts]
    assert out["runs"] == 2 and out["checkpoints"] == ckpts
    assert out["rsum"]["mean"] == pytest.approx(np.mean([r["rsum"] for r in one]))
    assert out["i2t"]["r1"]["mean"] == pytest.approx(np.mean([r["i2t"]["r1"] for r in one]))
    assert (tmp_path / "ev" / "eval-summary.json").is_file()


def test_predict_takes_stdin_lines_and_texts(trained, tmp_path) -> None:
    from zsk.core.io import StdinInput
    from zsk.tasks.retrieve.evaluate import load
    from zsk.tasks.retrieve.predict import predict

    _, run_dir = trained
    loaded = load(run_dir / "best.pt")
    rows = list(predict(loaded, [StdinInput(b"a cat\n\na dog on the beach\n"), "a horse in the snow"], tmp_path / "p",
                        k=2))
    assert [r["query"] for r in rows] == ["a cat", "a dog on the beach", "a horse in the snow"]
    assert all(r["direction"] == "t2i" and r["split"] == "test" and len(r["matches"]) == 2 for r in rows)
    assert [json.loads(x) for x in (tmp_path / "p" / "predictions.jsonl").read_text().splitlines()] == rows


def test_demo_recipe_trains_without_a_written_sample(tmp_path, monkeypatch) -> None:
    monkeypatch.setenv("ZSK_CACHE", str(tmp_path / "cache"))
    res = run("train", "--recipe", "retrieve/demo", "--set", "train.epochs=1", "--out", str(tmp_path / "run"),
              "--quiet", "--json")
    assert json.loads(res.stdout.strip().splitlines()[-1])["rsum"] > 0
    for name in ("best.pt", "last.pt", "eval.json"):
        assert (tmp_path / "run" / name).is_file(), name
    assert list((tmp_path / "cache" / "samples").glob("retrieve-v*/train_caps.txt"))


def test_one_stage_method_refuses_stage_blocks(tmp_path) -> None:
    res = run("train", "-r", "retrieve/demo", "--set", "train.stages.warmup.lr=0.1", "--out", str(tmp_path / "r"),
              code=2)
    assert "train.stages.warmup" in res.stderr


def test_every_verb_that_prints_results_takes_json(trained, tmp_path) -> None:
    """train, predict, query, index and lsa accept --json and print JSON lines; predict and query rows carry
    "input" (the file, or the caption text) like every task's predict rows (issue 12)."""
    data, run_dir = trained
    ckpt = str(run_dir / "best.pt")
    res = run("train", "-r", "retrieve/demo", "--set", f"data.root={data}", "--set", "train.max_steps=2",
              "--set", "train.epochs=1", "--out", str(tmp_path / "run"), "--quiet", "--json")
    assert json.loads(res.stdout.strip().splitlines()[-1])["run_dir"] == str(tmp_path / "run")
    np.save(tmp_path / "q.npy", np.load(data / "test_ims.npy")[:2])
    rows = [json.loads(x) for x in run("predict", str(tmp_path / "q.npy"), "-c", ckpt, "--json", "--out",
                                       str(tmp_path / "p")).stdout.splitlines()]
    assert [(r["input"], r["row"], r["query"]) for r in rows] == [
        (str(tmp_path / "q.npy"), i, f"{tmp_path / 'q.npy'}[{i}]") for i in range(2)]
    text = json.loads(run("predict", "a dog on the beach", "-c", ckpt, "--json", "--out", str(tmp_path / "p2")).stdout)
    assert text["input"] == text["query"] == "a dog on the beach" and "row" not in text
    index = json.loads(run("index", "-c", ckpt, "--images", str(data / "test_ims.npy"), "--out", str(tmp_path / "ix"),
                           "--json").stdout)
    assert index["count"] == 40
    hits = [json.loads(x) for x in run("query", "--index", str(tmp_path / "ix"), "a dog", "a cat", "--json",
                                       "-k", "2").stdout.splitlines()]
    assert [h["input"] for h in hits] == ["a dog", "a cat"] and all(len(h["matches"]) == 2 for h in hits)
    # query prints the same JSON lines without --json (its documented output)
    plain = [json.loads(x) for x in run("query", "--index", str(tmp_path / "ix"), "a dog", "a cat", "-k", "2")
             .stdout.splitlines()]
    assert plain == hits
    lsa = json.loads(run("lsa", "-r", "retrieve/demo", "--set", f"data.root={data}", "--out",
                         str(tmp_path / "svd" / "train_svd.txt"), "--json").stdout)
    assert lsa["rows"] == 1200 and (tmp_path / "svd" / "train_svd.txt").is_file()


def test_predict_inputs_sharing_a_name_stay_apart(trained, tmp_path) -> None:
    """a/x.npy and b/x.npy share a file name: both get their own row (named by the full path) in the output,
    with their own matches, and a second run writes the same file."""
    data, run_dir = trained
    feats = np.load(data / "test_ims.npy")
    for sub, i in (("a", 0), ("b", 1)):
        (tmp_path / sub).mkdir()
        np.save(tmp_path / sub / "x.npy", feats[i])
    args = [str(tmp_path / "a" / "x.npy"), str(tmp_path / "b" / "x.npy"), "-c", str(run_dir / "best.pt"), "--json"]
    rows = [json.loads(x) for x in run("predict", *args, "--out", str(tmp_path / "p")).stdout.splitlines()]
    assert [r["input"] for r in rows] == [str(tmp_path / "a" / "x.npy"), str(tmp_path / "b" / "x.npy")]
    assert rows[0]["matches"] != rows[1]["matches"]
    first = (tmp_path / "p" / "predictions.jsonl").read_text()
    assert [json.loads(x) for x in first.splitlines()] == rows
    run("predict", *args, "--out", str(tmp_path / "p"))
    assert (tmp_path / "p" / "predictions.jsonl").read_text() == first


def test_option_ranges_exit_2(trained, tmp_path) -> None:
    """--top-k / -k, --nprobe and --nlist out of range are one `error:` line naming the option, before any work."""
    data, run_dir = trained
    ckpt = str(run_dir / "best.pt")
    run("index", "-c", ckpt, "--images", str(data / "test_ims.npy"), "--out", str(tmp_path / "ix"))
    for args, option in ((["query", "--index", str(tmp_path / "ix"), "a dog", "--top-k", "-1"], "--top-k"),
                         (["query", "--index", str(tmp_path / "ix"), "a dog", "--nprobe", "0"], "--nprobe"),
                         (["predict", "a dog", "-c", ckpt, "-k", "0", "--out", str(tmp_path / "p")], "--top-k"),
                         (["index", "-c", ckpt, "--captions", str(data / "test_caps.txt"), "--out",
                           str(tmp_path / "ix2"), "--nlist", "-4"], "--nlist")):
        res = run(*args, code=2)
        assert res.stderr.strip().splitlines() == [res.stderr.strip()] and option in res.stderr, res.stderr
    assert not (tmp_path / "ix2").exists() and not (tmp_path / "p").exists()
