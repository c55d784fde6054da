"""``zsk sbir``: ACNet zero-shot sketch-based image retrieval. The common verbs come from the task contract;
sbir declares its extra options here."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from zsk.core.options import DebugOpt, JsonOpt, QuietOpt, RecipeOpt, SetOpt, guarded
from zsk.core.task import Option, TaskModules, task_app

TASK = TaskModules(
    __package__,
    help="ACNet: zero-shot sketch-based image retrieval (sketch -> photo generator + proxy-centred retrieval).",
    predict_help="Sketch images (.jpg, .png), folders of them, globs, or '-' to read paths from stdin.",
    input_suffixes=(".jpg", ".jpeg", ".png"),
    summary_keys=("mAP@all", "mAP@200", "P@100", "P@200"),
    predict_options=(
        Option("gallery", Annotated[Path | None, typer.Option("--gallery", help="Photos to search: a folder of class "
                                                               "folders (<class>/*.jpg), an ACNet split folder, or a "
                                                               "flat folder; default: the recipe's unseen photos.")], None),
        Option("top_k", Annotated[int, typer.Option("--top-k", min=1, help="Matches per sketch.")], 10),
        Option("strip", Annotated[bool, typer.Option("--strip/--no-strip", help="Write <name>_strip.png per sketch.")], True),
    ),
    sample_options=(
        Option("sketches", Annotated[int, typer.Option("--sketches", help="Sketches per class.")], 8),
        Option("photos", Annotated[int, typer.Option("--photos", help="Photos per class.")], 10),
        Option("size", Annotated[int, typer.Option("--size", help="Image side in pixels.")], 48),
    ),
)

app = task_app(TASK, docs={
    "train": "Train ACNet's generator, discriminator and extractor jointly; selects best.pt by the mean of P@100, "
             "P@200, mAP@200 and mAP@all on the unseen split (train.select=last for the last epoch).",
    "eval": "Zero-shot retrieval on the unseen split: mAP@all, mAP@200, P@100, P@200 (SAKE's protocol, fractions).",
    "predict": "Nearest gallery photos per sketch (JSON lines, also OUT/predictions.jsonl) and a PNG strip: sketch, "
               "generated photo, top matches with class names, correct ones framed green.",
    "info": "Seen/unseen classes (the unseen list in full), image counts, parameters and GFLOPs.",
    "sample": "Write a synthetic sketch/photo set in ACNet's <root>/{train,val}/{sketch,photo}/<class>/ layout.",
})


@app.command("convert-official")
@guarded
def convert_official(prefix: Annotated[Path, typer.Option("--prefix", help="What ACNet's train.py saved, without the "
                                                          "part suffix: e.g. result/sketchy_resnet50_512 for "
                                                          "result/sketchy_resnet50_512_{extractor,generator,"
                                                          "discriminator,proxies}.pth.")],
                     recipe: RecipeOpt,
                     out: Annotated[Path, typer.Option("--out", "-o", help="The zsk checkpoint to write (.pt).")],
                     set_: SetOpt = None, json_out: JsonOpt = False, quiet: QuietOpt = False,
                     debug: DebugOpt = False) -> None:
    """Import the official ACNet weights into one zsk checkpoint for `eval` and `predict` (the recipe gives the
    backbone, d and the data)."""
    from zsk.core.progress import emit_result
    from zsk.tasks.sbir.official import convert_official as convert

    emit_result(convert(prefix, recipe, out, set_), json_out, title="sbir convert-official")
