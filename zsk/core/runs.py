"""What happened to each run: ``RUN/status.json`` written by ``train`` (running, finished, interrupted,
failed) and :func:`list_runs`, the table behind ``zsk runs [DIR]`` that lets a person find the run to
resume or compare. Reads only small text files (no torch), so it stays quick on a folder of many runs."""

from __future__ import annotations

import json
import os
import socket
import time
from pathlib import Path
from typing import Any

STATUS_FILE = "status.json"
STATUSES = ("running", "finished", "interrupted", "failed")


def write_status(run_dir: Path, status: str, **info: Any) -> None:
    """Record the run's state in ``RUN/status.json`` (atomically; earlier keys are kept and updated)."""
    from zsk.core.io import atomic_open

    if status not in STATUSES:
        raise ValueError(f"unknown run status {status!r}")
    path = Path(run_dir) / STATUS_FILE
    row: dict[str, Any] = {}
    if path.is_file():
        try:
            row = json.loads(path.read_text(encoding="utf-8"))
        except (OSError, ValueError):
            row = {}
    now = time.strftime("%Y-%m-%dT%H:%M:%S%z")
    if status == "running":
        row.update(started=now, pid=os.getpid(), host=socket.gethostname())
        row.pop("ended", None)
        row.pop("exit_code", None)
        row.pop("error", None)
    else:
        row["ended"] = now
    row.update(status=status, **info)
    with atomic_open(path, "w") as f:
        f.write(json.dumps(row, indent=2))


def _held(run_dir: Path) -> bool:
    """Whether a process holds the run folder's advisory lock (``zsk.core.run`` takes it for the run)."""
    try:
        import fcntl
    except ImportError:  # no advisory locks: trust the status file
        return True
    try:
        fd = os.open(run_dir, os.O_RDONLY)
    except OSError:
        return False
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        return True
    finally:
        os.close(fd)  # closing releases a lock this call took
    return False


def _read_json(path: Path) -> Any:
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None


def _recipe_keys(path: Path) -> dict[str, Any]:
    """task, description and seed of a stored ``recipe.yaml`` (None where absent or unreadable)."""
    import yaml

    try:
        raw = yaml.safe_load(path.read_text(encoding="utf-8")) or {}
    except (OSError, yaml.YAMLError):
        return {}
    runtime = raw.get("runtime") if isinstance(raw.get("runtime"), dict) else {}
    return {"task": raw.get("task"), "description": raw.get("description"), "seed": runtime.get("seed", 0)}


def _progress(metrics: Path) -> tuple[str | None, int | None]:
    """The stage and step of the last training row of ``metrics.jsonl``."""
    stage, step = None, None
    try:
        lines = metrics.read_text(encoding="utf-8").splitlines()
    except OSError:
        return None, None
    for line in lines:
        try:
            row = json.loads(line)
        except ValueError:
            continue  # a line cut by a kill
        if isinstance(row, dict) and row.get("kind") == "train" and "step" in row:
            stage, step = row.get("stage"), int(row["step"])
    return stage, step


def _best(run_dir: Path, stage: str | None) -> dict[str, Any] | None:
    """``{"metric", "value", "step"}`` of the run's best evaluation: eval.json's, else the last stage's."""
    for name in ("eval.json", f"eval-{stage}.json" if stage else None):
        if name is None:
            continue
        row = _read_json(run_dir / name)
        if isinstance(row, dict) and isinstance(row.get("best"), dict) and "value" in row["best"]:
            return {k: row["best"].get(k) for k in ("metric", "value", "step")}
    return None


def run_status(run_dir: Path) -> str:
    """finished, interrupted, failed or running: from status.json (a "running" run whose folder no process
    holds was killed, so it is failed), else from the files (runs written before status.json)."""
    row = _read_json(run_dir / STATUS_FILE)
    if isinstance(row, dict) and row.get("status") in STATUSES:
        if row["status"] == "running" and not _held(run_dir):
            return "failed"
        return str(row["status"])
    if (run_dir / "eval.json").is_file():
        return "finished"
    if any(run_dir.glob("last*.pt")):
        return "interrupted"
    return "failed"


def run_row(run_dir: Path) -> dict[str, Any]:
    """One row of ``zsk runs``: folder, task, recipe, seed, stage and step reached, best metric, status."""
    status_row = _read_json(run_dir / STATUS_FILE)
    status_row = status_row if isinstance(status_row, dict) else {}
    keys = _recipe_keys(run_dir / "recipe.yaml")
    stage, step = _progress(run_dir / "metrics.jsonl")
    best = _best(run_dir, stage)
    return {"run": str(run_dir), "task": status_row.get("task") or keys.get("task"),
            "recipe": status_row.get("recipe") or keys.get("description"),
            "seed": status_row.get("seed", keys.get("seed")), "stage": stage, "step": step,
            "best_metric": best and best["metric"], "best_value": best and best["value"],
            "best_step": best and best["step"], "status": run_status(run_dir),
            "exit_code": status_row.get("exit_code"), "ended": status_row.get("ended")}


def find_runs(root: Path) -> list[Path]:
    """Run folders (holding ``recipe.yaml``) at or below ``root``, sorted by path; ``train --runs N`` seeds
    (``run-<i>/``) are runs of their own."""
    root = Path(root)
    if (root / "recipe.yaml").is_file():
        return [root]
    return sorted(p.parent for p in root.rglob("recipe.yaml") if p.is_file())


def list_runs(root: Path) -> list[dict[str, Any]]:
    """:func:`run_row` of every run under ``root``."""
    return [run_row(d) for d in find_runs(root)]
