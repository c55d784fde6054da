"""Malformed inputs a new user would try, across every hsi verb: each exits 2 with one `error:` line naming the
file or the recipe key (no traceback, no "unexpected ..."). Table-driven (issue 12).

`ROWS` holds argv templates (`{d}`: the folder `write_inputs` fills, `{sample}`: the sample scene, `{ckpt}`: a
tiny trained best.pt) so the table is written once and read by this test (in-process, `CliRunner`).
"""

from __future__ import annotations

import shutil
from pathlib import Path

import numpy as np
import pytest

TINY = [
    "model.patch=3", "model.band_groups=2", "model.branch_channels=[2,4]", "model.branch_spectral_kernels=[3,3]",
    "model.feature_dim=8", "model.pairwise_hidden=8", "model.refine_reduced_dim=2", "model.refine_widths=[4,4]",
    "train.steps=4", "train.batch_size=16", "train.eval_every=2", "train.stages.refine.steps=2",
    "train.stages.refine.eval_every=2", "data.rgb_bands=[8,4,1]",
]


def _sets(values: list[str]) -> list[str]:
    return [a for v in values for a in ("--set", v)]


def _truncate(path: Path, keep: float = 0.5) -> None:
    data = path.read_bytes()
    path.write_bytes(data[: int(len(data) * keep)])


def write_inputs(d: Path, sample: Path) -> None:
    """Every malformed file of the table, in its real format, from the sample scene (24 x 24 x 12, 6 classes)."""
    import h5py
    import scipy.io

    from zsk.data import cubes

    d.mkdir(parents=True, exist_ok=True)
    cube = np.load(sample / "sample.npy")
    gt = np.load(sample / "sample_gt.npy")
    np.save(d / "gt.npy", gt)
    np.save(d / "sample.npy", cube)
    shutil.copy(sample / "sample.h5", d / "sample.h5")
    # corrupt and truncated files of every cube format
    (d / "garbage.h5").write_bytes(b"this is not an HDF5 file\n" * 40)
    (d / "zero.h5").write_bytes(b"")
    with h5py.File(d / "trunc.h5", "w") as f:
        f.create_dataset("image", data=cube)
        f.create_dataset("gt", data=gt)
    _truncate(d / "trunc.h5")
    scipy.io.savemat(d / "trunc.mat", {"cube": cube}, do_compression=False)
    _truncate(d / "trunc.mat")
    scipy.io.savemat(d / "ztrunc.mat", {"cube": cube}, do_compression=True)
    _truncate(d / "ztrunc.mat")
    cubes.write_mat(d / "trunc73.mat", {"cube": cube}, version="7.3")
    _truncate(d / "trunc73.mat")
    (d / "garbage.mat").write_bytes(b"MATLAB 5.0 MAT-file, garbage" + bytes(range(256)) * 4)
    cubes.write_envi(d / "tenvi.hdr", cube)
    _truncate(d / "tenvi.img")
    (d / "junk.hdr").write_text("this is no ENVI header\nbands = twelve\n")
    (d / "junk.img").write_bytes(b"\0" * 100)
    np.save(d / "trunc.npy", cube)
    _truncate(d / "trunc.npy")
    (d / "cube.xyz").write_bytes(b"\0" * 64)
    # non-finite values
    nan = cube.copy()
    nan[3, 4, 5] = np.nan
    nan[7, 1, :2] = np.nan
    with h5py.File(d / "nan.h5", "w") as f:
        f.create_dataset("image", data=nan)
        f.create_dataset("gt", data=gt)
    np.save(d / "nan.npy", nan)
    inf = cube.copy()
    inf[0, 0, 0] = np.inf
    inf[5, 5, 5] = -np.inf
    np.save(d / "inf.npy", inf)
    with h5py.File(d / "inf.h5", "w") as f:
        f.create_dataset("image", data=inf)
    # wrong shapes, dtypes, band counts
    np.save(d / "b5.npy", cube[..., :5])
    np.save(d / "flat.npy", cube[..., 0])
    np.save(d / "empty.npy", np.zeros((0, 24, 12), np.float32))
    np.save(d / "cube4d.npy", cube[None])
    np.save(d / "str.npy", np.full((24, 24, 12), "a"))
    np.save(d / "cplx.npy", cube.astype(np.complex64))
    np.save(d / "tiny.npy", cube[:1, :6])
    np.save(d / "tinygt.npy", np.arange(1, 7, dtype=np.uint8)[None])
    with h5py.File(d / "keys.h5", "w") as f:
        f.create_dataset("image", data=cube)
    # label maps that do not fit
    np.save(d / "gt_small.npy", gt[:, :23])
    gt9 = gt.copy()
    gt9[0, 0] = 9
    np.save(d / "gt9.npy", gt9)
    neg = gt.astype(np.int16)
    neg[1, 1] = -1
    np.save(d / "gtneg.npy", neg)
    frac = gt.astype(np.float32)
    frac[2, 2] = 1.5
    np.save(d / "gtfrac.npy", frac)
    gnan = gt.astype(np.float32)
    gnan[2, 2] = np.nan
    np.save(d / "gtnan.npy", gnan)
    np.save(d / "gt0.npy", np.zeros_like(gt))
    big = gt.astype(np.int32)
    big[0, 0] = 70000
    np.save(d / "gtbig.npy", big)
    np.save(d / "mask9.npy", gt9)
    (d / "afile").write_text("an existing file, not a folder\n")
    (d / "emptydir").mkdir(exist_ok=True)
    (d / "notes.txt").write_text("hello\n")
    # a checkpoint of another task, and a file that is no checkpoint
    import torch

    torch.save({"format_version": 1, "task": "medseg", "recipe": {"task": "medseg"}, "model": {}}, d / "medseg.pt")
    (d / "garbage.pt").write_bytes(b"not a torch file" * 8)


TRAIN = ["train", "--recipe", "hsi/demo", "--out", "{d}/runs/{id}", "--set", "data.root={d}"]
TRAIN_GT = [*TRAIN, "--set", "data.labels=gt.npy"]
EVAL = ["eval", "-c", "{ckpt}"]
PRED = ["predict", "-c", "{ckpt}", "--out", "{d}/pred/{id}", "--no-preview"]


def _train(*sets: str, labels: bool = True) -> list[str]:
    return [*(TRAIN_GT if labels else TRAIN), *_sets(list(sets))]


# (id, argv template, stdin: a file name under {d} or None, fragments the error line must contain); all exit 2
ROWS: list[tuple[str, list[str], str | None, tuple[str, ...]]] = [
    # --- train: files -----------------------------------------------------------------------------
    ("train_missing_root", [*TRAIN[:-1], "data.root={d}/nowhere"], None, ("sample.h5", "not found")),
    ("train_garbage_h5", _train("data.image=garbage.h5"), None, ("garbage.h5",)),
    ("train_empty_h5", _train("data.image=zero.h5"), None, ("zero.h5",)),
    ("train_truncated_h5", _train("data.image=trunc.h5", "data.labels=null"), None, ("trunc.h5",)),
    ("train_truncated_mat", _train("data.image=trunc.mat"), None, ("trunc.mat",)),
    ("train_truncated_zmat", _train("data.image=ztrunc.mat"), None, ("ztrunc.mat",)),
    ("train_truncated_mat73", _train("data.image=trunc73.mat"), None, ("trunc73.mat",)),
    ("train_garbage_mat", _train("data.image=garbage.mat"), None, ("garbage.mat",)),
    ("train_truncated_envi", _train("data.image=tenvi.hdr"), None, ("tenvi",)),
    ("train_junk_envi_header", _train("data.image=junk.hdr"), None, ("junk.hdr",)),
    ("train_truncated_npy", _train("data.image=trunc.npy"), None, ("trunc.npy",)),
    ("train_unknown_format", _train("data.image=cube.xyz"), None, ("cube.xyz",)),
    ("train_nan_cube", _train("data.image=nan.h5", "data.labels=null"), None, ("nan.h5", "3 NaN")),
    ("train_inf_cube", _train("data.image=inf.npy"), None, ("inf.npy", "2 ", "inf")),
    ("train_cube_2d", _train("data.image=flat.npy"), None, ("flat.npy",)),
    ("train_cube_empty", _train("data.image=empty.npy"), None, ("empty.npy",)),
    ("train_cube_4d", _train("data.image=cube4d.npy"), None, ("cube4d.npy",)),
    ("train_cube_strings", _train("data.image=str.npy"), None, ("str.npy",)),
    ("train_cube_complex", _train("data.image=cplx.npy"), None, ("cplx.npy",)),
    ("train_cube_too_small", _train("data.image=tiny.npy", "data.labels=tinygt.npy"), None, ("tiny",)),
    # --- train: label maps ------------------------------------------------------------------------
    ("train_labels_shape", _train("data.image=sample.npy", "data.labels=gt_small.npy"), None, ("gt_small.npy",)),
    ("train_labels_out_of_range", _train("data.labels=gt9.npy"), None, ("gt9.npy", "9")),
    ("train_labels_huge_id", _train("data.labels=gtbig.npy", "data.class_names=null"), None, ("gtbig.npy", "70000")),
    ("train_labels_negative", _train("data.labels=gtneg.npy"), None, ("gtneg.npy",)),
    ("train_labels_fractional", _train("data.labels=gtfrac.npy"), None, ("gtfrac.npy",)),
    ("train_labels_nan", _train("data.labels=gtnan.npy"), None, ("gtnan.npy",)),
    ("train_labels_all_zero", _train("data.labels=gt0.npy"), None, ("gt0.npy",)),
    ("train_mask_out_of_range", _train("data.split.mode=masks", "data.split.train_mask=mask9.npy",
                                       "data.split.fraction=null"), None, ("mask9.npy",)),
    ("train_masks_without_mask", _train("data.split.mode=masks", "data.split.fraction=null"), None,
     ("data.split.train_mask",)),
    # --- train / info: recipe keys ----------------------------------------------------------------
    ("set_patch_zero", _train("model.patch=0"), None, ("model.patch",)),
    ("set_patch_even", _train("model.patch=4"), None, ("model.patch",)),
    ("set_dropout", _train("model.dropout=1.5"), None, ("model.dropout",)),
    ("set_feature_dim", _train("model.feature_dim=0"), None, ("model.feature_dim",)),
    ("set_band_groups_type", _train("model.band_groups=abc"), None, ("model.band_groups",)),
    ("set_band_groups_zero", _train("model.band_groups=0"), None, ("model.band_groups",)),
    ("set_branch_channels", _train("model.branch_channels=[4,0]"), None, ("model.branch_channels",)),
    ("set_mean_field_iters", _train("model.mean_field_iters=-1"), None, ("model.mean_field_iters",)),
    ("set_crf_radius", _train("model.crf_radius=0"), None, ("model.crf_radius",)),
    ("set_unary_weight", _train("train.unary_weight=-1"), None, ("train.unary_weight",)),
    ("set_pairwise_weight_type", _train("train.pairwise_weight=heavy"), None, ("train.pairwise_weight",)),
    ("set_refine_crop", _train("train.refine_crop=0"), None, ("train.refine_crop",)),
    ("set_stage_refine_crop", _train("train.stages.refine.refine_crop=-2"), None,
     ("train.stages.refine.refine_crop",)),
    ("set_chunk_pixels", _train("eval.chunk_pixels=0"), None, ("eval.chunk_pixels",)),
    ("set_tile_pixels", _train("eval.tile_pixels=-5"), None, ("eval.tile_pixels",)),
    ("set_split_fraction", _train("data.split.fraction=1.5"), None, ("data.split.fraction",)),
    ("set_split_val_share", _train("data.split.val_share=1"), None, ("data.split.val_share",)),
    ("set_split_count", _train("data.split.count=0", "data.split.fraction=null"), None, ("data.split.count",)),
    ("set_pca_zero", _train("data.pca=0"), None, ("data.pca",)),
    ("set_drop_last_bands", _train("data.drop_last_bands=-1"), None, ("data.drop_last_bands",)),
    ("set_rgb_bands", _train("data.rgb_bands=[1,2]"), None, ("data.rgb_bands",)),
    ("set_palette", _train("data.palette=[[1,2,3]]"), None, ("data.palette",)),
    ("set_unknown_key", _train("data.bandz=3"), None, ("data.bandz",)),
    ("info_patch_negative", ["info", "--recipe", "hsi/demo", "--set", "model.patch=-1"], None, ("model.patch",)),
    ("info_bands_zero", ["info", "--recipe", "hsi/demo", "--set", "data.bands=0"], None, ("data.bands",)),
    ("info_missing_recipe", ["info", "--recipe", "{d}/missing.yaml"], None, ("missing.yaml",)),
    # --- eval -------------------------------------------------------------------------------------
    ("eval_missing_checkpoint", ["eval", "-c", "{d}/nope.pt"], None, ("nope.pt",)),
    ("eval_garbage_checkpoint", ["eval", "-c", "{d}/garbage.pt"], None, ("garbage.pt",)),
    ("eval_other_task_checkpoint", ["eval", "-c", "{d}/medseg.pt"], None, ("medseg",)),
    ("eval_set_changes_model", [*EVAL, "--set", "model.feature_dim=16"], None, ("best.pt",)),
    ("eval_wrong_band_count", [*EVAL, *_sets(["data.root={d}", "data.image=b5.npy", "data.labels=gt.npy"])], None,
     ("b5.npy", "5 bands")),
    ("eval_nan_cube", [*EVAL, *_sets(["data.root={d}", "data.image=nan.h5", "data.labels=null"])], None,
     ("nan.h5", "3 NaN")),
    ("eval_labels_out_of_range", [*EVAL, *_sets(["data.root={d}", "data.image=sample.npy",
                                                  "data.labels=gt9.npy"])], None, ("gt9.npy",)),
    ("eval_labels_shape", [*EVAL, *_sets(["data.root={d}", "data.image=sample.npy", "data.labels=gt_small.npy"])],
     None, ("gt_small.npy",)),
    ("eval_out_is_a_file", [*EVAL, "--out", "{d}/afile"], None, ("afile",)),
    ("eval_bad_split", [*EVAL, "--split", "bogus"], None, ("bogus",)),
    ("eval_set_chunk_pixels", [*EVAL, "--set", "eval.chunk_pixels=0"], None, ("eval.chunk_pixels",)),
    ("eval_set_non_finite", [*EVAL, "--set", "data.non_finite=ignore"], None, ("data.non_finite",)),
    # --- predict ----------------------------------------------------------------------------------
    ("predict_wrong_band_count", [*PRED, "{d}/b5.npy"], None, ("b5.npy", "5 bands")),
    ("predict_nan_npy", [*PRED, "{d}/nan.npy"], None, ("nan.npy", "3 NaN")),
    ("predict_inf_h5", [*PRED, "{d}/inf.h5"], None, ("inf.h5", "2 ")),
    ("predict_truncated_h5", [*PRED, "{d}/trunc.h5"], None, ("trunc.h5",)),
    ("predict_truncated_mat", [*PRED, "{d}/trunc.mat"], None, ("trunc.mat",)),
    ("predict_truncated_mat73", [*PRED, "{d}/trunc73.mat"], None, ("trunc73.mat",)),
    ("predict_truncated_envi", [*PRED, "{d}/tenvi.hdr"], None, ("tenvi",)),
    ("predict_truncated_npy", [*PRED, "{d}/trunc.npy"], None, ("trunc.npy",)),
    ("predict_label_map", [*PRED, "{d}/flat.npy"], None, ("flat.npy",)),
    ("predict_cube_4d", [*PRED, "{d}/cube4d.npy"], None, ("cube4d.npy",)),
    ("predict_complex", [*PRED, "{d}/cplx.npy"], None, ("cplx.npy",)),
    ("predict_strings", [*PRED, "{d}/str.npy"], None, ("str.npy",)),
    ("predict_too_small", [*PRED, "{d}/tiny.npy"], None, ("tiny.npy",)),
    ("predict_missing_key", [*PRED, "{d}/keys.h5", "--key", "radiance"], None, ("keys.h5", "radiance")),
    ("predict_missing_file", [*PRED, "{d}/ghost.npy"], None, ("ghost.npy",)),
    ("predict_empty_folder", [*PRED, "{d}/emptydir"], None, ("emptydir",)),
    ("predict_text_file", [*PRED, "{d}/notes.txt"], None, ("notes.txt",)),
    ("predict_out_is_a_file", ["predict", "-c", "{ckpt}", "--out", "{d}/afile", "{sample}/sample.npy"], None,
     ("afile",)),
    ("predict_other_task_checkpoint", ["predict", "-c", "{d}/medseg.pt", "--out", "{d}/pred/x", "{sample}/sample.npy"],
     None, ("medseg",)),
    ("predict_set_tile_pixels", [*PRED, "--set", "eval.tile_pixels=0", "{sample}/sample.npy"], None,
     ("eval.tile_pixels",)),
    ("predict_set_changes_model", [*PRED, "--set", "model.feature_dim=16", "{sample}/sample.npy"], None, ("best.pt",)),
    ("predict_stdin_text", [*PRED, "-"], "notes.txt", ("stdin",)),
    ("predict_stdin_empty", [*PRED, "-"], "zero.h5", ("stdin",)),
    ("predict_stdin_label_map", [*PRED, "-"], "flat.npy", ("stdin",)),
    ("predict_stdin_strings", [*PRED, "-"], "str.npy", ("stdin",)),
    ("predict_stdin_empty_cube", [*PRED, "-"], "empty.npy", ("stdin",)),
    ("predict_stdin_nan", [*PRED, "-"], "nan.npy", ("stdin", "3 NaN")),
    ("predict_stdin_h5", [*PRED, "-"], "keys.h5", ("stdin",)),
    # --- sample -----------------------------------------------------------------------------------
    ("sample_into_a_file", ["sample", "{d}/afile", "--size", "16", "--bands", "4"], None, ("afile",)),
]


def fill(argv: list[str], d: Path, sample: Path, ckpt: Path, row_id: str) -> list[str]:
    """The argv of a row with its placeholders filled."""
    return [a.format(d=d, sample=sample, ckpt=ckpt, id=row_id) for a in argv]


@pytest.fixture(scope="module")
def table(tmp_path_factory):
    """A tiny trained checkpoint on the 24 x 24 x 12 sample scene, and the table's malformed files."""
    from typer.testing import CliRunner

    from zsk.tasks.hsi import data as hsi_data
    from zsk.tasks.hsi.cli import app

    root = tmp_path_factory.mktemp("hsi_bad")
    sample = root / "sample"
    hsi_data.write_sample(sample, 24, 24, 12)
    runner = CliRunner()
    r = runner.invoke(app, ["train", "--recipe", "hsi/demo", *_sets([f"data.root={sample}", *TINY]),
                            "--out", str(root / "run"), "--device", "cpu", "--quiet"])
    assert r.exit_code == 0, r.output
    write_inputs(root / "d", sample)
    return runner, app, root / "d", sample, root / "run" / "best.pt"


@pytest.mark.parametrize("row", ROWS, ids=[r[0] for r in ROWS])
def test_bad_input_exits_2_naming_it(table, row, one_error_line):
    runner, app, d, sample, ckpt = table
    row_id, argv, stdin, fragments = row
    data = (d / stdin).read_bytes() if stdin is not None else None
    r = runner.invoke(app, [*fill(argv, d, sample, ckpt, row_id), "--device", "cpu"]
                      if argv[0] in ("train", "eval", "predict") else fill(argv, d, sample, ckpt, row_id), input=data)
    one_error_line(r, fragments)


def test_table_is_large_enough():
    assert len(ROWS) >= 20 and len({r[0] for r in ROWS}) == len(ROWS)


def test_rows_fill_every_placeholder(table):
    """The argv templates fill without leftover placeholders, and every stdin file exists."""
    _, _, d, sample, ckpt = table
    for row_id, argv, stdin, _ in ROWS:
        assert not any("{" in a for a in fill(argv, d, sample, ckpt, row_id)), argv
        assert stdin is None or (d / stdin).is_file(), stdin
