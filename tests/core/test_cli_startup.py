"""Issue 19: `zsk --help`, `zsk <task> --help` and shell completion (which runs the program on every TAB) start
without importing torch or any task's model code. No timing: what is imported decides the start-up cost
(tools/perf.py cli-help measures it)."""

from __future__ import annotations

import os
import subprocess
import sys

import pytest

# runs the program in a child process, then reports the heavy modules it imported
CHILD = """
import atexit, sys
atexit.register(lambda: sys.__stdout__.write("\\nIMPORTED " + " ".join(
    m for m in ("torch", "numpy", "transformers", "open_clip") if m in sys.modules) + "\\n"))
from zsk.cli import run
sys.exit(run(sys.argv[1:]))
"""


def _run(args: list[str], env: dict[str, str] | None = None) -> tuple[str, list[str]]:
    """(what the program printed, the heavy modules it imported)."""
    proc = subprocess.run([sys.executable, "-c", CHILD, *args], capture_output=True, text=True, timeout=120,
                          env={**os.environ, **(env or {})})
    assert proc.returncode == 0, proc.stdout + proc.stderr
    line = [x for x in proc.stdout.splitlines() if x.startswith("IMPORTED")]
    assert line, proc.stdout + proc.stderr
    return proc.stdout, line[-1].split()[1:]


@pytest.mark.parametrize("args", [["--help"], ["hsi", "--help"], ["segment", "train", "--help"], ["--version"]])
def test_help_imports_no_torch(args: list[str]) -> None:
    printed, imported = _run(args)
    assert "torch" not in imported and printed.strip()


def test_shell_completion_imports_no_torch() -> None:
    env = {"_ZSK_COMPLETE": "complete_bash", "COMP_WORDS": "zsk hs", "COMP_CWORD": "1"}
    printed, imported = _run([], env)
    assert printed.splitlines()[0] == "hsi"  # the completion ran: "hs" completes to the hsi task
    assert "torch" not in imported
