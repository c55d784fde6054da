"""Malformed inputs a new user would try, across every medseg verb: each exits 2 with one `error:` line naming
the file or the recipe key (no traceback, no "unexpected ..."). Table-driven (issue 12).

`ROWS` holds argv templates (`{d}`: the folder `write_inputs` fills, `{la}`: the sample set in the LA layout,
`{ck}`: a tiny trained best.pt shared by the module) so the table is written once; the rows run in-process
with `CliRunner`.
"""

from __future__ import annotations

import gzip
from pathlib import Path

import numpy as np
import pytest
from typer.testing import CliRunner

from zsk.tasks.medseg.cli import app

runner = CliRunner()
TINY = ["--set", "data.patch_size=[16,16,16]", "--set", "data.labeled_num=2", "--set", "eval.stride=[8,8,8]",
        "--set", "eval.max_cases=1", "--device", "cpu", "-q"]
TRAIN = ["train", "--recipe", "medseg/demo", "--set", "data.root={la}", *TINY, "--set", "train.max_steps=1",
         "--out", "{d}/run"]
PREDICT = ["-c", "{ck}", "--out", "{d}/pred", "--device", "cpu", "-q"]
EVAL = ["eval", "-c", "{ck}", "--device", "cpu", "-q"]


def _la_root(root: Path, image: np.ndarray, label: np.ndarray | None) -> None:
    """An LA-layout data root (``<ID>/mri_norm2.h5``, train.list, test.list) whose cases are (image, label)."""
    import h5py

    for case in ("A", "B"):
        (root / case).mkdir(parents=True)
        with h5py.File(root / case / "mri_norm2.h5", "w") as f:
            f["image"] = image
            if label is not None:
                f["label"] = label
    (root / "train.list").write_text("A\nB\n")
    (root / "test.list").write_text("A\n")


def write_inputs(d: Path, sample: Path, ck: Path) -> None:
    """Every malformed file of the table, in its real format (HDF5 with h5py, NIfTI with nibabel)."""
    import h5py
    import nibabel as nib
    import torch

    d.mkdir(parents=True, exist_ok=True)
    img = np.random.default_rng(0).normal(size=(20, 20, 20)).astype(np.float32)
    lab = (img > 0).astype(np.uint8)
    # corrupt and truncated files of both volume formats
    nii = (sample / "nifti" / "images" / "SAMPLE004.nii.gz").read_bytes()
    (d / "trunc.nii.gz").write_bytes(nii[: len(nii) // 2])
    raw = gzip.decompress(nii)
    (d / "trunc.nii").write_bytes(raw[: len(raw) // 2])
    (d / "garbage.nii").write_bytes(b"\0" * 400)
    h5 = (sample / "la" / "SAMPLE004" / "mri_norm2.h5").read_bytes()
    (d / "trunc.h5").write_bytes(h5[: len(h5) // 2])
    (d / "empty.h5").write_bytes(b"")
    with h5py.File(d / "nokey.h5", "w") as f:
        f["data"] = img
    with h5py.File(d / "group.h5", "w") as f:
        f.create_group("image")
    # non-finite values, wrong dimensions and types
    with h5py.File(d / "nan.h5", "w") as f:
        f["image"] = np.where(img > 1, np.nan, img)
    inf = img.copy()
    inf[3, 3, 3] = np.inf
    nib.save(nib.Nifti1Image(inf, np.eye(4)), str(d / "inf.nii.gz"))
    nib.save(nib.Nifti1Image(img[:, :, 0], np.eye(4)), str(d / "flat.nii.gz"))
    with h5py.File(d / "rgb.h5", "w") as f:
        f["image"] = np.repeat(img[..., None], 3, axis=-1)
    nib.save(nib.Nifti1Image(img.astype(np.complex64), np.eye(4)), str(d / "complex.nii.gz"))
    with h5py.File(d / "spacing.h5", "w") as f:
        f["image"] = img
        f.attrs["spacing"] = "1mm"
    with h5py.File(d / "tiny.h5", "w") as f:  # 4³ voxels for a 16³ window: a patch larger than the volume
        f["image"] = img[:4, :4, :4]
    (d / "photo.png").write_bytes(b"\x89PNG\r\n\x1a\n" + b"\0" * 64)
    (d / "taken.txt").write_text("a file, not a folder\n")
    (d / "empty_dir").mkdir()
    # checkpoints: not a torch file, and one of another task
    (d / "bad.pt").write_bytes(b"not a checkpoint")
    state = torch.load(ck, weights_only=True)
    state["task"] = "hsi"
    torch.save(state, d / "hsi.pt")
    # data roots with one bad case each
    _la_root(d / "label3", img, lab * 3)  # label ids beyond data.num_classes = 2
    _la_root(d / "nancase", np.where(img > 1, np.nan, img), lab)
    _la_root(d / "nolabel", img, None)
    _la_root(d / "binlist", img, lab)
    (d / "binlist" / "test.list").write_bytes(b"\xff\xfe\x00\x81garbage\x00")
    _la_root(d / "tinycase", img[:6], lab[:6])
    csv_root = d / "niicsv"
    (csv_root / "images").mkdir(parents=True)
    nib.save(nib.Nifti1Image(img, np.eye(4)), str(csv_root / "images" / "c1.nii.gz"))
    (csv_root / "c1_label.nii.gz").write_bytes(b"garbage")
    (csv_root / "test.csv").write_text("image,label\nimages/c1.nii.gz,c1_label.nii.gz\n")
    (csv_root / "bad.csv").write_bytes(b"\xff\xfe\x00garbage,\x81\n")


ROWS: list[tuple[str, list[str], str]] = [
    # predict: missing, corrupt and truncated volumes of every format it reads
    ("predict-missing", ["predict", "{d}/missing.nii.gz", *PREDICT], "missing.nii.gz"),
    ("predict-truncated-nii-gz", ["predict", "{d}/trunc.nii.gz", *PREDICT], "trunc.nii.gz"),
    ("predict-truncated-nii", ["predict", "{d}/trunc.nii", *PREDICT], "trunc.nii"),
    ("predict-garbage-nii", ["predict", "{d}/garbage.nii", *PREDICT], "garbage.nii"),
    ("predict-truncated-h5", ["predict", "{d}/trunc.h5", *PREDICT], "trunc.h5"),
    ("predict-empty-h5", ["predict", "{d}/empty.h5", *PREDICT], "empty.h5"),
    ("predict-h5-no-image-key", ["predict", "{d}/nokey.h5", *PREDICT], "nokey.h5"),
    ("predict-h5-image-is-group", ["predict", "{d}/group.h5", *PREDICT], "group.h5"),
    # predict: values and shapes
    ("predict-nan", ["predict", "{d}/nan.h5", *PREDICT], "nan.h5"),
    ("predict-inf", ["predict", "{d}/inf.nii.gz", *PREDICT], "inf.nii.gz"),
    ("predict-2d", ["predict", "{d}/flat.nii.gz", *PREDICT], "flat.nii.gz"),
    ("predict-multichannel", ["predict", "{d}/rgb.h5", *PREDICT], "rgb.h5"),
    ("predict-complex", ["predict", "{d}/complex.nii.gz", *PREDICT], "complex.nii.gz"),
    ("predict-bad-spacing-attr", ["predict", "{d}/spacing.h5", *PREDICT], "spacing.h5"),
    ("predict-patch-larger-than-volume", ["predict", "{d}/tiny.h5", *PREDICT], "tiny.h5"),
    ("predict-not-a-volume", ["predict", "{d}/photo.png", *PREDICT], "photo.png"),
    ("predict-empty-folder", ["predict", "{d}/empty_dir", *PREDICT], "empty_dir"),
    # predict: --out and checkpoints
    ("predict-out-is-a-file", ["predict", "{la}/SAMPLE004/mri_norm2.h5", "-c", "{ck}", "--out", "{d}/taken.txt",
                               "--device", "cpu"], "taken.txt"),
    ("predict-corrupt-checkpoint", ["predict", "{la}/SAMPLE004/mri_norm2.h5", "-c", "{d}/bad.pt", "--out",
                                    "{d}/pred"], "bad.pt"),
    ("predict-checkpoint-of-another-task", ["predict", "{la}/SAMPLE004/mri_norm2.h5", "-c", "{d}/hsi.pt", "--out",
                                            "{d}/pred"], "hsi"),
    # eval: window/stride keys, ranges, a --set that changes the model
    ("eval-stride-larger-than-window", [*EVAL, "--set", "eval.stride=[32,32,32]"], "eval.stride"),
    ("eval-stride-zero", [*EVAL, "--set", "eval.stride=[0,8,8]"], "eval.stride"),
    ("eval-stride-two-values", [*EVAL, "--set", "eval.stride=[8,8]"], "eval.stride"),
    ("eval-window-larger-than-volume", [*EVAL, "--set", "eval.patch_size=[64,64,64]"], "eval.patch_size"),
    ("eval-window-not-multiple-of-16", [*EVAL, "--set", "eval.patch_size=[24,16,16]"], "eval.patch_size"),
    ("eval-window-batch-zero", [*EVAL, "--set", "eval.window_batch=0"], "eval.window_batch"),
    ("eval-threshold-above-one", [*EVAL, "--set", "eval.threshold=1.5"], "eval.threshold"),
    ("eval-max-cases-negative", [*EVAL, "--set", "eval.max_cases=-1"], "eval.max_cases"),
    ("eval-set-changes-the-model", [*EVAL, "--set", "model.n_filters=8"], "best.pt"),
    ("eval-unknown-split", [*EVAL, "--split", "nope"], "nope.list"),
    ("eval-out-is-a-file", [*EVAL, "--out", "{d}/taken.txt"], "taken.txt"),
    # eval: bad data roots
    ("eval-label-ids-beyond-num-classes", [*EVAL, "--set", "data.root={d}/label3"], "label3/A/mri_norm2.h5"),
    ("eval-nan-case", [*EVAL, "--set", "data.root={d}/nancase"], "nancase/A/mri_norm2.h5"),
    ("eval-case-without-label", [*EVAL, "--set", "data.root={d}/nolabel"], "nolabel/A/mri_norm2.h5"),
    ("eval-binary-list-file", [*EVAL, "--set", "data.root={d}/binlist"], "test.list"),
    ("eval-corrupt-nifti-label", [*EVAL, "--set", "data.root={d}/niicsv", "--set", "data.format=nifti",
                                  "--set", "data.test_list={d}/niicsv/test.csv"], "c1_label.nii.gz"),
    ("eval-binary-csv", [*EVAL, "--set", "data.root={d}/niicsv", "--set", "data.format=nifti",
                         "--set", "data.test_list={d}/niicsv/bad.csv"], "bad.csv"),
    # train: task keys out of range, wrong types, unknown keys, data that cannot train
    ("train-n-filters-zero", [*TRAIN, "--set", "model.n_filters=0"], "model.n_filters"),
    ("train-dropout-above-one", [*TRAIN, "--set", "model.dropout=1.5"], "model.dropout"),
    ("train-groupnorm-width", [*TRAIN, "--set", "model.norm=groupnorm", "--set", "model.n_filters=5"],
     "model.n_filters"),
    ("train-loss-beta-negative", [*TRAIN, "--set", "train.loss.beta=-1"], "train.loss.beta"),
    ("train-rampup-interval-zero", [*TRAIN, "--set", "train.loss.rampup_interval=0"], "train.loss.rampup_interval"),
    ("train-labeled-bs-above-batch", [*TRAIN, "--set", "train.labeled_bs=8"], "train.labeled_bs"),
    ("train-patch-larger-than-volumes", [*TRAIN, "--set", "data.patch_size=[128,128,128]", "--set",
                                         "eval.stride=[8,8,8]"], "data.patch_size"),
    ("train-patch-larger-than-a-case", [*TRAIN, "--set", "data.root={d}/tinycase", "--set",
                                        "data.labeled_num=1", "--set", "train.labeled_bs=1"],
     "tinycase/A/mri_norm2.h5"),
    ("train-labeled-num-wrong-type", [*TRAIN, "--set", "data.labeled_num=two"], "data.labeled_num"),
    ("train-labeled-num-zero", [*TRAIN, "--set", "data.labeled_num=0"], "data.labeled_num"),
    ("train-unknown-key", [*TRAIN, "--set", "data.nope=1"], "data.nope"),
    ("train-label-ids-beyond-num-classes", [*TRAIN, "--set", "data.root={d}/label3"], "label3/A/mri_norm2.h5"),
    ("train-missing-root", [*TRAIN, "--set", "data.root={d}/nowhere"], "nowhere"),
    ("train-out-is-a-file", [*TRAIN[:-1], "{d}/taken.txt"], "taken.txt"),
    # info and sample
    ("info-in-channels-zero", ["info", "--recipe", "medseg/demo", "--set", "model.in_channels=0"], "model.in_channels"),
    ("info-spacing-zero", ["info", "--recipe", "medseg/demo", "--set", "data.spacing=[0,1,1]"], "data.spacing"),
    ("info-class-names-count", ["info", "--recipe", "medseg/demo", "--set", "data.num_classes=3"], "data.class_names"),
    ("sample-into-a-file", ["sample", "{d}/taken.txt"], "taken.txt"),
    ("sample-zero-train", ["sample", "{d}/s2", "--train", "0"], "--train"),
    ("sample-bad-shape", ["sample", "{d}/s3", "--shape", "8,8"], "--shape"),
]


@pytest.fixture(scope="module")
def env(tmp_path_factory) -> dict[str, str]:
    """The sample set, one tiny trained checkpoint and the malformed files, shared by every row."""
    root = tmp_path_factory.mktemp("medseg-bad")
    r = runner.invoke(app, ["sample", str(root / "s"), "--train", "4", "--test", "2", "--shape", "32,32,16", "-q"])
    assert r.exit_code == 0, r.output
    la = root / "s" / "la"
    argv = [a.format(la=la, d=root) for a in TRAIN] + ["--set", "eval.split="]
    argv[argv.index(f"{root}/run")] = str(root / "ck")
    r = runner.invoke(app, argv)
    assert r.exit_code == 0, r.output
    write_inputs(root / "bad", root / "s", root / "ck" / "best.pt")
    return {"d": str(root / "bad"), "la": str(la), "ck": str(root / "ck" / "best.pt")}


def test_table_is_large_enough() -> None:
    assert len(ROWS) >= 20 and len({name for name, _, _ in ROWS}) == len(ROWS)


@pytest.mark.parametrize(("argv", "fragment"), [(a, f) for _, a, f in ROWS], ids=[n for n, _, _ in ROWS])
def test_bad_input_exits_2_naming_the_file_or_key(env: dict[str, str], argv: list[str], fragment: str,
                                                   one_error_line) -> None:  # noqa: ANN001
    one_error_line(runner.invoke(app, [a.format(**env) for a in argv]), fragment)
