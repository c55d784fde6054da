"""Shared pieces of the parity scripts: put a user's checkout of an official repository on the import
path, shims for its old imports, a comparison table, and the figures file that ``tests/parity`` replays.

The official code is never copied into zsk: every script imports it from ``--official DIR``.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import types
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch

TOL = 1e-5  # fp32 equality threshold of the harness (max abs diff)


def parser(description: str) -> argparse.ArgumentParser:
    """The common command line: ``--official DIR`` (a checkout), ``--save DIR`` (write the figures)."""
    p = argparse.ArgumentParser(description=description)
    p.add_argument("--official", type=Path, required=True, help="A checkout of the official repository.")
    p.add_argument("--save", type=Path, default=None, help="Write the figures (npz + json) for tests/parity here.")
    p.add_argument("--seed", type=int, default=0)
    return p


def official_commit(root: Path) -> str:
    """The commit of the checkout (``unknown`` when it is not a git work tree)."""
    try:
        return subprocess.run(["git", "-C", str(root), "rev-parse", "HEAD"], capture_output=True, text=True,
                              check=True).stdout.strip()
    except (OSError, subprocess.CalledProcessError):
        return "unknown"


def add_official(root: Path, *subdirs: str) -> Path:
    """Put the checkout (and ``subdirs`` of it) first on ``sys.path``; exit 2 when it is missing."""
    root = Path(root).resolve()
    if not root.is_dir():
        sys.exit(f"error: --official {root} is not a folder; clone the official repository and pass its path")
    for d in reversed([root, *[root / s for s in subdirs]]):
        sys.path.insert(0, str(d))
    return root


def cpu_shims() -> None:
    """Let CUDA-only official code run on the CPU: ``.cuda()`` on tensors and modules is a no-op, and
    NumPy's removed aliases (``np.bool``, ``np.int``, ``np.float``) exist again."""
    torch.Tensor.cuda = lambda self, *a, **k: self  # type: ignore[method-assign]
    torch.nn.Module.cuda = lambda self, *a, **k: self  # type: ignore[method-assign]
    for name, value in (("bool", bool), ("int", int), ("float", float), ("object", object), ("long", int)):
        if not hasattr(np, name):
            setattr(np, name, value)


def stub_module(name: str, **attrs: Any) -> types.ModuleType:
    """Register an empty module ``name`` (and its parents) with ``attrs``, for imports the compared code
    never uses (e.g. a logger or a visualisation package)."""
    parts = name.split(".")
    for i in range(1, len(parts) + 1):
        sub = ".".join(parts[:i])
        if sub not in sys.modules:
            sys.modules[sub] = types.ModuleType(sub)
            if i > 1:
                setattr(sys.modules[".".join(parts[: i - 1])], parts[i - 1], sys.modules[sub])
    module = sys.modules[name]
    for k, v in attrs.items():
        setattr(module, k, v)
    return module


def max_abs_diff(a: Any, b: Any) -> float:
    """Largest absolute difference between two arrays/tensors/numbers (inf when the shapes differ)."""
    x = np.asarray(a.detach().cpu().numpy() if isinstance(a, torch.Tensor) else a, dtype=np.float64)
    y = np.asarray(b.detach().cpu().numpy() if isinstance(b, torch.Tensor) else b, dtype=np.float64)
    if x.shape != y.shape:
        return float("inf")
    return float(np.max(np.abs(x - y))) if x.size else 0.0


@dataclass
class Report:
    """The table every parity script prints: component | max abs diff | verdict."""

    task: str
    commit: str
    rows: list[tuple[str, float | None, str]] = field(default_factory=list)
    figures: dict[str, np.ndarray] = field(default_factory=dict)

    def compare(self, component: str, ours: Any, official: Any, tol: float = TOL, keep: bool = True) -> float:
        """Record one comparison (and keep the official value as a figure for tests/parity)."""
        diff = max_abs_diff(ours, official)
        self.rows.append((component, diff, "equal" if diff <= tol else "DIFFERENT"))
        if keep:
            # a copy: a CPU tensor's numpy() shares its memory, and a later in-place update would change the figure
            value = official.detach().cpu().numpy().copy() if isinstance(official, torch.Tensor) else np.array(official, copy=True)
            self.figures[component] = value
        return diff

    def note(self, component: str, verdict: str) -> None:
        """A component that is compared in another way, or cannot be (with the reason)."""
        self.rows.append((component, None, verdict))

    def keep(self, name: str, value: Any) -> None:
        """An input to keep with the figures (seeded inputs the test replays)."""
        self.figures[name] = value.detach().cpu().numpy().copy() if isinstance(value, torch.Tensor) else np.array(value, copy=True)

    def print(self) -> None:
        width = max([len(r[0]) for r in self.rows] + [9])
        print(f"{self.task} parity against the official code at {self.commit}")
        print(f"{'component'.ljust(width)} | max abs diff | verdict")
        print(f"{'-' * width}-|--------------|--------")
        for name, diff, verdict in self.rows:
            shown = "-" if diff is None else f"{diff:.3g}"
            print(f"{name.ljust(width)} | {shown:>12} | {verdict}")

    def save(self, folder: Path | None, extra: dict[str, Any] | None = None) -> None:
        """``folder/<task>.npz`` (inputs and official outputs) and ``folder/<task>.json`` (commit, table)."""
        if folder is None:
            return
        folder.mkdir(parents=True, exist_ok=True)
        np.savez_compressed(folder / f"{self.task}.npz", **{k.replace("/", "__"): v for k, v in self.figures.items()})
        meta = {"task": self.task, "official_commit": self.commit,
                "rows": [{"component": n, "max_abs_diff": d, "verdict": v} for n, d, v in self.rows], **(extra or {})}
        (folder / f"{self.task}.json").write_text(json.dumps(meta, indent=2))

    @property
    def ok(self) -> bool:
        return all(v != "DIFFERENT" for _, _, v in self.rows)


def load_figures(folder: Path, task: str) -> tuple[dict[str, np.ndarray], dict[str, Any]]:
    """What :meth:`Report.save` wrote (for tests/parity)."""
    with np.load(folder / f"{task}.npz") as z:
        arrays = {k.replace("__", "/"): z[k] for k in z.files}
    return arrays, json.loads((folder / f"{task}.json").read_text())


def seeded(*shape: int, seed: int = 0, scale: float = 1.0) -> torch.Tensor:
    """A reproducible normal tensor (the harness's inputs)."""
    return torch.randn(*shape, generator=torch.Generator().manual_seed(seed)) * scale


def names(items: Iterable[Any]) -> list[str]:
    return [str(i) for i in items]


def assert_close(ours: Any, official: Any, tol: float = TOL) -> None:
    """zsk's value against an official figure: max abs diff <= ``tol`` (tests/parity)."""
    x = ours.detach().cpu().numpy() if isinstance(ours, torch.Tensor) else np.asarray(ours)
    np.testing.assert_allclose(np.asarray(x, np.float64), np.asarray(official, np.float64), rtol=0, atol=tol)
