"""``zsk segment``: ZegCLIP zero-shot semantic segmentation (train, eval, predict, info, sample)."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from zsk.core.options import (
    CheckpointOpt,
    DebugOpt,
    DeviceOpt,
    JsonOpt,
    OptRecipeOpt,
    OutOpt,
    QuietOpt,
    RecipeOpt,
    ResumeOpt,
    SeedOpt,
    SetOpt,
    SplitOpt,
    guarded,
)
from zsk.core.progress import emit_result, log

app = typer.Typer(help="ZegCLIP: one-stage zero-shot semantic segmentation from CLIP.", no_args_is_help=True)


@app.command()
@guarded
def train(recipe: RecipeOpt, set_: SetOpt = None, out: OutOpt = None, resume: ResumeOpt = False,
          device: DeviceOpt = None, seed: SeedOpt = None, quiet: QuietOpt = False, debug: DebugOpt = False,
          json_out: JsonOpt = False) -> None:
    """Train ZegCLIP (inductive, transductive or fully supervised, as the recipe says)."""
    from zsk.core.run import start_run
    from zsk.tasks.segment import pipeline
    from zsk.tasks.segment.config import Config

    ctx = start_run("segment", Config, recipe, set_, out=out, resume=resume, device=device, seed=seed)
    metrics = pipeline.train(ctx)
    emit_result({"run_dir": str(ctx.run_dir), **metrics}, json_out, title="zsk segment train")


@app.command("eval")
@guarded
def eval_(checkpoint: CheckpointOpt, recipe: OptRecipeOpt = None, set_: SetOpt = None, split: SplitOpt = None,
          device: DeviceOpt = None, json_out: JsonOpt = False, quiet: QuietOpt = False, debug: DebugOpt = False) -> None:
    """Evaluate a checkpoint: mIoU, mIoU(seen), mIoU(unseen), hIoU, pAcc and per-class IoU."""
    from zsk.tasks.segment import pipeline

    emit_result(pipeline.evaluate(checkpoint, set_, split, device, recipe), json_out, title="zsk segment eval")


@app.command()
@guarded
def predict(inputs: Annotated[list[str], typer.Argument(help="Images, folders of images, or '-' to read paths from stdin.")],
            checkpoint: CheckpointOpt,
            out: Annotated[Path, typer.Option("--out", "-o", help="Folder for masks, overlays and legends.")] = Path("predictions"),
            classes: Annotated[str | None, typer.Option("--classes", help="Comma-separated class names (open vocabulary).")] = None,
            classes_file: Annotated[Path | None, typer.Option("--classes-file", help="Class names, one a line.")] = None,
            set_: SetOpt = None, device: DeviceOpt = None, json_out: JsonOpt = False, quiet: QuietOpt = False,
            debug: DebugOpt = False) -> None:
    """Segment images with the checkpoint's classes or any class names: palette PNG, overlay PNG, JSON legend."""
    from zsk.tasks.segment import pipeline

    names = pipeline.parse_classes(classes, classes_file)
    records = pipeline.predict(inputs, checkpoint, out, names, set_, device)
    for r in records:
        emit_result(r, json_out, title=Path(r["image"]).name)
    log(f"wrote {len(records)} prediction(s) to {out}")


@app.command()
@guarded
def info(recipe: RecipeOpt, set_: SetOpt = None, json_out: JsonOpt = False, quiet: QuietOpt = False,
         debug: DebugOpt = False) -> None:
    """Classes, split, parameters (own and paper-comparable) and GFLOPs at the recipe's crop size."""
    from zsk.tasks.segment import pipeline

    emit_result(pipeline.info(pipeline.load_info_config(recipe, set_)), json_out, title="zsk segment info")


@app.command()
@guarded
def sample(directory: Annotated[Path, typer.Argument(help="Where to write the synthetic VOC-layout sample.")],
           num_train: Annotated[int, typer.Option("--train", help="Training images.")] = 48,
           num_val: Annotated[int, typer.Option("--val", help="Validation images.")] = 12,
           seed: SeedOpt = None, json_out: JsonOpt = False, quiet: QuietOpt = False, debug: DebugOpt = False) -> None:
    """Write a small synthetic PASCAL VOC 2012 set (JPEGImages, SegmentationClass, ImageSets) for the demo recipe."""
    from zsk.core.errors import ZskError
    from zsk.tasks.segment.data import write_sample

    if num_train < 1 or num_val < 1:
        raise ZskError("--train and --val must be at least 1")
    root = write_sample(directory, num_train, num_val, seed or 0)
    emit_result({"root": str(root), "train": num_train, "val": num_val,
                 "use": f"zsk segment train --recipe segment/demo --set data.root={root}"}, json_out,
                title="zsk segment sample")
