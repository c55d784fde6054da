"""``zsk segment``: ZegCLIP zero-shot semantic segmentation. The common verbs come from the task contract;
segment declares its extra options here."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from zsk.core.task import Option, TaskModules, task_app
from zsk.data.images import IMAGE_SUFFIXES

TASK = TaskModules(
    __package__,
    help="ZegCLIP: one-stage zero-shot semantic segmentation from CLIP.",
    predict_help="Images, folders of images, globs, or '-' to read paths from stdin (aspect ratio up to "
                 "max(eval.img_scale) / patch size : 1, e.g. 128:1 for ViT-B/16 at 2048x512).",
    input_suffixes=IMAGE_SUFFIXES,
    summary_keys=("mIoU", "mIoU_seen", "mIoU_unseen", "hIoU", "pAcc"),
    predict_options=(
        Option("classes", Annotated[str | None, typer.Option("--classes", help="Comma-separated class names "
                                                              "(open vocabulary).")], None),
        Option("classes_file", Annotated[Path | None, typer.Option("--classes-file", help="Class names, one a line.")],
               None),
    ),
    sample_options=(
        Option("num_train", Annotated[int, typer.Option("--train", help="Training images.")], 48),
        Option("num_val", Annotated[int, typer.Option("--val", help="Validation images.")], 12),
    ),
)

app = task_app(TASK, docs={
    "train": "Train ZegCLIP (inductive, transductive or fully supervised, as the recipe says).",
    "eval": "Evaluate a checkpoint: mIoU, mIoU(seen), mIoU(unseen), hIoU, pAcc and per-class IoU.",
    "predict": "Segment images with the checkpoint's classes or any class names: a palette PNG mask in the "
               "dataset's own ids, an overlay PNG with a legend of class names and colours, a JSON legend.",
    "info": "Classes, split, parameters (own and paper-comparable) and GFLOPs at the recipe's crop size.",
    "sample": "Write a small synthetic PASCAL VOC 2012 set (JPEGImages, SegmentationClass, ImageSets) for the demo recipe.",
})
