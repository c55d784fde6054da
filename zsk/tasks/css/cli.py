"""``zsk css``: SATS continual semantic segmentation. The common verbs come from the task contract; css
declares ``train --from-step`` here."""

from __future__ import annotations

from typing import Annotated

import typer

from zsk.core.task import Option, TaskModules, task_app
from zsk.data.images import IMAGE_SUFFIXES

TASK = TaskModules(
    __package__,
    help="SATS: continual semantic segmentation by self-attention transfer (SegFormer, MiB, PLOP).",
    predict_help="Images, folders of images, globs, or '-' to read paths from stdin.",
    input_suffixes=IMAGE_SUFFIXES,
    summary_keys=("old", "new", "all", "avg"),
    sample_options=(
        Option("num_train", Annotated[int, typer.Option("--train", help="Training images.")], 40),
        Option("num_val", Annotated[int, typer.Option("--val", help="Validation images.")], 12),
    ),
    train_options=(
        Option("from_step", Annotated[int | None, typer.Option(
            "--from-step", help="Start the sequence at incremental step N (steps < N come from train.init_checkpoint "
                                "or the resumed run folder's last-step<N-1>.pt).")], None,
               recipe_key="train.from_step"),
    ),
)

app = task_app(TASK, docs={
    "train": "Train every incremental step of the recipe's continual task, one stage per step (RUN/last-step<t>.pt, "
             "eval-step<t>.json).",
    "eval": "Evaluate a checkpoint after its last step: old / new / all mIoU (old includes background), per-class IoU "
            "and the per-step history.",
    "predict": "Segment images with every class learned so far: palette mask in dataset ids, overlay with a legend, "
               "JSON legend.",
    "info": "Task steps, classes per step, parameters and GFLOPs at the crop size.",
    "sample": "Write a small synthetic PASCAL VOC set (MiB layout) for the 3-step demo task.",
})
