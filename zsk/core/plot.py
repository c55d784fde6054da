"""``zsk plot``: PNG curves of the metrics a run logged (``metrics.jsonl``) and its confusion matrix.

Pure helpers read run folders, turn rows into per-metric series, aggregate the seeds of a ``--runs``
folder (mean, sample std, min and max at the steps every seed logged) and draw with matplotlib's Agg
canvas (no display, no pyplot state). :func:`plot_runs` ties them together for the command.
"""

from __future__ import annotations

import json
import math
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from zsk.core.errors import ZskError
from zsk.core.progress import warn

# Row fields that are coordinates or labels, not metrics.
NON_METRIC_KEYS = frozenset({"kind", "step", "epoch", "stage"})
_RUN_DIR = re.compile(r"^run-(\d+)$")

Series = tuple[list[int], list[float]]


@dataclass
class RunGroup:
    """Runs drawn as one entry of a legend: a single run, or the seeds of a ``train --runs N`` folder."""

    label: str
    runs: list[Path]
    is_seeds: bool = False
    series: list[dict[str, Series]] = field(default_factory=list)
    evals: list[dict[str, Any] | None] = field(default_factory=list)


def expand_runs(paths: list[Path]) -> list[RunGroup]:
    """One :class:`RunGroup` per argument: a folder with ``metrics.jsonl`` is one run; a folder of
    ``run-<i>/`` folders (``train --runs N``) is a group of seeds. Anything else is :class:`ZskError`."""
    groups: list[RunGroup] = []
    for path in paths:
        path = Path(path)
        if not path.is_dir():
            raise ZskError(f"{path}: no such run folder")
        if (path / "metrics.jsonl").is_file():
            groups.append(RunGroup(path.name or str(path), [path]))
            continue
        seeds = sorted((int(m.group(1)), p) for p in path.iterdir()
                       if p.is_dir() and (m := _RUN_DIR.match(p.name)) and (p / "metrics.jsonl").is_file())
        if not seeds:
            raise ZskError(f"{path / 'metrics.jsonl'}: not found (and no run-<i>/ folders with one)")
        groups.append(RunGroup(path.name or str(path), [p for _, p in seeds], is_seeds=True))
    labels = [g.label for g in groups]
    for g, path in zip(groups, paths, strict=True):
        if labels.count(g.label) > 1:
            g.label = str(path)
    return groups


def read_metrics(path: Path) -> list[dict[str, Any]]:
    """The rows of a ``metrics.jsonl``; corrupt lines are skipped with a warning when at least one row
    parses, otherwise (or for a missing file) :class:`ZskError` naming the file."""
    path = Path(path)
    if not path.is_file():
        raise ZskError(f"{path}: not found")
    rows: list[dict[str, Any]] = []
    bad: list[int] = []
    for number, line in enumerate(path.read_text(encoding="utf-8", errors="replace").splitlines(), 1):
        if not line.strip():
            continue
        try:
            row = json.loads(line)
        except json.JSONDecodeError:
            bad.append(number)
            continue
        if isinstance(row, dict) and isinstance(row.get("step"), (int, float)) and not isinstance(row.get("step"), bool):
            rows.append(row)
        else:
            bad.append(number)
    if not rows:
        raise ZskError(f"{path}: no readable metric rows" + (f" ({len(bad)} corrupt line(s))" if bad else ""))
    if bad:
        warn(f"{path}: skipped {len(bad)} corrupt line(s) (line {', '.join(map(str, bad[:5]))}{', ...' if len(bad) > 5 else ''})")
    return rows


def read_eval(run: Path) -> dict[str, Any] | None:
    """A run's ``eval.json`` as a dict, or None when there is none; a corrupt one is :class:`ZskError`."""
    path = Path(run) / "eval.json"
    if not path.is_file():
        return None
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise ZskError(f"{path}: not valid JSON ({exc})") from None
    if not isinstance(data, dict):
        raise ZskError(f"{path}: expected a JSON object")
    return data


def series_key(row: dict[str, Any], metric: str) -> str:
    """The name a metric is plotted under: ``<kind>/[<stage>/]<metric>``, e.g. ``train/loss``."""
    stage = row.get("stage") or ""
    return f"{row.get('kind', 'train')}/{stage + '/' if stage else ''}{metric}"


def group_series(rows: list[dict[str, Any]]) -> dict[str, Series]:
    """Per metric key, the (steps, values) of every finite numeric value, sorted by step; a step logged
    twice (a resumed run) keeps its last value."""
    by_key: dict[str, dict[int, float]] = {}
    for row in rows:
        step = int(row["step"])
        for name, value in row.items():
            if name in NON_METRIC_KEYS or isinstance(value, bool) or not isinstance(value, (int, float)):
                continue
            if not math.isfinite(value):
                continue
            by_key.setdefault(series_key(row, name), {})[step] = float(value)
    return {k: (sorted(v), [v[s] for s in sorted(v)]) for k, v in by_key.items()}


def aggregate(series: list[Series]) -> dict[str, list[float]]:
    """Mean, sample std (n - 1; 0 for one run), min and max across runs at the steps all runs logged:
    ``{"step", "mean", "std", "min", "max"}``."""
    if not series:
        return {"step": [], "mean": [], "std": [], "min": [], "max": []}
    maps = [dict(zip(steps, values, strict=True)) for steps, values in series]
    common = sorted(set(maps[0]).intersection(*maps[1:]))
    out: dict[str, list[float]] = {"step": [float(s) for s in common], "mean": [], "std": [], "min": [], "max": []}
    for s in common:
        vals = [m[s] for m in maps]
        mean = sum(vals) / len(vals)
        out["mean"].append(mean)
        out["std"].append(math.sqrt(sum((v - mean) ** 2 for v in vals) / (len(vals) - 1)) if len(vals) > 1 else 0.0)
        out["min"].append(min(vals))
        out["max"].append(max(vals))
    return out


def best_of(evaluation: dict[str, Any] | None) -> dict[str, Any] | None:
    """The ``best`` ``{metric, value, step}`` of an ``eval.json`` when it has a usable one, else None."""
    best = (evaluation or {}).get("best")
    if not isinstance(best, dict) or not isinstance(best.get("step"), (int, float)) or not best.get("metric"):
        return None
    return {"metric": str(best["metric"]), "value": best.get("value"), "step": int(best["step"])}


def best_key(best: dict[str, Any], keys: list[str], stage: str = "") -> str | None:
    """The plotted eval key of a ``best`` entry (``eval/[<stage>/]<metric>``), or None if not plotted."""
    wanted = f"eval/{stage + '/' if stage else ''}{best['metric']}"
    if wanted in keys:
        return wanted
    matches = [k for k in keys if k.startswith("eval/") and k.rsplit("/", 1)[-1] == best["metric"]]
    return matches[-1] if matches else None


def sanitize(key: str) -> str:
    """A file-name-safe stem for a metric key: ``train/loss`` -> ``train_loss``."""
    return re.sub(r"[^A-Za-z0-9._-]+", "_", key).strip("._") or "metric"


def confusion_of(evaluation: dict[str, Any] | None) -> tuple[list[list[float]], list[str] | None] | None:
    """The square ``confusion`` matrix of an ``eval.json`` and its class names (``class_names`` or
    ``classes``, when they match the matrix size), or None."""
    matrix = (evaluation or {}).get("confusion")
    if not isinstance(matrix, list) or not matrix or not all(isinstance(r, list) and len(r) == len(matrix) for r in matrix):
        return None
    try:
        values = [[float(v) for v in r] for r in matrix]
    except (TypeError, ValueError):
        return None
    names = (evaluation or {}).get("class_names") or (evaluation or {}).get("classes")
    if not isinstance(names, list) or len(names) != len(values):
        names = None
    return values, [str(n) for n in names] if names else None


def _figure(width: float = 7.0, height: float = 4.5) -> Any:
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    fig = Figure(figsize=(width, height), dpi=100)
    FigureCanvasAgg(fig)
    return fig


def draw_metric(key: str, groups: list[RunGroup], path: Path) -> None:
    """One PNG for one metric key: a line per run, mean and min-max band per group of seeds, and each
    run's best step (from its ``eval.json``) marked."""
    fig = _figure()
    ax = fig.add_subplot(1, 1, 1)
    colors = [f"C{i % 10}" for i in range(len(groups))]
    for color, group in zip(colors, groups, strict=True):
        present = [s[key] for s in group.series if key in s]
        if not present:
            continue
        if group.is_seeds and len(present) > 1:
            for steps, values in present:
                ax.plot(steps, values, color=color, alpha=0.25, linewidth=0.8)
            agg = aggregate(present)
            ax.plot(agg["step"], agg["mean"], color=color, linewidth=1.8, label=f"{group.label} (mean of {len(present)})")
            ax.fill_between(agg["step"], agg["min"], agg["max"], color=color, alpha=0.2, linewidth=0)
        else:
            for run, series in zip(group.runs, group.series, strict=True):
                if key not in series:
                    continue
                steps, values = series[key]
                marker = "o" if len(steps) < 30 else None
                label = group.label if len(group.runs) == 1 else f"{group.label}/{run.name}"
                ax.plot(steps, values, color=color, linewidth=1.5, marker=marker, markersize=3, label=label)
        for series, evaluation in zip(group.series, group.evals, strict=True):
            best = best_of(evaluation)
            if best is None or key not in series:
                continue
            ax.axvline(best["step"], color=color, linestyle="--", linewidth=0.8, alpha=0.7)
            stage = str((evaluation or {}).get("stage") or "")
            if best_key(best, list(series), stage) == key and isinstance(best.get("value"), (int, float)):
                ax.plot([best["step"]], [best["value"]], marker="*", markersize=12, color=color,
                        markeredgecolor="black", linestyle="none")
    ax.set_title(key)
    ax.set_xlabel("step")
    ax.set_ylabel(key.rsplit("/", 1)[-1])
    ax.grid(True, alpha=0.3)
    if ax.get_legend_handles_labels()[0]:
        ax.legend(fontsize="small")
    fig.tight_layout()
    fig.savefig(path, format="png")


def draw_confusion(matrix: list[list[float]], class_names: list[str] | None, path: Path, title: str = "") -> None:
    """A confusion-matrix PNG (rows: true class, columns: predicted), counts written in the cells when
    the matrix is small enough to read."""
    n = len(matrix)
    size = min(4.0 + 0.4 * n, 20.0)
    fig = _figure(size + 1.0, size)
    ax = fig.add_subplot(1, 1, 1)
    image = ax.imshow(matrix, cmap="Blues", interpolation="nearest")
    fig.colorbar(image, ax=ax, fraction=0.046, pad=0.04)
    names = class_names or [str(i) for i in range(n)]
    if n <= 40:
        ax.set_xticks(range(n), names, rotation=45 if any(len(x) > 3 for x in names) else 0, ha="right", fontsize="small")
        ax.set_yticks(range(n), names, fontsize="small")
    if n <= 20:
        top = max((v for r in matrix for v in r), default=0.0)
        for i, row in enumerate(matrix):
            for j, v in enumerate(row):
                text = f"{int(v)}" if float(v).is_integer() else f"{v:.2f}"
                ax.text(j, i, text, ha="center", va="center", fontsize="small",
                        color="white" if top and v > top / 2 else "black")
    ax.set_xlabel("predicted")
    ax.set_ylabel("true")
    ax.set_title(title or "confusion matrix")
    fig.tight_layout()
    fig.savefig(path, format="png")


def plot_runs(paths: list[Path], out: Path | None = None, force: bool = False) -> list[dict[str, Any]]:
    """Read the runs, draw one PNG per metric key (all runs on each) and a confusion matrix per run whose
    ``eval.json`` has one, into ``out`` (default ``<first run>/plots/``). Existing files are not
    overwritten unless ``force``: that is :class:`ZskError` naming the file, before anything is written.
    Returns one row per written file: ``{"file", "kind": "curve"|"confusion", "key", "runs"}``."""
    if not paths:
        raise ZskError("give at least one run folder")
    groups = expand_runs(paths)
    for group in groups:
        for run in group.runs:
            group.series.append(group_series(read_metrics(run / "metrics.jsonl")))
            group.evals.append(read_eval(run))
    out_dir = Path(out) if out is not None else groups[0].runs[0] / "plots"
    if out_dir.exists() and not out_dir.is_dir():
        raise ZskError(f"{out_dir}: --out exists and is not a folder")
    keys: list[str] = []
    for group in groups:
        for series in group.series:
            keys.extend(k for k in series if k not in keys)
    keys.sort(key=lambda k: (not k.startswith("train/"), k))
    planned: list[tuple[Path, str, str, Any]] = []
    used: set[str] = set()

    def unique(stem: str) -> Path:
        name, i = stem, 2
        while name in used:
            name, i = f"{stem}-{i}", i + 1
        used.add(name)
        return out_dir / f"{name}.png"

    for key in keys:
        planned.append((unique(sanitize(key)), "curve", key, None))
    confusions = [(group, run, c) for group in groups for run, ev in zip(group.runs, group.evals, strict=True)
                  if (c := confusion_of(ev)) is not None]
    for group, run, c in confusions:
        label = "" if len(confusions) == 1 else f"-{sanitize(group.label if len(group.runs) == 1 else f'{group.label}-{run.name}')}"
        title = group.label if len(group.runs) == 1 else f"{group.label}/{run.name}"
        planned.append((unique(f"confusion{label}"), "confusion", str(run), (*c, title)))
    if not planned:
        raise ZskError(f"{groups[0].runs[0] / 'metrics.jsonl'}: no numeric metrics to plot")
    existing = [p for p, *_ in planned if p.exists()]
    if existing and not force:
        raise ZskError(f"{existing[0]}: already exists; pass --force to overwrite or --out for another folder")
    out_dir.mkdir(parents=True, exist_ok=True)
    n_runs = sum(len(g.runs) for g in groups)
    rows: list[dict[str, Any]] = []
    for path, kind, key, extra in planned:
        if kind == "curve":
            draw_metric(key, groups, path)
            runs = sum(1 for g in groups for s in g.series if key in s)
        else:
            matrix, names, title = extra
            draw_confusion(matrix, names, path, title=f"confusion matrix: {title}")
            runs = 1
        row: dict[str, Any] = {"file": str(path), "kind": kind, "key": key if kind == "curve" else "confusion",
                               "runs": runs, "of_runs": n_runs}
        if kind == "confusion":
            row["run"] = key
        rows.append(row)
    return rows
