"""``zsk medseg``: DTC semi-supervised 3-D segmentation. The common verbs come from the task contract;
medseg declares its extra options here."""

from __future__ import annotations

from typing import Annotated

import typer

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
