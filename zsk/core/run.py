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

    def commit_recipe(self) -> None:
        """Write ``recipe.yaml`` (rank 0). A fresh run writes it at once; a resumed run only once its
        checkpoint has loaded, so a refused resume leaves the folder as it was."""
        if self.dist.is_main and self.run_dir.is_dir():
            dump_recipe(self.recipe, self.run_dir / "recipe.yaml")


def _check_task(task: str, recipe: dict, source: Any) -> None:
    declared = recipe.get("task")
    if declared and declared != task:
        raise ZskError(f"recipe {source} is for task {declared!r}, not {task!r}: use `zsk {declared} ...`")


def absolute_root(recipe: dict) -> dict:
    """``data.root`` as an absolute path, so a run's stored recipe (and its checkpoints) still find the
    data when evaluated from another folder; ``@sample`` and absent roots stay as they are."""
    data = recipe.get("data")
    root = data.get("root") if isinstance(data, dict) else None
    if isinstance(root, str) and root and root != SAMPLE_ROOT and not Path(root).is_absolute():
        recipe = {**recipe, "data": {**data, "root": str(Path(root).resolve())}}
    return recipe


def load_config(task: str, config_cls: type[C], recipe_path: str | Path | None, sets: list[str] | None = None,
                seed: int | None = None, device: str | None = None,
                sample: SampleSource | None = None) -> tuple[C, dict]:
    """Read, merge and validate a recipe into the task's Config; ``--seed``/``--device`` override runtime;
    ``data.root: "@sample"`` is resolved with ``sample`` (the task)."""
    recipe = absolute_root(resolve_sample_root(load_recipe(recipe_path, sets), sample))
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
    recipe = absolute_root(recipe) if sets else recipe  # a --set data.root=REL is relative to here
    return parse_config(config_cls, recipe), recipe


_fresh_run_dir: Path | None = None


def discard_fresh_run_dir() -> None:
    """Remove the run directory this process just created if it still holds only ``recipe.yaml`` (and the
    ``status.json`` of its start): a run that stopped on bad input before training leaves no folder behind."""
    global _fresh_run_dir
    d, _fresh_run_dir = _fresh_run_dir, None
    if d is not None and d.is_dir() and {p.name for p in d.iterdir()} <= {"recipe.yaml", "status.json"}:
        _release(d)
        for p in d.iterdir():
            p.unlink()
        d.rmdir()


def _default_run_dir(task: str, recipe: dict) -> Path:
    name = Path(str(recipe.get("_source", "run"))).stem
    return Path("runs") / task / f"{name}-{time.strftime('%Y%m%d-%H%M%S')}"


RUN_FILES = ("recipe.yaml", "metrics.jsonl", "eval.json", "summary.json", "status.json")
_locks: dict[Path, int] = {}  # run folders this process holds (folder fds), released at exit


def _claim_new(base: Path) -> Path:
    """Create a new run folder atomically: ``base``, else ``base-2``, ``base-3``, ... (two runs started
    in the same second never share one)."""
    base.parent.mkdir(parents=True, exist_ok=True)
    for k in range(1, 10_000):
        candidate = base if k == 1 else base.with_name(f"{base.name}-{k}")
        try:
            candidate.mkdir()
            return candidate
        except FileExistsError:
            continue
    raise ZskError(f"cannot create a run folder next to {base}: pass --out DIR")


def _looks_like_run(folder: Path) -> bool:
    return any((folder / f).exists() for f in RUN_FILES) or any(folder.glob("*.pt"))


def _lock(run_dir: Path) -> None:
    """Hold the run folder for this process with an advisory lock on the folder itself (no file is
    left behind): a second zsk process training into it stops with exit 2. Released at exit."""
    import os

    try:
        import fcntl
    except ImportError:  # Windows: no advisory locks on folders; the emptiness check still applies
        return
    key = run_dir.resolve()
    if key in _locks:
        return
    fd = os.open(key, os.O_RDONLY)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        os.close(fd)
        raise ZskError(f"{run_dir} is in use by another zsk process; wait for it or choose another --out") from None
    _locks[key] = fd


def release_run(ctx: RunContext) -> None:
    """Let go of a finished run's folder (the lock :func:`start_run` took)."""
    _release(ctx.run_dir)


def _release(run_dir: Path) -> None:
    import os

    fd = _locks.pop(run_dir.resolve(), None)
    if fd is not None:
        os.close(fd)


def claim_run_dir(run_dir: Path, *, resume: bool, overwrite: bool) -> Path:
    """Make ``--out`` this run's folder, or refuse: a file, an unwritable folder, or a folder holding
    another run (unless ``resume`` continues it or ``overwrite`` replaces it) is a ``ZskError``."""
    import shutil

    if run_dir.exists() and not run_dir.is_dir():
        raise ZskError(f"--out {run_dir} is a file; give a folder for the run")
    entries = sorted(p.name for p in run_dir.iterdir()) if run_dir.is_dir() else []
    if entries and not resume:
        if not overwrite:
            raise ZskError(f"--out {run_dir} already holds {', '.join(entries[:4])}{' ...' if len(entries) > 4 else ''}; "
                           "continue that run with --resume, replace it with --overwrite, or choose another folder")
        if not _looks_like_run(run_dir):
            raise ZskError(f"--overwrite: {run_dir} is not a zsk run folder (no recipe.yaml, metrics.jsonl or "
                           "checkpoint); refusing to delete it")
        _lock(run_dir)
        for p in run_dir.iterdir():
            shutil.rmtree(p) if p.is_dir() else p.unlink()
        log(f"--overwrite: emptied {run_dir}")
        return run_dir
    try:
        run_dir.mkdir(parents=True, exist_ok=True)
        _lock(run_dir)
        probe = run_dir / ".zsk-write-test"
        probe.write_bytes(b"")
        probe.unlink()
    except PermissionError:
        raise ZskError(f"--out {run_dir} is not writable; choose another folder") from None
    except OSError as e:
        raise ZskError(f"--out {run_dir}: cannot write there ({e.strerror}); choose another folder") from None
    return run_dir


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
              seed: int | None = None, sample: SampleSource | None = None, overwrite: bool = False) -> RunContext:
    """Prepare a training run: validated config, device, process group, seeds and the run directory
    (claimed atomically by rank 0, never shared; ``recipe.yaml`` written there). ``resume`` continues from
    ``<out>/last.pt`` (or the newest run of this recipe when ``--out`` is not given); ``resume="auto"``
    does so only when that file exists; ``overwrite`` replaces the run in ``--out``."""
    mode = resume_mode(resume)
    cfg, recipe = load_config(task, config_cls, recipe_path, sets, seed=seed, device=device, sample=sample)
    runtime = getattr(cfg, "runtime", None)
    dev = resolve_device(device, getattr(runtime, "device", "auto"))
    info = dist.init_distributed(dev)
    seed_value = int(getattr(runtime, "seed", 0))
    seed_everything(seed_value + info.rank)
    if getattr(runtime, "deterministic", False):
        torch.use_deterministic_algorithms(True, warn_only=True)
    if overwrite and mode != "no":
        raise ZskError("--overwrite replaces a run and --resume continues one: give one of them")
    if out is not None:
        run_dir: Path | None = Path(out)
    elif mode != "no" and (latest := _latest_run_dir(task, recipe)) is not None:
        run_dir = latest
    elif mode == "strict":
        raise ZskError(f"--resume: no earlier run of this recipe under runs/{task}/; pass --out RUN_DIR")
    else:
        run_dir = None  # a new folder under runs/<task>/
    has_last = run_dir is not None and run_dir.is_dir() and any(run_dir.glob("last*.pt"))
    if mode == "strict" and not has_last:
        raise ZskError(f"--resume: {run_dir} has no last.pt to continue from (--resume auto starts fresh instead)")
    resume = mode != "no" and has_last
    if mode == "auto":
        log(f"--resume auto: {'continuing ' + str(run_dir) if resume else 'no last.pt, starting fresh'}")
    if resume:
        assert run_dir is not None
        stored = run_dir / "recipe.yaml"
        if stored.is_file():
            import yaml

            earlier = (yaml.safe_load(stored.read_text(encoding="utf-8")) or {}).get("task")
            if earlier not in (None, task):
                raise ZskError(f"--resume: {run_dir} holds a {earlier} run, not {task}: use `zsk {earlier} train ...`")
    if info.is_main:
        global _fresh_run_dir
        if run_dir is None:
            run_dir = _claim_new(_default_run_dir(task, recipe))
            _lock(run_dir)
            _fresh_run_dir = run_dir
        else:
            fresh = not run_dir.exists()
            run_dir = claim_run_dir(run_dir, resume=resume, overwrite=overwrite)
            _fresh_run_dir = run_dir if fresh else None
        log(f"run directory: {run_dir}  device: {dev}" + (f"  world size: {info.world_size}" if info.enabled else ""))
    run_dir = dist.broadcast_object(run_dir)
    ctx = RunContext(task=task, cfg=cfg, recipe=recipe, run_dir=run_dir, device=dev, dist=info, resume=resume)
    if not resume:
        ctx.commit_recipe()
    dist.barrier()
    return ctx


def train_seeds(task: str, config_cls: type[C], recipe_path: str | Path | None, sets: list[str] | None, *,
                runs: int, train_fn: Callable[[RunContext], dict], summarize: Callable[[list[dict]], dict],
                out: str | Path | None = None, resume: ResumeMode = None, device: str | None = None,
                seed: int | None = None, sample: SampleSource | None = None, overwrite: bool = False) -> dict:
    """Train ``runs`` runs with seeds ``seed, seed + 1, ...`` under ``<out>/run-<i>/`` and write
    ``<out>/summary.json`` with ``summarize(results)`` (mean ± std as the literature reports)."""
    cfg, recipe = load_config(task, config_cls, recipe_path, sets, seed=seed, sample=sample)
    if out is not None:
        base = Path(out)
    else:
        base = _claim_new(_default_run_dir(task, recipe)) if dist.is_main() else Path()
        base = dist.broadcast_object(base)
    first_seed = int(getattr(getattr(cfg, "runtime", None), "seed", 0))
    results = []
    for i in range(runs):
        log(f"run {i + 1}/{runs} (seed {first_seed + i})")
        ctx = start_run(task, config_cls, recipe_path, sets, out=base / f"run-{i}", resume=resume, device=device,
                        seed=first_seed + i, sample=sample, overwrite=overwrite)
        results.append(train_fn(ctx))
        release_run(ctx)
    summary = {"run_dir": str(base), **summarize(results)}
    if dist.is_main():
        base.mkdir(parents=True, exist_ok=True)
        (base / "summary.json").write_text(json.dumps(summary, indent=2))
    return summary
