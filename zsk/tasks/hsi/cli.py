"""`zsk hsi ...`: train, eval, predict, info and sample for hyperspectral image segmentation (CNN + deep CRF)."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from zsk.core.device import resolve_device
from zsk.core.errors import ZskError
from zsk.core.options import (
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
from zsk.core.progress import emit_result

app = typer.Typer(name="hsi", help="Hyperspectral image segmentation with a band-group CNN and a deep CRF.",
                  no_args_is_help=True, pretty_exceptions_enable=False)

CheckpointsOpt = Annotated[list[Path], typer.Option("--checkpoint", "-c",
                           help="best.pt written by train, or a run directory; repeat it (or give a `train --runs` directory) for mean ± std.")]
RunsOpt = Annotated[int, typer.Option("--runs", min=1, help="Train N runs with seeds seed..seed+N-1 and report mean ± std.")]


@app.command()
@guarded
def train(recipe: RecipeOpt, set_: SetOpt = None, out: OutOpt = None, resume: ResumeOpt = False,
          device: DeviceOpt = None, seed: SeedOpt = None, runs: RunsOpt = 1, json_out: JsonOpt = False,
          quiet: QuietOpt = False, debug: DebugOpt = False) -> None:
    """Train on the recipe's scene (piecewise CRF, then refinement); writes RUN/best.pt and RUN/eval.json."""
    from zsk.core.run import start_run, train_seeds
    from zsk.tasks.hsi import pipeline
    from zsk.tasks.hsi.config import Config

    if runs == 1:
        ctx = start_run("hsi", Config, recipe, set_, out=out, resume=resume, device=device, seed=seed)
        metrics = pipeline.train(ctx)
        emit_result({"run_dir": str(ctx.run_dir), **{k: v for k, v in metrics.items() if k != "confusion"}},
                    json_out, title="hsi train")
        return
    summary = train_seeds("hsi", Config, recipe, set_, runs=runs, train_fn=pipeline.train,
                          summarize=pipeline.summarize_runs, out=out, resume=resume, device=device, seed=seed)
    emit_result(summary, json_out, title=f"hsi train: {runs} runs")


@app.command("eval")
@guarded
def eval_(checkpoint: CheckpointsOpt, recipe: OptRecipeOpt = None, set_: SetOpt = None, split: SplitOpt = None,
          device: DeviceOpt = None, json_out: JsonOpt = False, quiet: QuietOpt = False, debug: DebugOpt = False) -> None:
    """OA, AA, kappa and per-class accuracy on the split (confusion matrix saved next to the checkpoint)."""
    from zsk.tasks.hsi import pipeline

    dev = resolve_device(device)
    results = [pipeline.evaluate(c, set_, split, recipe, dev) for c in pipeline.expand_checkpoints(checkpoint)]
    if len(results) == 1:
        r = results[0]
        emit_result({k: v for k, v in r.items() if k != "confusion"}, json_out, title=f"hsi eval ({r['split']})")
        return
    emit_result({"split": results[0]["split"], **pipeline.summarize_runs(results)}, json_out,
                title=f"hsi eval: mean ± std over {len(results)} runs")


@app.command()
@guarded
def predict(inputs: Annotated[list[str], typer.Argument(help="Cubes (.h5, .mat, .npy, ENVI .hdr); '-' reads a .npy from stdin.")],
            checkpoint: Annotated[Path, typer.Option("--checkpoint", "-c", help="A best.pt written by train.")],
            out: OutOpt = None,
            key: Annotated[str | None, typer.Option("--key", help="Array name inside .mat/.h5 inputs.")] = None,
            probs: Annotated[bool, typer.Option("--probs", help="Also write <name>_probs.npy (H x W x K).")] = False,
            preview: Annotated[bool, typer.Option("--preview/--no-preview", help="Write <name>_preview.png.")] = True,
            set_: SetOpt = None, device: DeviceOpt = None, json_out: JsonOpt = False,
            quiet: QuietOpt = False, debug: DebugOpt = False) -> None:
    """Per-pixel class maps for whole cubes (label PNG with the palette, .npy, preview with a legend)."""
    from zsk.tasks.hsi import pipeline

    if not inputs:
        raise ZskError("give at least one cube to predict")
    out_dir = out or Path("predictions")
    results = pipeline.predict(inputs, checkpoint, out_dir, key=key, probs=probs, preview=preview, sets=set_,
                               device=resolve_device(device))
    for r in results:
        emit_result(r, json_out, title=f"hsi predict {r['input']}")


@app.command()
@guarded
def info(recipe: RecipeOpt, set_: SetOpt = None, json_out: JsonOpt = False, quiet: QuietOpt = False,
         debug: DebugOpt = False) -> None:
    """Parameters, GFLOPs per pixel and the class table of a recipe."""
    from zsk.core.run import load_config
    from zsk.tasks.hsi import pipeline
    from zsk.tasks.hsi.config import Config

    cfg, _ = load_config("hsi", Config, recipe, set_)
    emit_result(pipeline.info(cfg), json_out, title=f"hsi info {recipe}")


@app.command()
@guarded
def sample(directory: Annotated[Path, typer.Argument(help="Folder to write the synthetic scene into.")],
           size: Annotated[int, typer.Option("--size", min=16, help="Rows and columns.")] = 64,
           bands: Annotated[int, typer.Option("--bands", min=4, help="Spectral bands.")] = 48,
           seed: SeedOpt = None, json_out: JsonOpt = False, quiet: QuietOpt = False, debug: DebugOpt = False) -> None:
    """Write a small synthetic scene (HDF5, MATLAB, ENVI, NumPy, with labels) for demo.yaml and tests."""
    from zsk.tasks.hsi import data

    paths = data.write_sample(directory, size, size, bands, seed=seed or 0)
    emit_result({"directory": str(directory), **paths}, json_out, title="hsi sample")
