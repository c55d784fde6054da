"""``zsk medseg``: DTC semi-supervised 3-D segmentation (train, eval, predict, info, sample)."""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Annotated

import typer

from zsk.core.errors import ZskError
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

app = typer.Typer(name="medseg", help="DTC: semi-supervised medical image segmentation by dual-task consistency.",
                  no_args_is_help=True, pretty_exceptions_enable=False)


@app.command()
@guarded
def train(recipe: RecipeOpt, set_: SetOpt = None, out: OutOpt = None, resume: ResumeOpt = False,
          device: DeviceOpt = None, seed: SeedOpt = None, json_out: JsonOpt = False, quiet: QuietOpt = False,
          debug: DebugOpt = False) -> None:
    """Train the dual-task V-Net (labelled + unlabelled cases) and evaluate it at the end."""
    from zsk.core.run import start_run
    from zsk.tasks.medseg import pipeline
    from zsk.tasks.medseg.config import Config

    ctx = start_run("medseg", Config, recipe, set_, out=out, resume=resume, device=device, seed=seed)
    metrics = pipeline.train(ctx)
    if ctx.dist.is_main:
        emit_result({"run_dir": str(ctx.run_dir), **metrics}, json_out, title="medseg train")


@app.command("eval")
@guarded
def eval_(checkpoint: CheckpointOpt, recipe: OptRecipeOpt = None, set_: SetOpt = None, split: SplitOpt = None,
          spacing_mm: Annotated[bool, typer.Option("--spacing-mm", help="HD95/ASD in millimetres from the volume "
                                                   "spacing (default: voxels, as the paper reports).")] = False,
          symmetric: Annotated[bool, typer.Option("--symmetric", help="Report the symmetric ASSD instead of the "
                                                  "directed ASD of the reference code.")] = False,
          device: DeviceOpt = None, json_out: JsonOpt = False, quiet: QuietOpt = False, debug: DebugOpt = False) -> None:
    """Sliding-window evaluation: Dice, Jaccard, HD95, ASD averaged over cases, plus per-case values."""
    from zsk.core import dist
    from zsk.tasks.medseg import pipeline

    sets = list(set_ or [])
    if spacing_mm:
        sets.append("eval.spacing=header")
    if symmetric:
        sets.append("eval.asd=symmetric")
    result = pipeline.evaluate(checkpoint, sets, recipe, split, device)
    if dist.is_main():
        emit_result(result, json_out, title="medseg eval")


@app.command()
@guarded
def predict(inputs: Annotated[list[str], typer.Argument(help="Volumes (.nii, .nii.gz, .h5); '-' reads paths from stdin.")],
            checkpoint: CheckpointOpt, out: OutOpt = None, set_: SetOpt = None, device: DeviceOpt = None,
            json_out: JsonOpt = False, quiet: QuietOpt = False, debug: DebugOpt = False) -> None:
    """Segment volumes: NIfTI -> NIfTI mask with the input's affine/header, HDF5 -> HDF5, plus a PNG montage."""
    from zsk.tasks.medseg import pipeline

    paths: list[Path] = []
    for item in inputs:
        if item == "-":
            paths += [Path(ln.strip()) for ln in sys.stdin.read().splitlines() if ln.strip()]
        else:
            paths.append(Path(item))
    if not paths:
        raise ZskError("predict: no input volumes given (pass files or '-' with paths on stdin)")
    out_dir = out or Path("predictions")
    for row in pipeline.predict(checkpoint, paths, out_dir, set_, device):
        emit_result(row, json_out, title=row["input"])
    log(f"predictions written to {out_dir}")


@app.command()
@guarded
def info(recipe: RecipeOpt, set_: SetOpt = None, json_out: JsonOpt = False, quiet: QuietOpt = False,
         debug: DebugOpt = False) -> None:
    """Classes, splits, V-Net parameter count and GFLOPs per training patch."""
    from zsk.core.run import load_config
    from zsk.tasks.medseg import pipeline
    from zsk.tasks.medseg.config import Config

    cfg, _ = load_config("medseg", Config, recipe, set_)
    emit_result(pipeline.info(cfg), json_out, title="medseg info")


@app.command()
@guarded
def sample(out: Annotated[Path, typer.Argument(help="Folder to write the synthetic sample set into.")],
           num_train: Annotated[int, typer.Option("--train", help="Training cases.")] = 12,
           num_test: Annotated[int, typer.Option("--test", help="Test cases.")] = 4,
           shape: Annotated[str, typer.Option("--shape", help="Volume size X,Y,Z in voxels.")] = "48,40,32",
           seed: SeedOpt = None, json_out: JsonOpt = False, quiet: QuietOpt = False, debug: DebugOpt = False) -> None:
    """Write synthetic volumes (ellipsoid-like structure + noise) in the LA HDF5 layout and as NIfTI."""
    from zsk.tasks.medseg.data import write_sample

    if num_train < 1 or num_test < 1:
        raise ZskError("sample: --train and --test must be at least 1")
    try:
        size = tuple(int(v) for v in shape.split(","))
    except ValueError:
        size = ()
    if len(size) != 3 or min(size) < 8:
        raise ZskError(f"sample: --shape {shape!r} must be three sizes >= 8, e.g. 48,40,32")
    paths = write_sample(out, num_train=num_train, num_test=num_test, shape=size, seed=seed or 0)
    emit_result({"la": str(paths["la"]), "nifti": str(paths["nifti"]), "train": num_train, "test": num_test},
                json_out, title="medseg sample")
    log(f"train the demo with: zsk medseg train --recipe medseg/demo --set data.root={paths['la']}")
