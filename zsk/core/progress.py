"""Progress bars, logs and results: results go to stdout, everything else to stderr."""

from __future__ import annotations

import json
import math
import os
import sys
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from typing import Any, TypeVar

from rich.console import Console
from rich.progress import (
    BarColumn,
    MofNCompleteColumn,
    Progress,
    TextColumn,
    TimeElapsedColumn,
    TimeRemainingColumn,
)
from rich.table import Table

T = TypeVar("T")


@dataclass
class Settings:
    """Process-wide output switches set by the CLI (``--quiet``, ``--debug``)."""

    quiet: bool = False
    debug: bool = False


settings = Settings()
# soft_wrap: an `error:` or log line stays one line however long (rich would wrap at 80 columns
# when stderr is not a terminal, splitting messages in job logs and pipes).
console = Console(stderr=True, highlight=False, soft_wrap=True)


def _closed_pipe_ends_quietly(self: Console) -> None:
    """A reader that closed the pipe (``zsk ... | head -1``) ends the program with exit 0: a closed pipe
    is a normal end for a shell tool (rich's default is exit 1). Set for every rich console, typer's help
    included."""
    try:
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, sys.stdout.fileno())
    except (OSError, ValueError, AttributeError):
        pass
    raise SystemExit(0)


Console.on_broken_pipe = _closed_pipe_ends_quietly  # type: ignore[method-assign]
stdout_console = Console(highlight=False)


def show_progress() -> bool:
    """Bars only on an interactive stderr and without ``--quiet`` (cluster logs and pipes stay clean)."""
    return not settings.quiet and sys.stderr.isatty() and _is_rank_zero()


def _is_rank_zero() -> bool:
    # read torchrun's variable directly: importing zsk.core.dist would pull torch into every CLI start
    return os.environ.get("RANK", "0") == "0"


def log(message: str) -> None:
    """A log line on stderr from rank 0 (suppressed by ``--quiet``)."""
    if not settings.quiet and _is_rank_zero():
        console.print(message, markup=False)


_warned: set[str] = set()


def warn(message: str, *, once: bool = False) -> None:
    """A warning on stderr; shown even with ``--quiet``. ``once``: not again in this process (a setting read
    by every call, such as a precision that is slow on the device)."""
    if once:
        if message in _warned:
            return
        _warned.add(message)
    console.print(f"warning: {message}", markup=False, style="yellow")


def progress(iterable: Iterable[T], total: int | None = None, desc: str = "") -> Iterator[T]:
    """Iterate with a rich progress bar on stderr when it is a terminal, plainly otherwise."""
    if total is None and hasattr(iterable, "__len__"):
        total = len(iterable)  # type: ignore[arg-type]
    if not show_progress():
        yield from iterable
        return
    columns = [TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(), TimeElapsedColumn(), TimeRemainingColumn()]
    with Progress(*columns, console=console, transient=True) as bar:
        task = bar.add_task(desc, total=total)
        for item in iterable:
            yield item
            bar.advance(task)


def _jsonable(obj: Any) -> Any:
    if isinstance(obj, dict):
        return {str(k): _jsonable(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [_jsonable(v) for v in obj]
    if hasattr(obj, "item") and callable(obj.item) and getattr(obj, "ndim", 1) == 0:
        obj = obj.item()
    if hasattr(obj, "tolist"):
        return obj.tolist()
    if isinstance(obj, float) and not math.isfinite(obj):
        return None
    return obj


def to_json(obj: Any) -> str:
    """One JSON line; tensors and numpy values become plain numbers, non-finite floats null."""
    return json.dumps(_jsonable(obj), allow_nan=False)


def emit_result(obj: dict, as_json: bool, title: str = "") -> None:
    """Print a result on stdout: one JSON line with ``--json`` (or when stdout is not a terminal
    and the caller asked for JSON), otherwise a rich table of the scalar fields."""
    if as_json:
        sys.stdout.write(to_json(obj) + "\n")
        sys.stdout.flush()
        return
    table = Table(title=title or None, show_header=True)
    table.add_column("key", overflow="fold")
    table.add_column("value", justify="right", overflow="fold")
    for key, value in _flatten(_jsonable(obj)):
        table.add_row(key, _fmt(value))
    result_console().print(table)


def result_console() -> Console:
    """The console for result tables: the terminal's width on a terminal; unbounded width when stdout
    is a pipe or a file, so no cell is cut to fit 80 columns."""
    return stdout_console if stdout_console.is_terminal else Console(highlight=False, width=100_000)


def _flatten(obj: Any, prefix: str = "") -> list[tuple[str, Any]]:
    if isinstance(obj, dict):
        rows: list[tuple[str, Any]] = []
        for k, v in obj.items():
            rows.extend(_flatten(v, f"{prefix}.{k}" if prefix else str(k)))
        return rows
    return [(prefix, obj)]


def _fmt(value: Any) -> str:
    if isinstance(value, float):
        return f"{value:.4f}"
    if isinstance(value, list) and (len(value) > 8 or any(isinstance(v, dict) for v in value)):
        return f"[{len(value)} items; --json for all]"
    return str(value)


class StepBar:
    """A progress bar over optimizer steps on stderr (terminal only), with the latest loss shown."""

    def __init__(self, total: int, desc: str = "train", start: int = 0) -> None:
        self._progress: Progress | None = None
        if show_progress():
            self._progress = Progress(TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(),
                                      TimeElapsedColumn(), TimeRemainingColumn(), TextColumn("{task.fields[info]}"),
                                      console=console, transient=True)
            self._task = self._progress.add_task(desc, total=total, completed=start, info="")

    def __enter__(self) -> StepBar:
        if self._progress is not None:
            self._progress.start()
        return self

    def update(self, completed: int, info: str = "") -> None:
        if self._progress is not None:
            self._progress.update(self._task, completed=completed, info=info)

    def __exit__(self, *exc: object) -> None:
        if self._progress is not None:
            self._progress.stop()
