"""Errors that map to the command line's exit codes (DESIGN.md: 0 ok, 2 bad input, 1 failure)."""

from __future__ import annotations

from typing import Any


class ZskError(Exception):
    """Bad usage or bad input: the CLI prints ``error: <message>`` and exits 2.

    The message names the file or key that is wrong and how to fix it.
    """

    exit_code = 2


def require(ok: bool, key: str, want: str, value: Any) -> None:
    """Raise the one-line ``ZskError`` "<key> must be <want>, got <value>" unless ``ok`` (the range checks of
    the tasks' config dataclasses; lists and tuples shown as lists, as a recipe writes them)."""
    if not ok:
        shown = list(value) if isinstance(value, (list, tuple)) else value
        raise ZskError(f"{key} must be {want}, got {shown!r}")


class ZskFailure(Exception):
    """A clear failure that is not the user's input (e.g. training diverged): exit 1, no traceback."""

    exit_code = 1


class Interrupted(Exception):
    """Training stopped by SIGTERM/SIGINT after writing ``last.pt``; exit 143 or 130."""

    def __init__(self, exit_code: int, message: str = "") -> None:
        super().__init__(message or f"interrupted (exit {exit_code})")
        self.exit_code = exit_code
