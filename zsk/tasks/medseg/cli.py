"""``zsk medseg``: DTC semi-supervised 3-D segmentation. The common verbs come from the task contract;
medseg declares its extra options here and adds ``preprocess`` (raw LA / Pancreas-CT -> HDF5)."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from zsk.core.options import DebugOpt, JsonOpt, QuietOpt, guarded
from zsk.core.task import Option, TaskModules, task_app

TASK = TaskModules(
    __package__,
    help="DTC: semi-supervised medical image segmentation by dual-task consistency.",
    predict_help="Volumes (.nii, .nii.gz, .h5), folders of them, globs, or '-' to read paths from stdin.",
    input_suffixes=(".nii", ".nii.gz", ".h5"),
    summary_keys=("dice", "jaccard", "hd95", "asd"),
    eval_options=(
        Option("spacing_mm", Annotated[bool, typer.Option("--spacing-mm", help="HD95/ASD in millimetres from the volume "
                                                          "spacing (default: voxels, as the paper reports).")], False),
        Option("symmetric", Annotated[bool, typer.Option("--symmetric", help="Report the symmetric ASSD instead of the "
                                                         "directed ASD of the official code.")], False),
    ),
    sample_options=(
        Option("num_train", Annotated[int, typer.Option("--train", help="Training cases.")], 12),
        Option("num_test", Annotated[int, typer.Option("--test", help="Test cases.")], 4),
        Option("shape", Annotated[str, typer.Option("--shape", help="Volume size X,Y,Z in voxels.")], "48,40,32"),
    ),
)

app = task_app(TASK, docs={
    "train": "Train the dual-task V-Net (labelled + unlabelled cases) and evaluate it at the end.",
    "eval": "Sliding-window evaluation: Dice, Jaccard, HD95, ASD averaged over cases, plus per-case values.",
    "predict": "Segment volumes: NIfTI -> NIfTI mask with the input's affine/header, HDF5 -> HDF5, plus a PNG montage "
               "of axial slices named by their index z; one name per input (case.nii.gz + case.h5 -> case_nii_gz_*, "
               "case_h5_*).",
    "info": "Classes, splits, V-Net parameter count and GFLOPs per training patch.",
    "sample": "Write synthetic volumes (ellipsoid-like structure + noise) in the LA HDF5 layout and as NIfTI.",
})


@app.command("preprocess")
@guarded
def preprocess(dataset: Annotated[str, typer.Argument(help="la | pancreas")],
               raw: Annotated[Path, typer.Option("--raw", help="LA: the challenge's Training Set folder (<ID>/lgemri.nrrd, "
                                                 "laendo.nrrd). Pancreas: a folder of CT volumes in HU (.nii.gz).")],
               out: Annotated[Path, typer.Option("--out", help="Where the HDF5 cases and train.list / test.list go.")],
               labels: Annotated[Path | None, typer.Option("--labels", help="Pancreas: the label folder (.nii.gz).")] = None,
               lists: Annotated[Path | None, typer.Option("--lists", help="LA: copy train.list / test.list from this folder "
                                                          "(e.g. DTC's data/2018LA_Seg_Training Set).")] = None,
               num_test: Annotated[int, typer.Option("--num-test", help="Test cases of a seeded split (DTC: 20).")] = 20,
               seed: Annotated[int, typer.Option("--seed", help="Seeds the LA crop margins and the split.")] = 0,
               json_out: JsonOpt = False, quiet: QuietOpt = False, debug: DebugOpt = False) -> None:
    """Raw data -> DTC's HDF5 layout: LA .nrrd -> <ID>/mri_norm2.h5 (la_heart_processing.py), Pancreas-CT
    -> data/<name>.h5 (HU window, 1 mm resampling, crop, z-score), plus the split lists."""
    from zsk.core.errors import ZskError
    from zsk.core.progress import emit_result
    from zsk.tasks.medseg.preprocess import preprocess_la, preprocess_pancreas

    if dataset == "la":
        summary = preprocess_la(raw, out, seed=seed, num_test=num_test, lists=lists)
    elif dataset == "pancreas":
        if labels is None:
            raise ZskError("preprocess pancreas needs --labels DIR (the label volumes)")
        summary = preprocess_pancreas(raw, labels, out, seed=seed, num_test=num_test)
    else:
        raise ZskError(f"preprocess: unknown dataset {dataset!r}; choose la or pancreas")
    emit_result(summary, json_out, title=f"medseg preprocess {dataset}")
