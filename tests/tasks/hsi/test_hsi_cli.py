"""End to end through the command line: sample -> train -> eval --json -> predict -> info, and bad inputs (exit 2)."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest
from PIL import Image
from typer.testing import CliRunner

from zsk.data import cubes
from zsk.tasks.hsi.cli import app

TINY = [
    "model.patch=3", "model.band_groups=2", "model.branch_channels=[2,4]", "model.branch_spectral_kernels=[3,3]",
    "model.feature_dim=8", "model.pairwise_hidden=8", "model.refine_reduced_dim=2", "model.refine_widths=[4,4]",
    "train.steps=6", "train.batch_size=16", "train.eval_every=3", "train.stages.refine.steps=3",
    "train.stages.refine.eval_every=2",
    "data.rgb_bands=[8,4,1]",
]


def _sets(values: list[str]) -> list[str]:
    out = []
    for v in values:
        out += ["--set", v]
    return out


def _json_lines(text: str) -> list[dict]:
    return [json.loads(line) for line in text.splitlines() if line.startswith("{")]


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    root = tmp_path_factory.mktemp("hsi_cli")
    runner = CliRunner()
    sample = root / "sample"
    r = runner.invoke(app, ["sample", str(sample), "--size", "24", "--bands", "12", "--json"])
    assert r.exit_code == 0, r.output
    assert json.loads(r.stdout)["h5"].endswith("sample.h5")
    run = root / "run"
    r = runner.invoke(app, ["train", "--recipe", "hsi/demo", *_sets([f"data.root={sample}", *TINY,
                                                                       "runtime.loggers=[tensorboard]"]),
                            "--out", str(run), "--device", "cpu", "--json"])
    assert r.exit_code == 0, r.output
    return runner, root, sample, run, _json_lines(r.stdout)[-1]


def test_refine_evaluations_send_a_scene_preview(trained):
    """False colour | validation labels | refined map of the whole scene, per refine-stage evaluation."""
    ea = pytest.importorskip("tensorboard.backend.event_processing.event_accumulator")
    run = trained[3]
    acc = ea.EventAccumulator(str(run / "tensorboard" / "refine"), size_guidance={ea.IMAGES: 0})
    acc.Reload()
    assert acc.Tags()["images"] == ["refine/preview/scene"]
    shot = acc.Images("refine/preview/scene")[-1]
    assert (shot.width, shot.height) == (3 * 24 + 8, 24)  # the 24 x 24 sample scene, three panels


def test_train_writes_the_run_directory(trained):
    _, _, _, run, result = trained
    for name in ("best.pt", "last.pt", "eval.json", "recipe.yaml", "metrics.jsonl", "confusion_test.csv",
                 "last-piecewise.pt", "last-refine.pt"):
        assert (run / name).is_file(), name
    assert set(result["stages"]) == {"cnn", "crf", "refined"}
    records = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    assert {r.get("stage") for r in records} == {"piecewise", "refine"}
    assert any("pairwise" in r for r in records if r["kind"] == "train")
    assert json.loads((run / "eval.json").read_text())["OA"] == pytest.approx(result["OA"])


def test_eval_json_matches_training_eval(trained):
    runner, root, _, run, result = trained
    r = runner.invoke(app, ["eval", "--checkpoint", str(run / "best.pt"), "--json"])
    assert r.exit_code == 0, r.output
    out = json.loads(r.stdout)
    assert {"OA", "AA", "kappa", "per_class", "per_class_f1", "stages"} <= set(out)
    assert set(out["per_class"]) == {"Water", "Forest", "Meadow", "Bare soil", "Asphalt", "Roof"}
    assert out["OA"] == pytest.approx(result["OA"])  # same split redrawn, same weights
    assert out["pixels"] == result["pixels"]
    # two checkpoints -> mean and std over runs
    r = runner.invoke(app, ["eval", "-c", str(run / "best.pt"), "-c", str(run / "best.pt"), "--json",
                            "--split", "val", "--out", str(root / "eval_val")])
    assert r.exit_code == 0, r.output
    summary = json.loads(r.stdout)
    assert summary["runs"] == 2 and summary["OA"]["std"] == 0.0
    # eval writes files only under --out (one folder per checkpoint), never next to the checkpoint
    assert (root / "eval_val" / "0" / "confusion_val.csv").is_file()
    assert (root / "eval_val" / "1" / "confusion_val.csv").is_file()
    assert not (run / "confusion_val.csv").exists()


def test_predict_every_format_gives_the_same_map(trained):
    runner, root, sample, run, _ = trained
    out = root / "pred"
    inputs = [str(sample / n) for n in ("sample.h5", "sample.mat", "sample.hdr", "sample.npy")]
    r = runner.invoke(app, ["predict", *inputs, "--checkpoint", str(run / "best.pt"), "--out", str(out),
                            "--probs", "--json"])
    assert r.exit_code == 0, r.output
    results = _json_lines(r.stdout)
    assert len(results) == 4
    # four inputs share the stem "sample": each gets its own files (zsk.core.io.output_names)
    assert [Path(res["labels_npy"]).name for res in results] == [
        "sample_h5_labels.npy", "sample_mat_labels.npy", "sample_hdr_labels.npy", "sample_npy_labels.npy"]
    maps = [np.load(res["labels_npy"]) for res in results]
    for m in maps:
        assert m.shape == (24, 24) and m.min() >= 1 and m.max() <= 6  # every pixel predicted, borders too
        np.testing.assert_array_equal(m, maps[0])
    for name in ("sample_h5", "sample_mat", "sample_hdr", "sample_npy"):
        probs = np.load(out / f"{name}_probs.npy")
        assert probs.shape == (24, 24, 6)
        np.testing.assert_allclose(probs.sum(-1), 1.0, atol=1e-4)
        png = Image.open(out / f"{name}_labels.png")
        assert png.mode == "P"
        np.testing.assert_array_equal(np.asarray(png), maps[0])
        assert Image.open(out / f"{name}_preview.png").size[0] > 200


def test_predict_reads_npy_from_stdin(trained):
    runner, root, sample, run, _ = trained
    r = runner.invoke(app, ["predict", "-", "-c", str(run / "best.pt"), "--out", str(root / "stdin"), "--no-preview",
                            "--json"], input=(sample / "sample.npy").read_bytes())
    assert r.exit_code == 0, r.output
    r = runner.invoke(app, ["predict", str(sample / "sample.npy"), "-c", str(run / "best.pt"), "--out",
                            str(root / "stdin"), "--no-preview"])
    assert r.exit_code == 0, r.output
    np.testing.assert_array_equal(np.load(root / "stdin" / "stdin_labels.npy"),
                                  np.load(root / "stdin" / "sample_labels.npy"))


def test_predict_a_folder_of_cubes(trained, tmp_path):
    runner, _, sample, run, _ = trained
    folder = tmp_path / "cubes"
    folder.mkdir()
    shutil.copy(sample / "sample.npy", folder / "a.npy")
    shutil.copy(sample / "sample.h5", folder / "b.h5")
    (folder / "notes.txt").write_text("not a cube")
    r = runner.invoke(app, ["predict", str(folder), "-c", str(run / "best.pt"), "--out", str(tmp_path / "p"),
                            "--no-preview", "--json"])
    assert r.exit_code == 0, r.output
    rows = _json_lines(r.stdout)
    assert [Path(row["input"]).name for row in rows] == ["a.npy", "b.h5"]
    np.testing.assert_array_equal(np.load(tmp_path / "p" / "a_labels.npy"), np.load(tmp_path / "p" / "b_labels.npy"))


def test_predict_names_are_unique_per_input_and_stable(trained, tmp_path):
    """Inputs sharing a stem (a/x.npy, b/x.npy, x.h5) never overwrite each other; a rerun names them the same."""
    runner, _, sample, run, _ = trained
    cube = np.load(sample / "sample.npy")
    for folder in ("a", "b"):
        (tmp_path / folder).mkdir()
    np.save(tmp_path / "a" / "x.npy", cube)
    np.save(tmp_path / "b" / "x.npy", np.ascontiguousarray(cube[::-1]))  # another scene
    cubes.write_h5(tmp_path / "x.h5", cube)
    inputs = [str(tmp_path / "a" / "x.npy"), str(tmp_path / "b" / "x.npy"), str(tmp_path / "x.h5")]
    listings, maps = [], []
    for _ in range(2):
        r = runner.invoke(app, ["predict", *inputs, "-c", str(run / "best.pt"), "--out", str(tmp_path / "p"),
                                "--no-preview", "--probs", "--json"])
        assert r.exit_code == 0, r.output
        rows = _json_lines(r.stdout)
        files = [Path(row["probs"]) for row in rows]
        assert len(set(files)) == 3 and all(f.is_file() for f in files)
        listings.append(sorted(p.name for p in (tmp_path / "p").iterdir()))
        maps.append([np.load(f) for f in files])
    assert listings[0] == listings[1] and len(listings[0]) == 9  # labels .npy/.png + probs per input, same names
    assert listings[0][:3] == ["a__x_npy_labels.npy", "a__x_npy_labels.png", "a__x_npy_probs.npy"]
    a, b, h5 = maps[0]
    assert not np.allclose(a, b)  # b/x.npy did not overwrite a/x.npy's output
    np.testing.assert_array_equal(a, h5)  # the same cube in another format: the same output under its own name
    for first, again in zip(maps[0], maps[1], strict=True):
        np.testing.assert_array_equal(first, again)


def test_eval_and_predict_write_nothing_next_to_the_checkpoint(trained, tmp_path, monkeypatch):
    """eval writes only under --out (none given: nowhere) and prints its metrics even from a read-only run folder."""
    runner, _, sample, run, _ = trained
    ro = tmp_path / "ro"
    ro.mkdir()
    shutil.copy(run / "best.pt", ro / "best.pt")
    work = tmp_path / "cwd"
    work.mkdir()
    monkeypatch.chdir(work)
    ro.chmod(0o555)
    try:
        r = runner.invoke(app, ["eval", "-c", str(ro / "best.pt"), "--json"])
        assert r.exit_code == 0, r.output
        assert "OA" in json.loads(r.stdout)
        r = runner.invoke(app, ["predict", str(sample / "sample.npy"), "-c", str(ro / "best.pt"), "--out",
                                str(tmp_path / "pred"), "--no-preview"])
        assert r.exit_code == 0, r.output
    finally:
        ro.chmod(0o755)
    assert sorted(p.name for p in ro.iterdir()) == ["best.pt"]
    assert list(work.iterdir()) == []  # no confusion CSV, no eval.json in the working folder either
    r = runner.invoke(app, ["eval", "-c", str(ro / "best.pt"), "--out", str(tmp_path / "ev"), "--json"])
    assert r.exit_code == 0, r.output
    assert sorted(p.name for p in (tmp_path / "ev").iterdir()) == ["confusion_test.csv", "eval.json"]
    assert sorted(p.name for p in ro.iterdir()) == ["best.pt"]


def test_non_finite_cubes_are_refused_unless_asked_to_zero_them(trained, tmp_path):
    """NaN/inf values: exit 2 naming the file and the counts; `--set data.non_finite=zero` predicts around them."""
    runner, _, sample, run, _ = trained
    cube = np.load(sample / "sample.npy")
    cube[3, 4, 5] = np.nan
    cube[10, 11, :3] = np.inf
    np.save(tmp_path / "bad.npy", cube)
    r = runner.invoke(app, ["predict", str(tmp_path / "bad.npy"), "-c", str(run / "best.pt"), "--out",
                            str(tmp_path / "p"), "--no-preview"])
    assert r.exit_code == 2, r.output
    assert "bad.npy" in r.output and "1 NaN and 3 inf values in 2 of 576 pixels" in r.output
    assert not (tmp_path / "p" / "bad_labels.npy").exists()
    r = runner.invoke(app, ["predict", str(tmp_path / "bad.npy"), "-c", str(run / "best.pt"), "--out",
                            str(tmp_path / "p"), "--no-preview", "--probs", "--set", "data.non_finite=zero"])
    assert r.exit_code == 0, r.output
    labels = np.load(tmp_path / "p" / "bad_labels.npy")
    assert labels[3, 4] == 0 and labels[10, 11] == 0  # no prediction where the spectrum is missing
    assert (labels > 0).sum() == 24 * 24 - 2
    probs = np.load(tmp_path / "p" / "bad_probs.npy")
    assert np.isfinite(probs).all() and probs[3, 4].sum() == 0
    # the recipe's scene: train and eval refuse it too (a silently wrong map before)
    h5 = tmp_path / "scene.h5"
    cubes.write_h5(h5, cube, np.load(sample / "sample_gt.npy"))
    r = runner.invoke(app, ["eval", "-c", str(run / "best.pt"), "--set", f"data.root={tmp_path}",
                            "--set", "data.image=scene.h5"])
    assert r.exit_code == 2 and "scene.h5" in r.output and "1 NaN and 3 inf" in r.output, r.output
    r = runner.invoke(app, ["eval", "-c", str(run / "best.pt"), "--set", f"data.root={tmp_path}",
                            "--set", "data.image=scene.h5", "--set", "data.non_finite=zero", "--json"])
    assert r.exit_code == 0, r.output


def test_predict_stdin_that_is_not_a_cube_exits_2(trained, tmp_path):
    runner, _, sample, run, _ = trained
    for data, words in ((b"", "no data"), ((sample / "sample.h5").read_bytes(), "not a NumPy .npy stream"),
                        (_npy_bytes(np.zeros((4, 4))), "2-D"), (_npy_bytes(np.full((4, 4, 12), "a")), "dtype")):
        r = runner.invoke(app, ["predict", "-", "-c", str(run / "best.pt"), "--out", str(tmp_path / "p")], input=data)
        assert r.exit_code == 2, r.output
        assert "error: stdin" in r.output and words in r.output and "unexpected" not in r.output


def _npy_bytes(arr: np.ndarray) -> bytes:
    import io

    buf = io.BytesIO()
    np.save(buf, arr)
    return buf.getvalue()


def test_predict_wrong_band_count_exits_2(trained):
    runner, root, _, run, _ = trained
    np.save(root / "bands5.npy", np.zeros((10, 10, 5), dtype=np.float32))
    r = runner.invoke(app, ["predict", str(root / "bands5.npy"), "-c", str(run / "best.pt"), "--out", str(root / "p2")])
    assert r.exit_code == 2
    assert "5 bands" in r.output and "12 bands" in r.output and "bands5.npy" in r.output
    (root / "broken.h5").write_bytes(b"not hdf5 at all" * 10)
    r = runner.invoke(app, ["predict", str(root / "broken.h5"), "-c", str(run / "best.pt"), "--out", str(root / "p2")])
    assert r.exit_code == 2 and "broken.h5" in r.output and "Traceback" not in r.output


def test_info_lists_params_and_classes(trained):
    runner, _, sample, _, _ = trained
    r = runner.invoke(app, ["info", "--recipe", "hsi/demo", *_sets([f"data.root={sample}", *TINY]), "--json"])
    assert r.exit_code == 0, r.output
    info = json.loads(r.stdout)
    assert info["classes"]["1"] == "Water" and info["scene"]["bands"] == 12
    assert info["params_trainable"] == info["params_total"] > 0
    assert set(info["params_by_part"]) == {"features", "unary", "pairwise", "refine"}
    assert info["gflops"] > 0 and info["gflops_unit"] == "per pixel of dense inference"


def test_bad_inputs_exit_2(trained, tmp_path):
    runner, _, sample, _, _ = trained
    r = runner.invoke(app, ["train", "--recipe", "hsi/demo", "--set", "model.band_grups=2", "--out", str(tmp_path / "r")])
    assert r.exit_code == 2 and "model.band_grups" in r.output
    r = runner.invoke(app, ["train", "--recipe", "hsi/demo", "--set", f"data.root={tmp_path}", "--out", str(tmp_path / "r")])
    assert r.exit_code == 2 and "sample.h5" in r.output and "not found" in r.output
    # labels not matching the cube
    cubes.write_h5(tmp_path / "c.h5", np.zeros((8, 8, 12), np.float32))
    np.save(tmp_path / "gt.npy", np.ones((8, 7), np.uint8))
    r = runner.invoke(app, ["train", "--recipe", "hsi/demo", *_sets([f"data.root={tmp_path}", "data.image=c.h5",
                            "data.labels=gt.npy", "data.class_names=null"]), "--out", str(tmp_path / "r")])
    assert r.exit_code == 2 and "gt.npy" in r.output and "does not match" in r.output
    r = runner.invoke(app, ["eval", "--checkpoint", str(tmp_path / "nope.pt")])
    assert r.exit_code == 2 and "nope.pt" in r.output


def test_train_runs_reports_mean_and_std(trained, tmp_path):
    runner, _, sample, _, _ = trained
    sets = _sets([f"data.root={sample}", *TINY, "train.steps=2", "model.refine=false", "model.name=cnn"])
    r = runner.invoke(app, ["train", "--recipe", "hsi/demo", *sets, "--runs", "2", "--out", str(tmp_path / "runs"),
                            "--json"])
    assert r.exit_code == 0, r.output
    summary = _json_lines(r.stdout)[-1]
    assert summary["runs"] == 2 and {"mean", "std"} == set(summary["OA"])
    assert (tmp_path / "runs" / "run-0" / "best.pt").is_file() and (tmp_path / "runs" / "run-1" / "best.pt").is_file()
    seeds = [json.loads((tmp_path / "runs" / f"run-{i}" / "eval.json").read_text())["OA"] for i in (0, 1)]
    assert summary["OA"]["mean"] == pytest.approx(sum(seeds) / 2)
    assert (tmp_path / "runs" / "summary.json").is_file()
    # eval of the --runs directory: every run's best.pt, mean and std
    r = runner.invoke(app, ["eval", "--checkpoint", str(tmp_path / "runs"), "--json"])
    assert r.exit_code == 0, r.output
    assert json.loads(r.stdout)["OA"]["mean"] == pytest.approx(summary["OA"]["mean"])
    # the same as naming every run's checkpoint
    r = runner.invoke(app, ["eval", "-c", str(tmp_path / "runs" / "run-0"), "-c", str(tmp_path / "runs" / "run-1"),
                            "--json"])
    assert r.exit_code == 0, r.output
    assert json.loads(r.stdout)["OA"]["mean"] == pytest.approx(summary["OA"]["mean"])


def test_unpadded_scene_leaves_border_unclassified(trained, tmp_path):
    """data.pad: none reproduces DeepHyperX: border pixels are neither trained on, scored nor predicted."""
    runner, _, sample, _, _ = trained
    sets = _sets([f"data.root={sample}", *TINY, "train.steps=2", "data.pad=none"])
    r = runner.invoke(app, ["train", "--recipe", "hsi/demo", *sets, "--out", str(tmp_path / "run"), "--json"])
    assert r.exit_code == 0, r.output
    r = runner.invoke(app, ["eval", "-c", str(tmp_path / "run"), "--split", "all", "--json"])
    assert r.exit_code == 0, r.output
    labels = cubes.read_labels(sample / "sample.h5")
    assert json.loads(r.stdout)["pixels"] == int((labels[1:-1, 1:-1] > 0).sum())
    r = runner.invoke(app, ["predict", str(sample / "sample.npy"), "-c", str(tmp_path / "run" / "best.pt"),
                            "--out", str(tmp_path / "p"), "--no-preview"])
    assert r.exit_code == 0, r.output
    m = np.load(tmp_path / "p" / "sample_labels.npy")
    assert (m[0] == 0).all() and (m[:, -1] == 0).all() and (m[1:-1, 1:-1] > 0).all()


def test_bench_spec_runs(trained):
    import torch

    from zsk.core.bench import trainer_step
    from zsk.core.run import load_config
    from zsk.tasks.hsi import hooks
    from zsk.tasks.hsi.config import Config

    _, _, sample, _, _ = trained
    cfg, _ = load_config("hsi", Config, "hsi/demo", [f"data.root={sample}", *TINY])
    spec = hooks.bench_spec(cfg, torch.device("cpu"), 8)
    train_step, trainer = trainer_step(spec, cfg, torch.device("cpu"))
    before = {k: v.clone() for k, v in spec.model.state_dict().items()}
    train_step()
    spec.infer_step()
    # the Trainer's real step on the piecewise stage: the recipe's optimizer, the potentials updated
    assert trainer.cfg.optimizer == "adam" and trainer.step == 1
    assert any(not torch.equal(v, spec.model.state_dict()[k]) for k, v in before.items())
    assert spec.infer_samples == 24 * 24 and spec.infer_unit == "pixels" and spec.train_samples == 8


def test_no_training_pairs_skips_the_pairwise_term(trained, tmp_path):
    runner, _, sample, _, _ = trained
    sets = _sets([f"data.root={sample}", *TINY, "train.steps=2", "model.refine=false", "data.split.mode=fixed",
                  "data.split.count=1", "data.split.fraction=null", "data.split.val_share=0", "train.batch_size=6"])
    r = runner.invoke(app, ["train", "--recipe", "hsi/demo", *sets, "--out", str(tmp_path / "run"), "--json"])
    assert r.exit_code == 0, r.output
    assert "pairwise term is skipped" in r.output
    records = [json.loads(line) for line in (tmp_path / "run" / "metrics.jsonl").read_text().splitlines()]
    assert all("pairwise" not in rec for rec in records if rec["kind"] == "train")
    # issue 11: the untrained pairwise head is not used at inference: the CRF map is the unary map
    stages = _json_lines(r.stdout)[-1]["stages"]
    assert stages["crf"] == stages["cnn"], stages
    r = runner.invoke(app, ["eval", "--checkpoint", str(tmp_path / "run" / "best.pt"), "--json"])
    assert r.exit_code == 0, r.output
    assert "pairwise head was never trained" in r.output
    assert json.loads(r.stdout)["stages"]["crf"] == stages["cnn"]


def test_info_of_a_paper_recipe_without_its_files(tmp_path):
    r = CliRunner().invoke(app, ["info", "--recipe", "hsi/pavia_u", "--set", f"data.root={tmp_path}", "--json"])
    assert r.exit_code == 0, r.output
    info = json.loads(r.stdout)
    assert info["scene"]["bands"] == 103 and "benchmark table" in info["scene"]["source"]
    assert info["band_groups"] == [[0, 26], [26, 52], [52, 78], [78, 103]]  # spec: 26, 26, 26, 25
    assert len(info["classes"]) == 9 and info["classes"]["9"] == "Shadows"


def test_shipped_recipes_parse():
    from zsk.core.recipe import recipes_dir
    from zsk.core.run import load_config
    from zsk.tasks.hsi.config import Config

    paths = sorted((recipes_dir() / "hsi").glob("*.yaml"))
    assert {p.stem for p in paths} >= {"demo", "indian_pines", "pavia_u", "pavia_c", "salinas", "ksc", "botswana",
                                       "indian_pines_cnn"}
    for p in paths:
        assert p.read_text().startswith("task: hsi\ndescription: ")
        cfg, _ = load_config("hsi", Config, p)
        if p.stem != "demo":
            assert cfg.model.patch == 7 and cfg.model.band_groups == 4 and cfg.train.lr == 1e-3
    cnn, _ = load_config("hsi", Config, "hsi/indian_pines_cnn")
    assert cnn.model.name == "cnn" and not cnn.model.refine and cnn.data.dataset == "indian_pines"
