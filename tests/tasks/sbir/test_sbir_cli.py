"""End to end through the CLI on the sample set in ACNet's layout: train (a few steps) -> eval --json (the four
metrics, gallery embeddings cached and reused) -> predict (JSON lines + PNG strips, correct matches marked)."""

from __future__ import annotations

import json
from pathlib import Path

from typer.testing import CliRunner

from zsk.cli import app

FAST = ["--set", "train.epochs=2", "--set", "model.generator_blocks=1", "--set", "model.emb_dim=16"]


def _last_json(out: str) -> dict:
    return json.loads([line for line in out.splitlines() if line.startswith("{")][-1])


def test_train_eval_predict(tmp_path: Path) -> None:
    from zsk.tasks.sbir.data import write_sample

    runner = CliRunner()
    root = write_sample(tmp_path / "data", sketches=4, photos=5, size=32)
    run = tmp_path / "run"
    r = runner.invoke(app, ["sbir", "train", "--recipe", "sbir/demo", "--set", f"data.root={root}", *FAST,
                            "--out", str(run), "--device", "cpu", "--json", "--quiet"])
    assert r.exit_code == 0, r.output
    assert (run / "best.pt").is_file() and (run / "last.pt").is_file() and (run / "eval.json").is_file()
    rows = [json.loads(x) for x in (run / "metrics.jsonl").read_text().splitlines()]
    assert {"generator", "identity", "class", "discriminator"} <= set(next(x for x in rows if "class" in x))

    r = runner.invoke(app, ["sbir", "eval", "-c", str(run / "best.pt"), "--json", "--device", "cpu", "--quiet"])
    assert r.exit_code == 0, r.output
    res = _last_json(r.stdout)
    assert {"mAP@all", "mAP@200", "P@100", "P@200"} <= set(res)
    assert res["queries"] == 3 * 4 and res["gallery"] == 3 * 5 and res["classes"] == 3
    assert all(0.0 <= res[k] <= 1.0 for k in ("mAP@all", "mAP@200", "P@100", "P@200"))
    assert res["P@100"] == res["P@200"] == 1 / 3  # 15 photos, 5 per class: the whole gallery is the top 100
    assert set(res["per_class"]) == {"diamond", "plus_ring", "ring"}
    per_class_map = [v["mAP@all"] for v in res["per_class"].values()]
    assert abs(sum(per_class_map) / 3 - res["mAP@all"]) < 1e-9  # 4 sketches per class: the mean of the classes
    from zsk.core.cache import default_cache

    assert default_cache().info().get("sbir-gallery", {}).get("entries", 0) == 1
    r2 = runner.invoke(app, ["sbir", "eval", "-c", str(run / "best.pt"), "--json", "--device", "cpu", "--quiet"])
    assert _last_json(r2.stdout) == res  # second run reads the cached gallery: same numbers
    assert default_cache().info()["sbir-gallery"]["entries"] == 1
    photo = root / "val" / "photo" / "ring" / "ring_000.jpg"  # a changed gallery file is a new key
    photo.write_bytes((root / "val" / "photo" / "ring" / "ring_001.jpg").read_bytes())
    r3 = runner.invoke(app, ["sbir", "eval", "-c", str(run / "best.pt"), "--json", "--device", "cpu", "--quiet"])
    assert r3.exit_code == 0, r3.output
    assert default_cache().info()["sbir-gallery"]["entries"] == 2

    sketches = [root / "val" / "sketch" / "ring" / "ring_000.jpg", root / "val" / "sketch" / "diamond" / "diamond_001.jpg"]
    out = tmp_path / "pred"
    r = runner.invoke(app, ["sbir", "predict", *map(str, sketches), "-c", str(run / "best.pt"), "--gallery",
                            str(root / "val"), "--top-k", "4", "--out", str(out), "--json", "--device", "cpu", "--quiet"])
    assert r.exit_code == 0, r.output
    rows = [json.loads(x) for x in r.stdout.splitlines() if x.startswith("{")]
    assert [row["class"] for row in rows] == ["ring", "diamond"]
    for row in rows:
        assert len(row["matches"]) == 4 and [m["rank"] for m in row["matches"]] == [1, 2, 3, 4]
        assert all(m["correct"] == (m["class"] == row["class"]) for m in row["matches"])
        scores = [m["score"] for m in row["matches"]]
        assert scores == sorted(scores, reverse=True)
        from PIL import Image

        with Image.open(row["strip"]) as im:
            assert im.size[0] == 128 * (2 + 4)
    # the faiss path (large galleries) ranks exactly as the torch path
    r = runner.invoke(app, ["sbir", "predict", *map(str, sketches), "-c", str(run / "best.pt"), "--gallery",
                            str(root / "val"), "--top-k", "4", "--out", str(tmp_path / "pred2"), "--no-strip", "--json",
                            "--set", "eval.faiss_min_gallery=1", "--device", "cpu", "--quiet"])
    assert r.exit_code == 0, r.output
    again = [json.loads(x) for x in r.stdout.splitlines() if x.startswith("{")]
    assert [[m["photo"] for m in row["matches"]] for row in again] == [[m["photo"] for m in row["matches"]] for row in rows]
    # --no-strip writes no PNG; both runs write their rows to <out>/predictions.jsonl, as printed
    assert sorted(p.name for p in (tmp_path / "pred2").iterdir()) == ["predictions.jsonl"]
    assert [json.loads(x) for x in (tmp_path / "pred2" / "predictions.jsonl").read_text().splitlines()] == again
    assert [json.loads(x) for x in (out / "predictions.jsonl").read_text().splitlines()] == rows


def test_select_last_keeps_the_last_weights(tmp_path: Path) -> None:
    from zsk.tasks.sbir.data import write_sample

    root = write_sample(tmp_path / "data", sketches=2, photos=3, size=16)
    run = tmp_path / "run"
    r = CliRunner().invoke(app, ["sbir", "train", "--recipe", "sbir/demo", "--set", f"data.root={root}", *FAST,
                                 "--set", "train.select=last", "--out", str(run), "--device", "cpu", "--quiet"])
    assert r.exit_code == 0, r.output
    assert (run / "best.pt").read_bytes() == (run / "last.pt").read_bytes()


def test_resume_after_an_interruption_is_exact(tmp_path: Path) -> None:
    """Stopped mid-epoch 2 (after the warm-up epoch, with a partial last batch) and resumed, training ends with
    the same weights as an uninterrupted run: the photo pairing and flips come from the checkpointed RNG."""
    import torch

    from zsk.tasks.sbir.data import write_sample

    root = write_sample(tmp_path / "data", sketches=2, photos=3, size=16)
    args = ["sbir", "train", "--recipe", "sbir/demo", "--set", f"data.root={root}", *FAST, "--set", "train.epochs=3",
            "--set", "train.batch_size=5", "--set", "eval.split=null", "--device", "cpu", "--quiet"]
    runner = CliRunner()
    assert runner.invoke(app, [*args, "--out", str(tmp_path / "a")]).exit_code == 0
    assert runner.invoke(app, [*args, "--set", "train.max_steps=4", "--out", str(tmp_path / "b")]).exit_code == 0
    assert torch.load(tmp_path / "b" / "last.pt", weights_only=True)["step"] == 4
    r = runner.invoke(app, [*args, "--out", str(tmp_path / "b"), "--resume"])
    assert r.exit_code == 0, r.output
    a, b = (torch.load(tmp_path / x / "last.pt", weights_only=True) for x in ("a", "b"))
    assert a["step"] == b["step"] == 9  # 12 sketches in batches of 5: 3 steps per epoch
    assert all(torch.equal(a["model"][k], b["model"][k]) for k in a["model"])
