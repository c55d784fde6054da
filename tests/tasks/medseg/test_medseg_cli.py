"""End-to-end command line: sample -> train -> eval --json -> predict, resume, info, and bad inputs (exit 2)."""

from __future__ import annotations

import json
from pathlib import Path

import h5py
import nibabel as nib
import numpy as np
import pytest
import torch
from typer.testing import CliRunner

from zsk.core.checkpoint import load_checkpoint
from zsk.data.volumes import write_h5_volume
from zsk.tasks.medseg.cli import app

runner = CliRunner()
TINY = ["--set", "data.patch_size=[16,16,16]", "--set", "data.labeled_num=2", "--set", "eval.stride=[8,8,8]",
        "--set", "train.log_every=1", "--set", "eval.max_cases=1"]


def invoke(*args: str):
    return runner.invoke(app, [str(a) for a in args], catch_exceptions=False)


def last_json(result) -> dict:
    return json.loads(result.stdout.strip().splitlines()[-1])


@pytest.fixture(scope="module")
def sample_dir(tmp_path_factory):
    out = tmp_path_factory.mktemp("medseg-sample")
    r = invoke("sample", out, "--train", 4, "--test", 2, "--shape", "32,32,16", "--json")
    assert r.exit_code == 0, r.output
    assert last_json(r)["la"] == str(out / "la")
    return out


def test_end_to_end(sample_dir, tmp_path):
    run = tmp_path / "run"
    r = invoke("train", "--recipe", "medseg/demo", "--set", f"data.root={sample_dir / 'la'}", *TINY,
               "--set", "train.max_steps=3", "--out", run, "--device", "cpu", "--json",
               "--set", "runtime.loggers=[tensorboard]", "--set", "runtime.preview_images=1")
    assert r.exit_code == 0, r.output
    assert set(last_json(r)) >= {"dice", "jaccard", "hd95", "asd", "run_dir"}
    # the evaluation sent the first case's most-labelled axial slice (32 x 32: image | truth | prediction)
    ea = pytest.importorskip("tensorboard.backend.event_processing.event_accumulator")
    acc = ea.EventAccumulator(str(run / "tensorboard"), size_guidance={ea.IMAGES: 0})
    acc.Reload()
    (tag,) = acc.Tags()["images"]
    shot = acc.Images(tag)[-1]
    assert tag.startswith("preview/SAMPLE004_z") and (shot.width, shot.height, shot.step) == (3 * 32 + 8, 32, 3)
    for name in ("best.pt", "last.pt", "metrics.jsonl", "eval.json", "recipe.yaml"):
        assert (run / name).is_file(), name
    records = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    train_rec = [x for x in records if x["kind"] == "train"]
    assert [x["step"] for x in train_rec] == [1, 2, 3]
    assert {"loss", "loss_dice", "loss_lsf", "loss_dtc", "loss_ce", "dtc_weight"} <= set(train_rec[0])
    ckpt = load_checkpoint(run / "best.pt")
    assert ckpt["task"] == "medseg" and ckpt["extra"]["class_names"] == ["background", "structure"]

    r = invoke("eval", "--checkpoint", run / "best.pt", "--set", "eval.max_cases=null", "--json")
    assert r.exit_code == 0, r.output
    res = last_json(r)
    assert {"dice", "jaccard", "hd95", "asd", "per_case"} <= set(res)
    assert [c["case"] for c in res["per_case"]] == ["SAMPLE004", "SAMPLE005"]
    assert res["dice"] == pytest.approx(np.mean([c["dice"] for c in res["per_case"]]))
    assert res["distances"] == "voxels" and res["asd_mode"] == "directed" and res["largest_component"] is True
    r = invoke("eval", "--checkpoint", run / "best.pt", "--spacing-mm", "--symmetric", "--json")
    assert r.exit_code == 0, r.output
    assert last_json(r)["distances"] == "mm" and last_json(r)["asd_mode"] == "symmetric"

    out = tmp_path / "pred"
    nii_in = sample_dir / "nifti" / "images" / "SAMPLE004.nii.gz"
    h5_in = sample_dir / "la" / "SAMPLE005" / "mri_norm2.h5"
    r = invoke("predict", nii_in, h5_in, "--checkpoint", run / "best.pt", "--out", out, "--json")
    assert r.exit_code == 0, r.output
    rows = [json.loads(line) for line in r.stdout.strip().splitlines()]
    assert [row["mask"] for row in rows] == [str(out / "SAMPLE004_pred.nii.gz"), str(out / "SAMPLE005_pred.h5")]
    src, mask = nib.load(str(nii_in)), nib.load(str(out / "SAMPLE004_pred.nii.gz"))
    np.testing.assert_allclose(mask.affine, src.affine)
    assert mask.header.get_zooms() == src.header.get_zooms() and mask.shape == src.shape
    assert set(np.unique(np.asanyarray(mask.dataobj))) <= {0, 1}
    with h5py.File(out / "SAMPLE005_pred.h5") as f:
        assert f["prediction"].shape == f["image"].shape == (32, 32, 16)
        assert 0 <= f["probability"][()].min() and f["probability"][()].max() <= 1
    assert (out / "SAMPLE004_montage.png").stat().st_size > 0


def test_resume_gives_the_same_weights(sample_dir, tmp_path):
    common = ["--recipe", "medseg/demo", "--set", f"data.root={sample_dir / 'la'}", *TINY, "--device", "cpu",
              "--set", "eval.split=", "--set", "train.save_every=1"]
    r = invoke("train", *common, "--set", "train.max_steps=4", "--out", tmp_path / "full")
    assert r.exit_code == 0, r.output
    r = invoke("train", *common, "--set", "train.max_steps=2", "--out", tmp_path / "part")
    assert r.exit_code == 0, r.output
    r = invoke("train", *common, "--set", "train.max_steps=4", "--out", tmp_path / "part", "--resume")
    assert r.exit_code == 0, r.output
    a, b = load_checkpoint(tmp_path / "full" / "last.pt"), load_checkpoint(tmp_path / "part" / "last.pt")
    assert a["step"] == b["step"] == 4
    for k, v in a["model"].items():
        assert torch.equal(v, b["model"][k]), k


def test_info_prints_vnet_size():
    r = invoke("info", "--recipe", "medseg/la_16", "--json")
    assert r.exit_code == 0, r.output
    res = last_json(r)
    assert res["params_total"] == 9_448_866 and res["input_patch"] == [112, 112, 80]
    assert res["classes"] == ["background", "left atrium"]


def test_bad_inputs_exit_2_naming_the_file(sample_dir, tmp_path):
    ckpt_dir = tmp_path / "ck"
    r = invoke("train", "--recipe", "medseg/demo", "--set", f"data.root={sample_dir / 'la'}", *TINY,
               "--set", "train.max_steps=1", "--set", "eval.split=", "--out", ckpt_dir, "--device", "cpu")
    assert r.exit_code == 0, r.output
    ckpt = ckpt_dir / "best.pt"
    img = np.zeros((20, 20, 20), np.float32)
    bad = {"flat.h5": (img[:, :, 0], None), "nan.h5": (np.where(img == 0, np.nan, img), None)}
    for name, (image, label) in bad.items():
        write_h5_volume(tmp_path / name, image, label)
    with h5py.File(tmp_path / "nokey.h5", "w") as f:
        f["data"] = img
    for name in ("flat.h5", "nan.h5", "nokey.h5", "missing.nii.gz"):
        r = invoke("predict", tmp_path / name, "--checkpoint", ckpt, "--out", tmp_path / "o")
        assert r.exit_code == 2, (name, r.output)
        assert "error:" in r.stderr and name in r.stderr and "Traceback" not in r.output
    # a labelled training case whose label does not match its image
    la = tmp_path / "la"
    for case in ("A", "B"):
        write_h5_volume(la / case / "mri_norm2.h5", img, np.zeros((20, 20, 19), np.uint8))
    (la / "train.list").write_text("A\nB\n")
    (la / "test.list").write_text("")
    r = invoke("train", "--recipe", "medseg/demo", "--set", f"data.root={la}", *TINY, "--out", tmp_path / "r1")
    assert r.exit_code == 2 and "label shape" in r.stderr and "mri_norm2.h5" in r.stderr
    r = invoke("eval", "--checkpoint", ckpt, "--set", f"data.root={la}")
    assert r.exit_code == 2 and "test.list" in r.stderr and "empty" in r.stderr
    r = invoke("train", "--recipe", "medseg/demo", "--set", "data.patch_size=[20,20,20]", "--out", tmp_path / "r2")
    assert r.exit_code == 2 and "multiple of 16" in r.stderr
    r = invoke("train", "--recipe", "medseg/demo", "--set", "train.loss.betta=1", "--out", tmp_path / "r3")
    assert r.exit_code == 2 and "train.loss.betta" in r.stderr


def test_nifti_csv_layout_trains_and_evaluates_in_mm(sample_dir, tmp_path):
    nii = sample_dir / "nifti"
    r = invoke("train", "--recipe", "medseg/demo", "--set", f"data.root={nii}", "--set", "data.format=nifti",
               "--set", "data.train_list=\"{root}/train.csv\"", "--set", f"data.test_list={nii / 'test.csv'}", *TINY,
               "--set", "train.max_steps=2", "--out", tmp_path / "run", "--device", "cpu")
    assert r.exit_code == 0, r.output
    r = invoke("eval", "--checkpoint", tmp_path / "run" / "best.pt", "--spacing-mm", "--set", "eval.max_cases=null",
               "--json")
    assert r.exit_code == 0, r.output
    res = last_json(r)
    assert res["distances"] == "mm" and [c["case"] for c in res["per_case"]] == ["SAMPLE004", "SAMPLE005"]


@pytest.fixture(scope="module")
def tiny_checkpoint(sample_dir, tmp_path_factory):
    run = tmp_path_factory.mktemp("medseg-ck") / "run"
    r = invoke("train", "--recipe", "medseg/demo", "--set", f"data.root={sample_dir / 'la'}", *TINY,
               "--set", "train.max_steps=2", "--set", "eval.split=", "--out", run, "--device", "cpu", "-q")
    assert r.exit_code == 0, r.output
    return run / "best.pt"


def test_predict_names_outputs_per_input_uniquely_and_stably(sample_dir, tiny_checkpoint, tmp_path):
    """Issue 12: the README's own `predict case.nii.gz case.h5` (one stem) and a/x.h5 + b/x.h5 (one file
    name) give one mask and one montage per input, named the same way on every run."""
    import shutil

    inputs = tmp_path / "in"
    (inputs / "a").mkdir(parents=True)
    (inputs / "b").mkdir()
    shutil.copy(sample_dir / "nifti" / "images" / "SAMPLE004.nii.gz", inputs / "case.nii.gz")
    shutil.copy(sample_dir / "la" / "SAMPLE005" / "mri_norm2.h5", inputs / "case.h5")
    shutil.copy(sample_dir / "la" / "SAMPLE004" / "mri_norm2.h5", inputs / "a" / "x.h5")
    shutil.copy(sample_dir / "la" / "SAMPLE005" / "mri_norm2.h5", inputs / "b" / "x.h5")
    args = [inputs / "case.nii.gz", inputs / "case.h5", inputs / "a" / "x.h5", inputs / "b" / "x.h5"]
    out = tmp_path / "pred"

    def run() -> list[dict]:
        r = invoke("predict", *args, "--checkpoint", tiny_checkpoint, "--out", out, "--json", "-q")
        assert r.exit_code == 0, r.output
        return [json.loads(line) for line in r.stdout.strip().splitlines()]

    rows = run()
    masks, montages = [row["mask"] for row in rows], [row["montage"] for row in rows]
    assert len(set(masks)) == len(set(montages)) == 4 and all(map(lambda p: Path(p).is_file(), masks + montages))
    assert Path(masks[0]).name == "case_nii_gz_pred.nii.gz" and Path(masks[1]).name == "case_h5_pred.h5"
    assert sorted(p.name for p in out.iterdir()) == sorted(Path(p).name for p in masks + montages)
    # the outputs differ where the inputs differ
    with h5py.File(masks[1]) as f1, h5py.File(masks[2]) as f2, h5py.File(masks[3]) as f3:
        assert not np.array_equal(f2["image"][()], f3["image"][()])
        np.testing.assert_array_equal(f1["image"][()], f3["image"][()])  # case.h5 and b/x.h5 are one volume
    assert Path(montages[2]).read_bytes() != Path(montages[3]).read_bytes()
    assert Path(montages[0]).read_bytes() != Path(montages[1]).read_bytes()
    again = run()
    assert [row["mask"] for row in again] == masks and [row["montage"] for row in again] == montages
    assert len(list(out.iterdir())) == 8
