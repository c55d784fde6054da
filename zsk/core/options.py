"""Typer options shared by every task's commands, and the error guard that maps exceptions to exit codes."""

from __future__ import annotations

import functools
import sys
import traceback
from collections.abc import Callable
from pathlib import Path
from typing import Annotated, Any, TypeVar

import typer

from zsk.core.errors import Interrupted, ZskError, ZskFailure
from zsk.core.progress import console, settings

F = TypeVar("F", bound=Callable[..., Any])

RecipeOpt = Annotated[Path, typer.Option("--recipe", "-r", help="Recipe YAML file or shipped name (e.g. hsi/demo).")]
OptRecipeOpt = Annotated[Path | None, typer.Option("--recipe", "-r", help="Recipe YAML (default: the checkpoint's own).")]
SetOpt = Annotated[list[str] | None, typer.Option("--set", help="Override a recipe key: --set train.lr=2e-4 (repeatable).")]
OutOpt = Annotated[Path | None, typer.Option("--out", "-o", help="Output directory.")]
ResumeOpt = Annotated[str | None, typer.Option(
    "--resume", metavar="[auto]", help="Continue from RUN/last.pt (RUN from --out or the newest run); `--resume auto` "
    "continues when last.pt exists and starts fresh otherwise (preemptible jobs).")]
RunsOpt = Annotated[int, typer.Option("--runs", min=1, help="Train N runs with seeds seed..seed+N-1 and report mean ± std.")]
DeviceOpt = Annotated[str | None, typer.Option("--device", help="auto | cpu | cuda | cuda:N | mps (default: $ZSK_DEVICE, recipe).")]
SeedOpt = Annotated[int | None, typer.Option("--seed", help="Random seed (overrides runtime.seed).")]
QuietOpt = Annotated[bool, typer.Option("--quiet", "-q", help="No progress bars or log lines on stderr.")]
DebugOpt = Annotated[bool, typer.Option("--debug", help="Show tracebacks on errors.")]
JsonOpt = Annotated[bool, typer.Option("--json", help="Print results as JSON lines on stdout.")]
CheckpointOpt = Annotated[Path, typer.Option("--checkpoint", "-c", help="A checkpoint written by train (best.pt / last.pt).")]
CheckpointsOpt = Annotated[list[Path], typer.Option(
    "--checkpoint", "-c", help="A checkpoint written by train; repeat it (runs with other seeds) for mean ± std.")]
SplitOpt = Annotated[str | None, typer.Option("--split", help="Dataset split to evaluate (default: the recipe's eval split).")]


def report_error(exc: BaseException) -> int:
    """Print one ``error:`` line (and a traceback with ``--debug``) and return the exit code."""
    if isinstance(exc, Interrupted):
        console.print(f"interrupted: {exc}", markup=False)
        return exc.exit_code
    if settings.debug:
        traceback.print_exception(exc, file=sys.stderr)
    if isinstance(exc, (ZskError, ZskFailure)):
        message = str(exc)
        if message.startswith("Caught ") and "DataLoader worker" in message:
            # raised in a DataLoader worker: torch re-raises it with the worker's traceback in the message
            last = [ln for ln in message.splitlines() if ln.strip()][-1]
            exc = type(exc)(last.split(": ", 1)[1] if last.startswith(("zsk.", "Zsk")) else last)
        if isinstance(exc, ZskError):
            from zsk.core.run import discard_fresh_run_dir

            discard_fresh_run_dir()
        console.print(f"error: {exc}", markup=False, style="red")
        return exc.exit_code
    if isinstance(exc, KeyboardInterrupt):
        console.print("interrupted", markup=False)
        return 130
    if isinstance(exc, MemoryError) or "out of memory" in str(exc).lower():
        console.print(f"error: out of memory: {exc} (lower train.batch_size or the crop size)", markup=False, style="red")
        return 1
    console.print(f"error: unexpected {type(exc).__name__}: {exc} (rerun with --debug for the traceback)",
                  markup=False, style="red")
    return 1


def _silence_stdout() -> None:
    """Point stdout at /dev/null so the interpreter's final flush does not fail on the closed pipe."""
    import os

    try:
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, sys.stdout.fileno())
    except (OSError, ValueError, AttributeError):  # not a real file (e.g. a test runner's buffer)
        pass


def guarded(fn: F) -> F:
    """Run a command with ``--quiet``/``--debug`` applied and exceptions mapped to exit codes 2/1/130/143."""

    @functools.wraps(fn)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        saved = (settings.quiet, settings.debug)
        # each command call starts from its own flags (several calls may share one process, e.g. tests)
        settings.quiet = bool(kwargs.get("quiet", False))
        settings.debug = bool(kwargs.get("debug", False))
        try:
            return fn(*args, **kwargs)
        except (typer.Exit, typer.Abort, SystemExit):
            raise
        except BrokenPipeError:
            # `zsk ... | head -1`: the reader has all it wants; a closed pipe is a normal end for a shell tool
            _silence_stdout()
            raise typer.Exit(0) from None
        except BaseException as exc:  # noqa: BLE001 - this is the CLI boundary
            raise typer.Exit(report_error(exc)) from None
        finally:
            settings.quiet, settings.debug = saved

    return wrapper  # type: ignore[return-value]
