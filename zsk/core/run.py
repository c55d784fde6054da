"""Run set-up shared by every task's commands: recipe -> config, device, distributed, run directory."""

from __future__ import annotations

import json
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal, Protocol, TypeVar

import torch

from zsk.core import dist
from zsk.core.device import resolve_device, seed_everything
from zsk.core.errors import ZskError
from zsk.core.progress import log
from zsk.core.recipe import apply_set, dump_recipe, load_recipe, parse_config

C = TypeVar("C")

# `data.root: "@sample"` in a recipe (every demo.yaml) means the task's embedded sample data, written
# into the cache on first use, so a demo recipe runs on a machine that never ran `zsk <task> sample`.
SAMPLE_ROOT = "@sample"


class SampleSource(Protocol):
    """What ``data.root: "@sample"`` needs of a task (its :class:`zsk.core.task.Task` provides it)."""

    name: str
    sample_version: str

    def sample_data(self, root: Path) -> dict[str, Any]: ...


def sample_overrides(source: SampleSource) -> dict[str, Any]:
    """Write the task's sample data into ``$ZSK_CACHE/samples/<task>-v<version>/`` once (under a file
    lock, so concurrent jobs write it once; a half-written folder is rewritten) and return the recipe
    keys (``{"data.root": ...}``) that point at it."""
    import shutil

    from filelock import FileLock

    from zsk.core.cache import default_cache

    folder = default_cache().root / "samples" / f"{source.name}-v{source.sample_version}"
    folder.parent.mkdir(parents=True, exist_ok=True)
    marker = folder / ".zsk-sample.json"
    with FileLock(str(folder) + ".lock"):
        if not marker.is_file():
            if folder.exists():
                shutil.rmtree(folder)
            folder.mkdir()
            log(f"writing the {source.name} sample data to {folder} (first use)")
            overrides = source.sample_data(folder)
            from zsk.core.io import atomic_open

            with atomic_open(marker, "w") as f:
                f.write(json.dumps({k: str(v) if isinstance(v, Path) else v for k, v in overrides.items()}))
        return json.loads(marker.read_text(encoding="utf-8"))


def resolve_sample_root(recipe: dict, source: SampleSource | None) -> dict:
    """Replace ``data.root: "@sample"`` by the sample data's location (see :func:`sample_overrides`);
    without a ``source`` (``info``, which needs no data) the marker is left as it is."""
    data = recipe.get("data")
    if not isinstance(data, dict) or data.get("root") != SAMPLE_ROOT or source is None:
        return recipe
    for key, value in sample_overrides(source).items():
        recipe = apply_set(recipe, f"{key}={json.dumps(value)}")
    return recipe


@dataclass
class RunContext:
    """Everything a task's ``train`` needs to know about this run."""

    task: str
    cfg: Any
    recipe: dict
    run_dir: Path
    device: torch.device
    dist: dist.DistInfo
    resume: bool = False


def _check_task(task: str, recipe: dict, source: Any) -> None:
    declared = recipe.get("task")
    if declared and declared != task:
        raise ZskError(f"recipe {source} is for task {declared!r}, not {task!r}: use `zsk {declared} ...`")


def load_config(task: str, config_cls: type[C], recipe_path: str | Path | None, sets: list[str] | None = None,
                seed: int | None = None, device: str | None = None,
                sample: SampleSource | None = None) -> tuple[C, dict]:
    """Read, merge and validate a recipe into the task's Config; ``--seed``/``--device`` override runtime;
    ``data.root: "@sample"`` is resolved with ``sample`` (the task)."""
    recipe = resolve_sample_root(load_recipe(recipe_path, sets), sample)
    _check_task(task, recipe, recipe_path)
    recipe["task"] = task
    if seed is not None:
        recipe = apply_set(recipe, f"runtime.seed={seed}")
    if device is not None:
        recipe = apply_set(recipe, f"runtime.device={device}")
    cfg = parse_config(config_cls, recipe)
    return cfg, recipe


def config_from_checkpoint(ckpt: dict, config_cls: type[C], sets: list[str] | None = None,
                           recipe_path: str | Path | None = None) -> tuple[C, dict]:
    """The config a checkpoint was trained with (or ``recipe_path``), with ``--set`` overrides on top."""
    if recipe_path is not None:
        recipe = load_recipe(recipe_path, None)
    else:
        recipe = dict(ckpt.get("recipe") or {})
    for s in sets or []:
        recipe = apply_set(recipe, s)
    return parse_config(config_cls, recipe), recipe


_fresh_run_dir: Path | None = None


def discard_fresh_run_dir() -> None:
    """Remove the run directory this process just created if it still holds only ``recipe.yaml``
    (a run that stopped on bad input before training leaves no empty folder behind)."""
    global _fresh_run_dir
    d, _fresh_run_dir = _fresh_run_dir, None
    if d is not None and d.is_dir() and {p.name for p in d.iterdir()} <= {"recipe.yaml"}:
        for p in d.iterdir():
            p.unlink()
        d.rmdir()


def _default_run_dir(task: str, recipe: dict) -> Path:
    name = Path(str(recipe.get("_source", "run"))).stem
    return Path("runs") / task / f"{name}-{time.strftime('%Y%m%d-%H%M%S')}"


def _latest_run_dir(task: str, recipe: dict) -> Path | None:
    name = Path(str(recipe.get("_source", "run"))).stem
    candidates = sorted((Path("runs") / task).glob(f"{name}-*"))
    candidates = [c for c in candidates if any(c.glob("last*.pt"))]
    return candidates[-1] if candidates else None


ResumeMode = Literal["strict", "auto"] | bool | None


def resume_mode(resume: ResumeMode) -> Literal["strict", "auto", "no"]:
    """``--resume`` (True / "strict"): continue, fail without last.pt; ``--resume auto``: continue when
    last.pt exists, start fresh otherwise; None / False: a fresh run."""
    if resume in (None, False):
        return "no"
    if resume in (True, "strict"):
        return "strict"
    if resume == "auto":
        return "auto"
    raise ZskError(f"--resume {resume!r}: give --resume alone (continue from last.pt) or --resume auto")


def start_run(task: str, config_cls: type[C], recipe_path: str | Path | None, sets: list[str] | None = None, *,
              out: str | Path | None = None, resume: ResumeMode = None, device: str | None = None,
              seed: int | None = None, sample: SampleSource | None = None) -> RunContext:
    """Prepare a training run: validated config, device, process group, seeds and the run directory
    (rank 0 writes ``recipe.yaml``). ``resume`` continues from ``<out>/last.pt`` (or the newest run of
    this recipe when ``--out`` is not given); ``resume="auto"`` does so only when that file exists."""
    mode = resume_mode(resume)
    cfg, recipe = load_config(task, config_cls, recipe_path, sets, seed=seed, device=device, sample=sample)
    runtime = getattr(cfg, "runtime", None)
    dev = resolve_device(device, getattr(runtime, "device", "auto"))
    info = dist.init_distributed(dev)
    seed_value = int(getattr(runtime, "seed", 0))
    seed_everything(seed_value + info.rank)
    if getattr(runtime, "deterministic", False):
        torch.use_deterministic_algorithms(True, warn_only=True)
    if out is not None:
        run_dir = Path(out)
    elif mode != "no" and (latest := _latest_run_dir(task, recipe)) is not None:
        run_dir = latest
    elif mode == "strict":
        raise ZskError(f"--resume: no earlier run of this recipe under runs/{task}/; pass --out RUN_DIR")
    else:
        run_dir = dist.broadcast_object(_default_run_dir(task, recipe))
    has_last = any(run_dir.glob("last*.pt"))
    if mode == "strict" and not has_last:
        raise ZskError(f"--resume: {run_dir} has no last.pt to continue from (--resume auto starts fresh instead)")
    resume = mode != "no" and has_last
    if mode == "auto":
        log(f"--resume auto: {'continuing ' + str(run_dir) if resume else 'no last.pt, starting fresh'}")
    if info.is_main:
        global _fresh_run_dir
        _fresh_run_dir = None if (resume or run_dir.exists()) else run_dir
        run_dir.mkdir(parents=True, exist_ok=True)
        dump_recipe(recipe, run_dir / "recipe.yaml")
        log(f"run directory: {run_dir}  device: {dev}" + (f"  world size: {info.world_size}" if info.enabled else ""))
    dist.barrier()
    return RunContext(task=task, cfg=cfg, recipe=recipe, run_dir=run_dir, device=dev, dist=info, resume=resume)


def train_seeds(task: str, config_cls: type[C], recipe_path: str | Path | None, sets: list[str] | None, *,
                runs: int, train_fn: Callable[[RunContext], dict], summarize: Callable[[list[dict]], dict],
                out: str | Path | None = None, resume: ResumeMode = None, device: str | None = None,
                seed: int | None = None, sample: SampleSource | None = None) -> dict:
    """Train ``runs`` runs with seeds ``seed, seed + 1, ...`` under ``<out>/run-<i>/`` and write
    ``<out>/summary.json`` with ``summarize(results)`` (mean ± std as the literature reports)."""
    cfg, recipe = load_config(task, config_cls, recipe_path, sets, seed=seed, sample=sample)
    base = Path(out) if out is not None else dist.broadcast_object(_default_run_dir(task, recipe))
    first_seed = int(getattr(getattr(cfg, "runtime", None), "seed", 0))
    results = []
    for i in range(runs):
        log(f"run {i + 1}/{runs} (seed {first_seed + i})")
        ctx = start_run(task, config_cls, recipe_path, sets, out=base / f"run-{i}", resume=resume, device=device,
                        seed=first_seed + i, sample=sample)
        results.append(train_fn(ctx))
    summary = {"run_dir": str(base), **summarize(results)}
    if dist.is_main():
        base.mkdir(parents=True, exist_ok=True)
        (base / "summary.json").write_text(json.dumps(summary, indent=2))
    return summary
