"""`zsk fakenews ...`: train, eval, predict, info and sample for COVID-19 fake-news detection (Ro-CT-BERT)."""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Annotated

import typer

from zsk.core.device import resolve_device
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
from zsk.core.progress import emit_result, log, to_json

app = typer.Typer(name="fakenews", help="COVID-19 fake-news detection by fine-tuned transformers and their fusion.",
                  no_args_is_help=True, pretty_exceptions_enable=False)

CheckpointsOpt = Annotated[list[Path], typer.Option("--checkpoint", "-c",
                           help="A best.pt written by train; repeat it (runs with different seeds) for mean ± std.")]
RunsOpt = Annotated[int, typer.Option("--runs", min=1, help="Train N runs with seeds seed..seed+N-1 and report mean ± std.")]
FormatOpt = Annotated[str, typer.Option("--format", help="Input format: auto (by suffix; stdin: plain lines) | csv | tsv | jsonl | lines.")]
BatchOpt = Annotated[int | None, typer.Option("--batch-size", min=1, help="Texts per batch (default: eval.batch_size).")]

SCALARS = ("accuracy", "f1_weighted", "precision_weighted", "recall_weighted", "f1_macro")


def _settings_quiet_transformers() -> None:
    """Keep transformers' own progress bars and notices off stdout/stderr unless debugging."""
    from zsk.core.progress import settings

    if not settings.debug:
        from transformers.utils import logging as hf_logging

        hf_logging.set_verbosity_error()
        hf_logging.disable_progress_bar()


def summarize_runs(results: list[dict]) -> dict:
    """Mean and (sample) standard deviation of each metric over runs (spec: Open points, seeds)."""
    from zsk.metrics.summary import summarize_runs as summarize

    return summarize(results, SCALARS)


def _test_metrics(ctx) -> dict:  # noqa: ANN001 - a RunContext
    from zsk.tasks.fakenews import pipeline

    summary = pipeline.train(ctx)
    return summary.get("test") or summary["val"]


@app.command()
@guarded
def train(recipe: RecipeOpt, set_: SetOpt = None, out: OutOpt = None, resume: ResumeOpt = False,
          device: DeviceOpt = None, seed: SeedOpt = None, runs: RunsOpt = 1, json_out: JsonOpt = False,
          quiet: QuietOpt = False, debug: DebugOpt = False) -> None:
    """Fine-tune every branch (heated softmax, FGM, new tokens), then the fusion MLP; writes RUN/best.pt, RUN/eval.json."""
    from zsk.core.dist import is_main
    from zsk.core.run import start_run, train_seeds
    from zsk.tasks.fakenews import pipeline
    from zsk.tasks.fakenews.config import Config

    _settings_quiet_transformers()
    if runs == 1:
        ctx = start_run("fakenews", Config, recipe, set_, out=out, resume=resume, device=device, seed=seed)
        summary = pipeline.train(ctx)
        if ctx.dist.is_main:  # one result line under torchrun
            emit_result({"run_dir": str(ctx.run_dir), **_flat(summary)}, json_out, title="fakenews train")
        return
    result = train_seeds("fakenews", Config, recipe, set_, runs=runs, train_fn=_test_metrics,
                         summarize=summarize_runs, out=out, resume=resume, device=device, seed=seed)
    if is_main():  # one result line under torchrun
        emit_result(result, json_out, title=f"fakenews train: {runs} runs")


def _flat(summary: dict) -> dict:
    out = {"checkpoint": summary["checkpoint"]}
    for split in ("val", "test"):
        if split in summary:
            out.update({f"{split}_{k}": v for k, v in summary[split].items() if k in SCALARS})
    return out


@app.command("eval")
@guarded
def eval_(checkpoint: CheckpointsOpt, recipe: OptRecipeOpt = None, set_: SetOpt = None, split: SplitOpt = None,
          device: DeviceOpt = None, json_out: JsonOpt = False, quiet: QuietOpt = False, debug: DebugOpt = False) -> None:
    """Accuracy, weighted precision / recall / F1, macro F1 and the confusion matrix on a split (default: test)."""
    from zsk.tasks.fakenews import pipeline

    _settings_quiet_transformers()
    dev = resolve_device(device)
    results = [pipeline.evaluate(c, recipe, set_, split, dev) for c in checkpoint]
    if len(results) == 1:
        r = results[0]
        emit_result(r if json_out else {k: v for k, v in r.items() if k != "confusion"}, json_out,
                    title=f"fakenews eval ({r['split']})")
        return
    emit_result({"split": results[0]["split"], **summarize_runs(results)}, json_out,
                title=f"fakenews eval: mean ± std over {len(results)} checkpoints")


@app.command()
@guarded
def predict(inputs: Annotated[list[str], typer.Argument(help="CSV/TSV/JSONL/text files, or - for lines on stdin.")],
            checkpoint: CheckpointOpt, set_: SetOpt = None, out: OutOpt = None, fmt: FormatOpt = "auto",
            batch_size: BatchOpt = None, device: DeviceOpt = None, quiet: QuietOpt = False,
            debug: DebugOpt = False) -> None:
    """One JSON line per text on stdout ({"id"?, "text", "label", "score"}); with --out also DIR/predictions.jsonl."""
    from zsk.tasks.fakenews import pipeline

    _settings_quiet_transformers()
    dev = resolve_device(device)
    sink = None
    if out is not None:
        out.mkdir(parents=True, exist_ok=True)
        sink = open(out / "predictions.jsonl", "w", encoding="utf-8")  # noqa: SIM115 - closed below
    n = 0
    try:
        for row in pipeline.predict(inputs, checkpoint, set_, dev, fmt, batch_size):
            line = to_json(row)
            sys.stdout.write(line + "\n")
            if sink is not None:
                sink.write(line + "\n")
            n += 1
            if n % 64 == 0:
                sys.stdout.flush()
        sys.stdout.flush()
    finally:
        if sink is not None:
            sink.close()
    log(f"predicted {n} texts" + (f"; written to {out / 'predictions.jsonl'}" if out is not None else ""))


@app.command()
@guarded
def info(recipe: RecipeOpt, set_: SetOpt = None, json_out: JsonOpt = False, quiet: QuietOpt = False,
         debug: DebugOpt = False) -> None:
    """Classes, splits, parameters per branch, the added tokens and GFLOPs per input."""
    from zsk.core.run import load_config
    from zsk.tasks.fakenews import pipeline
    from zsk.tasks.fakenews.config import Config

    _settings_quiet_transformers()
    cfg, _ = load_config("fakenews", Config, recipe, set_)
    emit_result(pipeline.info(cfg), json_out, title="fakenews info")


@app.command()
@guarded
def sample(out_dir: Annotated[Path, typer.Argument(help="Folder to write the CONSTRAINT-layout sample corpus to.")],
           seed: SeedOpt = None, json_out: JsonOpt = False, quiet: QuietOpt = False, debug: DebugOpt = False) -> None:
    """Write a small synthetic labelled corpus (Constraint_Train/Val.csv, english_test_with_labels.csv)."""
    from zsk.tasks.fakenews.data import write_sample

    counts = write_sample(out_dir, seed=seed or 0)
    emit_result({"out": str(out_dir), **counts}, json_out, title="fakenews sample")
