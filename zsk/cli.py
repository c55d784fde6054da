"""The ``zsk`` command: one sub-app per task plus ``recipes``, ``cache``, ``doctor``, ``demo``, ``bench``, ``plot`` and ``runs``."""

from __future__ import annotations

import importlib
import importlib.util
import os
import platform
import sys
import tempfile
import time
from pathlib import Path
from typing import Annotated

import click
import typer
import typer.main
from typer.core import TyperGroup

from zsk import __version__
from zsk.core.options import DebugOpt, DeviceOpt, JsonOpt, QuietOpt, SetOpt, guarded
from zsk.core.progress import emit_result, log, result_console
from zsk.core.task import Task

# Task name -> (module of its Typer app, one-line description). Plain data, no registry.
TASKS: dict[str, tuple[str, str]] = {
    "segment": ("zsk.tasks.segment.cli", "ZegCLIP: one-stage zero-shot semantic segmentation from CLIP"),
    "retrieve": ("zsk.tasks.retrieve.cli", "visual-semantic embedding retrieval with semantically enhanced hard negatives"),
    "sbir": ("zsk.tasks.sbir.cli", "ACNet: zero-shot sketch-based image retrieval"),
    "css": ("zsk.tasks.css.cli", "continual semantic segmentation by self-attention transfer"),
    "refer": ("zsk.tasks.refer.cli", "AlignFormer: referring image segmentation"),
    "fakenews": ("zsk.tasks.fakenews.cli", "COVID-19 fake-news detection, RoBERTa + CT-BERT fusion"),
    "adapt": ("zsk.tasks.adapt.cli", "STAL: self-training + active learning for domain-adaptive segmentation"),
    "contrast": ("zsk.tasks.contrast.cli", "MetAug: contrastive learning with meta feature augmentation"),
    "medseg": ("zsk.tasks.medseg.cli", "DTC: semi-supervised medical segmentation by dual-task consistency"),
    "gzsl": ("zsk.tasks.gzsl.cli", "DGP/ADGPM: zero-shot classification by dense graph propagation"),
    "hsi": ("zsk.tasks.hsi.cli", "hyperspectral image segmentation with a CNN and a deep CRF"),
}


def available_tasks() -> list[str]:
    """Tasks whose package is installed in this version of zsk."""
    return [name for name, (module, _) in TASKS.items() if importlib.util.find_spec(f"zsk.tasks.{name}") is not None
            and importlib.util.find_spec(module) is not None]


def task_of(name: str) -> Task:
    """The :class:`zsk.core.task.Task` of an installed task (its ``cli.TASK``)."""
    return importlib.import_module(TASKS[name][0]).TASK


def _version(value: bool) -> None:
    if value:
        typer.echo(f"zsk {__version__}")
        raise typer.Exit()


class _LazyTaskGroup(TyperGroup):
    """The root group: task sub-apps are imported only when a task command runs (or for --help), so
    ``zsk --version``, ``zsk cache`` and one task's commands do not pay for every task's imports."""

    def list_commands(self, ctx: click.Context) -> list[str]:
        return [*super().list_commands(ctx), *[t for t in available_tasks() if t not in self.commands]]

    def get_command(self, ctx: click.Context, cmd_name: str) -> click.Command | None:
        cmd = super().get_command(ctx, cmd_name)
        if cmd is not None or cmd_name not in TASKS or cmd_name not in available_tasks():
            return cmd
        try:
            module = importlib.import_module(TASKS[cmd_name][0])
        except Exception as exc:  # noqa: BLE001 - one broken task must not take the others down
            print(f"warning: task {cmd_name} could not be loaded: {type(exc).__name__}: {exc}", file=sys.stderr)
            return None
        cmd = typer.main.get_command(module.app)
        cmd.name = cmd_name
        cmd.params = [p for p in cmd.params if p.name not in ("install_completion", "show_completion")]
        cmd.help = cmd.help or TASKS[cmd_name][1]
        cmd.short_help = TASKS[cmd_name][1]
        self.add_command(cmd, cmd_name)
        return cmd


app = typer.Typer(name="zsk", help="Eleven published vision-and-language methods behind one command line.",
                  cls=_LazyTaskGroup, no_args_is_help=True, pretty_exceptions_enable=False, add_completion=True)


@app.callback()
def main(version: Annotated[bool, typer.Option("--version", callback=_version, is_eager=True,
                                               help="Print the version and exit.")] = False) -> None:
    """zsk: run `zsk TASK --help` for a task's commands, `zsk recipes` for the shipped recipes."""


@app.command()
@guarded
def recipes(task: Annotated[str | None, typer.Argument(help="Only this task's recipes.")] = None,
            json_out: JsonOpt = False) -> None:
    """List the shipped recipes with a one-line description each."""
    from zsk.core.errors import ZskError
    from zsk.core.recipe import recipe_description, recipes_dir

    root = recipes_dir()
    if task is not None and task not in TASKS:
        raise ZskError(f"unknown task {task!r}; tasks: {', '.join(TASKS)}")
    rows = []
    for folder in sorted(p for p in root.iterdir() if p.is_dir() and not p.name.startswith("_")) if root.is_dir() else []:
        if task is not None and folder.name != task:
            continue
        for f in sorted(folder.glob("*.yaml")):
            rows.append({"task": folder.name, "recipe": f"{folder.name}/{f.stem}", "path": str(f),
                         "description": recipe_description(f)})
    if json_out:
        for r in rows:
            emit_result(r, True)
        return
    from rich.table import Table

    table = Table("recipe", "description")
    for r in rows:
        table.add_row(r["recipe"], r["description"])
    result_console().print(table)


cache_app = typer.Typer(help="Inspect or clear the zsk cache ($ZSK_CACHE, default ~/.cache/zsk).", no_args_is_help=True)
app.add_typer(cache_app, name="cache")


@cache_app.command("info")
@guarded
def cache_info(json_out: JsonOpt = False) -> None:
    """Entries and size per namespace."""
    from zsk.core.cache import Cache

    cache = Cache()
    info = cache.info()
    if json_out:
        emit_result({"root": str(cache.root), "namespaces": info}, True)
        return
    from rich.table import Table

    table = Table("namespace", "entries", "MiB", title=str(cache.root))
    for ns, v in info.items():
        table.add_row(ns, str(v["entries"]), f"{v['bytes'] / 2**20:.2f}")
    result_console().print(table)


@cache_app.command("clear")
@guarded
def cache_clear(namespace: Annotated[str | None, typer.Argument(help="Only this namespace.")] = None) -> None:
    """Delete cached values (one namespace, or all)."""
    from zsk.core.cache import Cache

    freed = Cache().clear(namespace)
    log(f"freed {freed / 2**20:.2f} MiB")


# Pretrained weights the shipped paper recipes use: (what, kind, id, how to provide it).
KNOWN_WEIGHTS: list[tuple[str, str, str]] = [
    ("segment: CLIP ViT-B/16 (openai)", "hf", "timm/vit_base_patch16_clip_224.openai"),
    ("fakenews: RoBERTa-large", "hf", "FacebookAI/roberta-large"),
    ("fakenews: CT-BERT v2", "hf", "digitalepidemiologylab/covid-twitter-bert-v2"),
    ("retrieve: BERT-base (VSE-infinity)", "hf", "google-bert/bert-base-uncased"),
    ("gzsl: ResNet-50 (torchvision)", "torchvision", "resnet50"),
    ("retrieve: ResNet-152 (torchvision)", "torchvision", "resnet152"),
]


def _weights_status(kind: str, ident: str) -> tuple[bool, str]:
    if kind == "hf":
        from zsk.models.hf import hf_cache_dir

        alt = {"FacebookAI/roberta-large": "roberta-large", "google-bert/bert-base-uncased": "bert-base-uncased"}
        for name in (ident, alt.get(ident, ident)):
            d = hf_cache_dir() / ("models--" + name.replace("/", "--"))
            if d.is_dir():
                return True, str(d)
        return False, f"not in {hf_cache_dir()}; pass a local directory/file with --set"
    from zsk.models.backbones import default_weights_file

    path = default_weights_file(ident)
    return path.is_file(), str(path)


@app.command()
@guarded
def doctor(json_out: JsonOpt = False) -> None:
    """Report Python, torch, devices, the cache and which pretrained weights are found locally."""
    import torch

    from zsk.core.cache import Cache

    devices = []
    if torch.cuda.is_available():
        for i in range(torch.cuda.device_count()):
            p = torch.cuda.get_device_properties(i)
            devices.append(f"cuda:{i} {p.name} {p.total_memory / 2**30:.0f} GiB")
    if getattr(torch.backends, "mps", None) is not None and torch.backends.mps.is_available():
        devices.append("mps")
    devices.append(f"cpu ({os.cpu_count()} cores)")
    cache = Cache()
    weights = []
    for what, kind, ident in KNOWN_WEIGHTS:
        try:
            found, where = _weights_status(kind, ident)
        except Exception as exc:  # noqa: BLE001 - doctor reports a broken install instead of dying of it
            found, where = False, f"cannot check: {type(exc).__name__}: {str(exc).splitlines()[0] if str(exc) else ''}"
        weights.append({"what": what, "id": ident, "found": found, "where": where})
    try:
        import nltk

        nltk.data.find("corpora/wordnet")
        wordnet = True
    except (ImportError, LookupError):
        wordnet = False
    report = {
        "zsk": __version__,
        "python": platform.python_version(),
        "torch": torch.__version__,
        "cuda": torch.version.cuda,
        "devices": devices,
        "tasks": available_tasks(),
        "cache": str(cache.root),
        "cache_mb": sum(v["bytes"] for v in cache.info().values()) / 2**20,
        "wordnet_corpus": wordnet,
        "weights": weights,
    }
    if json_out:
        emit_result(report, True)
        return
    from rich.table import Table

    t = Table("item", "value", title="zsk doctor")
    for k in ("zsk", "python", "torch", "cuda", "cache", "wordnet_corpus"):
        t.add_row(k, str(report[k]))
    t.add_row("cache size", f"{report['cache_mb']:.1f} MiB")
    t.add_row("devices", ", ".join(devices))
    t.add_row("tasks", ", ".join(report["tasks"]) or "(none)")
    result_console().print(t)
    w = Table("pretrained weights", "found", "where / how", title="weights (missing ones are needed only by paper recipes)")
    for row in weights:
        w.add_row(row["what"], "yes" if row["found"] else "missing", row["where"])
    result_console().print(w)


@app.command()
@guarded
def demo(tasks: Annotated[list[str] | None, typer.Argument(help="Tasks to run (default: all).")] = None,
         out: Annotated[Path | None, typer.Option("--out", "-o", help="Keep the demo runs here.")] = None,
         device: DeviceOpt = None, json_out: JsonOpt = False, quiet: QuietOpt = False, debug: DebugOpt = False) -> None:
    """Train every task's demo recipe on its embedded sample data, evaluate and predict (offline)."""
    from zsk.core.errors import ZskError, ZskFailure
    from zsk.core.options import report_error

    names = tasks or available_tasks()
    unknown = [t for t in names if t not in available_tasks()]
    if unknown:
        raise ZskError(f"unknown or unavailable task(s) {', '.join(unknown)}; available: {', '.join(available_tasks())}")
    if not names:
        raise ZskError("no task is installed in this zsk")
    rows, failed = [], []
    with tempfile.TemporaryDirectory(prefix="zsk-demo-") as tmp:
        root = Path(out) if out is not None else Path(tmp)
        for name in names:
            log(f"demo: {name}")
            t0 = time.perf_counter()
            try:
                result = task_of(name).demo(root / name, device or "cpu")
            except Exception as exc:  # noqa: BLE001 - one failing task must not hide the others
                report_error(exc)
                failed.append(name)
                rows.append({"task": name, "metric": "failed", "value": None, "seconds": time.perf_counter() - t0})
                continue
            rows.append({"task": name, "metric": result["metric"], "value": float(result["value"]),
                         "seconds": time.perf_counter() - t0})
    if json_out:
        for r in rows:
            emit_result(r, True)
    else:
        from rich.table import Table

        t = Table("task", "metric", "value", "seconds", title="zsk demo")
        for r in rows:
            t.add_row(r["task"], r["metric"], "-" if r["value"] is None else f"{r['value']:.4f}", f"{r['seconds']:.1f}")
        result_console().print(t)
    if failed:
        raise ZskFailure(f"demo failed for: {', '.join(failed)}")


@app.command()
@guarded
def bench(recipe: Annotated[Path, typer.Option("--recipe", "-r", help="Any task's recipe.")],
          steps: Annotated[int, typer.Option("--steps", min=1, help="Timed steps.")] = 10,
          batch_size: Annotated[int | None, typer.Option("--batch-size", help="Override the recipe's batch size.")] = None,
          set_: SetOpt = None, device: DeviceOpt = None, json_out: JsonOpt = False,
          quiet: QuietOpt = False, debug: DebugOpt = False) -> None:
    """Measure train-step and inference throughput, peak memory and MFU for a recipe (synthetic inputs)."""
    from zsk.core.bench import run_bench
    from zsk.core.device import autocast_dtype, resolve_device
    from zsk.core.errors import ZskError
    from zsk.core.recipe import load_recipe, parse_config

    raw = load_recipe(recipe, set_)
    task = raw.get("task")
    if task not in available_tasks():
        raise ZskError(f"recipe {recipe} names task {task!r}, which is not installed; tasks: {', '.join(available_tasks())}")
    definition = task_of(task)
    cfg = parse_config(definition.Config, raw)
    dev = resolve_device(device, cfg.runtime.device)
    dtype = autocast_dtype(dev, cfg.runtime.precision)
    log(f"bench {task} {recipe} on {dev} ({dtype or 'fp32'})")
    spec = definition.bench_spec(cfg, dev, batch_size)
    try:
        timed = run_bench(spec, steps, dev, dtype, cfg)
    except ValueError as e:
        if "Expected more than 1 value per channel" not in str(e):
            raise
        # BatchNorm in training mode cannot normalise one sample (torch's message names no option)
        raise ZskError(f"--batch-size {batch_size or 1}: {task}'s model trains BatchNorm layers, which need at least "
                       "2 samples per batch; use --batch-size 2 or more") from None
    result = {"task": task, "recipe": str(recipe), **timed}
    emit_result(result, json_out, title=f"zsk bench {recipe}")


@app.command()
@guarded
def plot(runs: Annotated[list[Path], typer.Argument(help="Run folders, or `train --runs N` folders (their run-<i>/ seeds).")],
         out: Annotated[Path | None, typer.Option("--out", "-o", help="Write the PNGs here (default: <first run>/plots/).")] = None,
         force: Annotated[bool, typer.Option("--force", help="Overwrite PNGs that already exist.")] = False,
         json_out: JsonOpt = False, quiet: QuietOpt = False, debug: DebugOpt = False) -> None:
    """PNG curves of every logged metric against step (runs overlaid, seeds as mean and min-max band, best
    step marked) and a confusion-matrix PNG for an eval.json that has one."""
    from zsk.core.plot import plot_runs

    rows = plot_runs(runs, out, force=force)
    if json_out:
        for r in rows:
            emit_result(r, True)
        return
    from rich.table import Table

    table = Table("file", "kind", "metric", "runs", title="zsk plot")
    for r in rows:
        table.add_row(r["file"], r["kind"], r["key"], str(r["runs"]))
    result_console().print(table)


@app.command("runs")
@guarded
def runs_(root: Annotated[Path, typer.Argument(help="A folder of runs (searched recursively), or one run folder.")] = Path("runs"),
          status: Annotated[str | None, typer.Option("--status", help="Only runs with this status: finished, "
                                                     "interrupted, failed or running.")] = None,
          json_out: JsonOpt = False, quiet: QuietOpt = False, debug: DebugOpt = False) -> None:
    """The runs under a folder: task, recipe, seed, stage and step reached, best metric and its step, and
    status (finished, interrupted, failed, running), to find the run to resume or compare."""
    from zsk.core.errors import ZskError
    from zsk.core.runs import STATUSES, list_runs

    if not root.is_dir():
        raise ZskError(f"{root} is not a folder; give the folder your runs are in (default: runs)")
    if status is not None and status not in STATUSES:
        raise ZskError(f"--status {status}: choose one of {', '.join(STATUSES)}")
    rows = [r for r in list_runs(root) if status is None or r["status"] == status]
    if json_out:
        for r in rows:
            emit_result(r, True)
        return
    from rich.table import Table

    def fmt(v: object) -> str:
        return "" if v is None else f"{v:.4g}" if isinstance(v, float) else str(v)

    table = Table("run", "task", "recipe", "seed", "step", "best", "at step", "status", title=f"zsk runs {root}")
    for r in rows:
        step = f"{r['stage']}:{r['step']}" if r["stage"] and r["step"] is not None else fmt(r["step"])
        best = f"{r['best_metric']} {fmt(r['best_value'])}" if r["best_metric"] else ""
        recipe = fmt(r["recipe"])
        recipe = recipe if len(recipe) <= 40 else recipe[:39] + "…"
        table.add_row(r["run"], fmt(r["task"]), recipe, fmt(r["seed"]), step, best, fmt(r["best_step"]), r["status"])
    result_console().print(table)
    if not rows:
        log(f"no runs under {root}" + (f" with status {status}" if status else ""))


def run(argv: list[str] | None = None) -> int:
    """The ``zsk`` program (console script and ``python -m zsk``): usage mistakes that the option parser
    catches (an unknown option, a missing argument, a value out of range) end like every other bad input,
    with exit 2 and one line ``error: ...`` naming the option and where to read more."""
    try:  # typer >= 0.22 carries its own copy of click
        from typer._click import exceptions as errors
    except ImportError:  # pragma: no cover - older typer uses click itself
        from click import exceptions as errors
    try:
        result = app(args=argv, prog_name="zsk", standalone_mode=False)
    except errors.NoArgsIsHelpError as exc:  # `zsk` or `zsk TASK` alone: the help, exit 0
        print(exc.ctx.get_help() if exc.ctx is not None else exc.format_message())
        return 0
    except errors.UsageError as exc:
        where = f" (see `{exc.ctx.command_path} --help`)" if exc.ctx is not None else ""
        print(f"error: {exc.format_message()}{where}", file=sys.stderr)
        return 2
    except (typer.Abort, KeyboardInterrupt):
        print("interrupted", file=sys.stderr)
        return 130
    except typer.Exit as exc:
        return exc.exit_code
    except errors.ClickException as exc:
        print(f"error: {exc.format_message()}", file=sys.stderr)
        return exc.exit_code
    return result if isinstance(result, int) else 0


if __name__ == "__main__":
    sys.exit(run())
