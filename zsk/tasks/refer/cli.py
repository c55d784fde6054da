"""``zsk refer``: AlignFormer referring image segmentation (arXiv 2301.06429 v1; architecture of its official
successor LGFormer). The common verbs come from the task contract; refer declares its options here."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from zsk.core.task import Option, TaskModules, task_app

TASK = TaskModules(
    __package__,
    help="AlignFormer: referring image segmentation (Swin + BERT, VLBA, linguistic query decoding).",
    predict_help="Images (.jpg, .png, ...), folders of them, globs, or '-' to read image paths from stdin; the "
                 "expressions come from --text or --texts-file.",
    input_suffixes=(".jpg", ".jpeg", ".png", ".bmp", ".webp"),
    summary_keys=("oIoU", "mIoU", "prec@0.5", "prec@0.6", "prec@0.7", "prec@0.8", "prec@0.9"),
    eval_options=(
        Option("resolution", Annotated[str | None, typer.Option(
            "--resolution", help="input: IoU at the network's input size, GT resized with nearest (LAVT/LGFormer, "
                                 "default); original: prediction warped to the image's own size (CRIS).")], None),
        Option("threshold", Annotated[float | None, typer.Option(
            "--threshold", help="Sigmoid threshold (default eval.threshold = 0.5; CRIS uses 0.35).")], None),
        Option("strict_prec", Annotated[bool, typer.Option(
            "--strict-prec", help="prec@X counts IoU > X (CRIS) instead of IoU >= X (LAVT, LGFormer).")], False),
    ),
    predict_options=(
        Option("text", Annotated[list[str] | None, typer.Option(
            "--text", "-t", help="An expression (repeatable), e.g. --text \"the man on the left\".")], None),
        Option("texts_file", Annotated[Path | None, typer.Option(
            "--texts-file", help="A file with one expression per line; '-' reads them from stdin.")], None),
    ),
    sample_options=(
        Option("images", Annotated[int, typer.Option("--images", help="Synthetic images (two refs each).")], 40),
        Option("size", Annotated[int, typer.Option("--size", help="Image side in pixels.")], 64),
    ),
)

app = task_app(TASK, docs={
    "train": "Train AlignFormer on RefCOCO / RefCOCO+ / RefCOCOg (one random sentence per ref per epoch); best "
             "checkpoint by val oIoU.",
    "eval": "Every sentence of every ref: oIoU (cumulative I / cumulative U), mIoU (mean per-expression IoU) and "
            "prec@0.5..0.9, at 480x480 with threshold 0.5 by default.",
    "predict": "Segment what each expression refers to: <name>_<k>_mask.png (image size) and <name>_<k>_overlay.png "
               "(mask tinted, expression written on it) per image and expression.",
    "info": "Model parts, parameter counts and GFLOPs per image and expression.",
    "sample": "Write a synthetic referring set in the refer layout (refs(unc).p, instances.json with COCO "
              "polygons, train2014 JPEGs, vocab.txt).",
})
