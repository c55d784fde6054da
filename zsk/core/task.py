"""The task contract: one typed protocol every method implements, and the command line generated from it.

A task package ``zsk/tasks/<task>/`` holds the same modules in every task::

    config.py    Config (data, model, train, eval, runtime)
    model.py     the paper's modules            losses.py   the paper's losses
    data.py      datasets over zsk.data readers, write_sample(...)
    train.py     train(ctx) -> metrics          (model building and the stages)
    evaluate.py  load(checkpoint, ...) -> Loaded, evaluate(loaded, split, out, **options) -> metrics
    predict.py   predict(loaded, inputs, out, **options) -> iterator of result rows
    hooks.py     info(cfg), bench_spec(cfg, device, batch_size), demo(workdir, device),
                 sample(out, seed, **options), sample_data(root) -> recipe overrides
    cli.py       TASK = TaskModules(__package__, ...); app = task_app(TASK); plus the task's own verbs

:class:`TaskModules` implements :class:`Task` by importing those modules on first use, so ``zsk <task>
--help`` does not pay for the task's model code. :func:`task_app` generates ``train``, ``eval``,
``predict``, ``info`` and ``sample`` with the same option names for every task; a task declares only
the extra options of those verbs (:class:`Option`).
"""

from __future__ import annotations

import importlib
import inspect
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from types import ModuleType
from typing import TYPE_CHECKING, Annotated, Any, Literal, Protocol, runtime_checkable

import typer
from typer.core import TyperCommand

from zsk.core.errors import ZskError
from zsk.core.options import (
    CheckpointsOpt,
    DebugOpt,
    DeviceOpt,
    JsonOpt,
    OptRecipeOpt,
    OutOpt,
    QuietOpt,
    RecipeOpt,
    ResumeOpt,
    RunsOpt,
    SeedOpt,
    SetOpt,
    SplitOpt,
    guarded,
)

if TYPE_CHECKING:  # torch stays out of `zsk <task> --help`
    import torch
    from torch import nn

    from zsk.core.bench import BenchSpec
    from zsk.core.io import StdinInput
    from zsk.core.run import RunContext

StdinMode = Literal["paths", "texts", "bytes"]


@dataclass(frozen=True)
class Option:
    """An extra command-line option of a generated verb: ``name`` is the keyword the task's function
    receives, ``annotation`` an ``Annotated[type, typer.Option(...)]``, ``default`` its value when
    not given."""

    name: str
    annotation: Any
    default: Any = None
    recipe_key: str | None = None  # train options: the recipe key a given value overrides (--set KEY=VALUE)


@dataclass
class Loaded:
    """A trained model ready for ``evaluate``/``predict``: the network in eval mode on its device, the
    config it was trained with (plus ``--set`` overrides), the checkpoint's ``extra`` (class names,
    vocabulary, ...) and task-specific ``parts`` (text embeddings, tokenizers, a second network)."""

    model: nn.Module
    cfg: Any
    device: torch.device
    checkpoint: Path
    extra: dict[str, Any] = field(default_factory=dict)
    parts: dict[str, Any] = field(default_factory=dict)


@runtime_checkable
class Task(Protocol):
    """What every task implements; the generic commands, ``zsk demo`` and ``zsk bench`` use only this."""

    name: str
    help: str
    predict_help: str
    input_suffixes: tuple[str, ...]
    stdin: StdinMode
    text_args: bool
    summary_keys: tuple[str, ...]
    eval_options: tuple[Option, ...]
    predict_options: tuple[Option, ...]
    sample_options: tuple[Option, ...]
    train_options: tuple[Option, ...]
    sample_version: str

    @property
    def Config(self) -> type: ...  # noqa: N802 - the task's Config dataclass

    def train(self, ctx: RunContext) -> dict[str, Any]: ...

    def load(self, checkpoint: Path, sets: list[str] | None = None, device: str | None = None,
             recipe: Path | None = None) -> Loaded: ...

    def evaluate(self, loaded: Loaded, split: str | None = None, out: Path | None = None,
                 **options: Any) -> dict[str, Any]: ...

    def predict(self, loaded: Loaded, inputs: Sequence[Path | StdinInput], out: Path,
                **options: Any) -> Iterator[dict[str, Any]]: ...

    def info(self, cfg: Any) -> dict[str, Any]: ...

    def bench_spec(self, cfg: Any, device: torch.device, batch_size: int | None) -> BenchSpec: ...

    def demo(self, workdir: Path, device: str) -> dict[str, Any]: ...

    def sample(self, out: Path, seed: int = 0, **options: Any) -> dict[str, Any]: ...

    def sample_data(self, root: Path) -> dict[str, Any]: ...


# Which module of a task package holds each protocol function (the layout every task shares).
MODULE_OF: dict[str, str] = {
    "train": "train", "load": "evaluate", "evaluate": "evaluate", "predict": "predict", "info": "hooks",
    "bench_spec": "hooks", "demo": "hooks", "sample": "hooks", "sample_data": "hooks",
}


@dataclass
class TaskModules:
    """A :class:`Task` backed by the conventional modules of one task package, imported on first use."""

    package: str
    help: str
    predict_help: str = "Inputs: files, folders, glob patterns, or '-' to read paths from stdin."
    input_suffixes: tuple[str, ...] = ()
    stdin: StdinMode = "paths"
    text_args: bool = False  # predict arguments that name no file are free texts (caption queries)
    summary_keys: tuple[str, ...] = ()
    eval_options: tuple[Option, ...] = ()
    predict_options: tuple[Option, ...] = ()
    sample_options: tuple[Option, ...] = ()
    train_options: tuple[Option, ...] = ()  # each with a recipe_key: given values become --set overrides
    sample_version: str = "1"

    @property
    def name(self) -> str:
        return self.package.rsplit(".", 1)[-1]

    def module(self, name: str) -> ModuleType:
        """The task's module ``name`` (config, train, evaluate, predict, hooks, ...)."""
        return importlib.import_module(f"{self.package}.{name}")

    @property
    def Config(self) -> type:  # noqa: N802
        return self.module("config").Config

    def _fn(self, name: str) -> Callable[..., Any]:
        return getattr(self.module(MODULE_OF[name]), name)

    def train(self, ctx: RunContext) -> dict[str, Any]:
        return self._fn("train")(ctx)

    def load(self, checkpoint: Path, sets: list[str] | None = None, device: str | None = None,
             recipe: Path | None = None) -> Loaded:
        return self._fn("load")(checkpoint, sets, device, recipe)

    def evaluate(self, loaded: Loaded, split: str | None = None, out: Path | None = None, **options: Any) -> dict[str, Any]:
        return self._fn("evaluate")(loaded, split, out, **options)

    def predict(self, loaded: Loaded, inputs: Sequence[Any], out: Path, **options: Any) -> Iterator[dict[str, Any]]:
        return iter(self._fn("predict")(loaded, inputs, out, **options))

    def info(self, cfg: Any) -> dict[str, Any]:
        return self._fn("info")(cfg)

    def bench_spec(self, cfg: Any, device: Any, batch_size: int | None) -> Any:
        return self._fn("bench_spec")(cfg, device, batch_size)

    def demo(self, workdir: Path, device: str) -> dict[str, Any]:
        return self._fn("demo")(workdir, device)

    def sample(self, out: Path, seed: int = 0, **options: Any) -> dict[str, Any]:
        return self._fn("sample")(out, seed, **options)

    def sample_data(self, root: Path) -> dict[str, Any]:
        return self._fn("sample_data")(root)


# ----------------------------------------------------------------------------- shared implementations


def read_trained(task: str, checkpoint: Path, config_cls: type, sets: list[str] | None = None,
                 recipe: Path | None = None) -> tuple[Any, dict]:
    """The first half of every ``load``: read a checkpoint (``weights_only``), refuse one of another task,
    and rebuild the config it was trained with (``--recipe``/``--set`` on top). Returns (cfg, state)."""
    from zsk.core.checkpoint import load_checkpoint
    from zsk.core.run import config_from_checkpoint

    state = load_checkpoint(checkpoint)
    if state.get("task") not in (None, task):
        raise ZskError(f"{checkpoint} is a checkpoint of task {state.get('task')!r}, not {task}: "
                       f"use `zsk {state.get('task')} ...`")
    cfg, _ = config_from_checkpoint(state, config_cls, sets, recipe)
    return cfg, state


def expand_checkpoints(paths: Sequence[Path]) -> list[Path]:
    """``--checkpoint`` values as checkpoint files: a run folder stands for its ``best.pt``, a ``--runs``
    folder for every ``run-<i>/best.pt`` in it (so ``eval -c RUNS`` gives mean ± std over the seeds)."""
    out: list[Path] = []
    for p in map(Path, paths):
        if not p.is_dir():
            out.append(p)
        elif (p / "best.pt").is_file():
            out.append(p / "best.pt")
        elif runs := sorted(p.glob("run-*/best.pt"), key=lambda r: int(r.parent.name.split("-")[-1])
                            if r.parent.name.split("-")[-1].isdigit() else 0):
            out.extend(runs)
        else:
            raise ZskError(f"{p}: a folder with neither best.pt nor run-*/best.pt; pass a checkpoint written by train")
    return out


def loaded_model(model: nn.Module, cfg: Any, state: dict, checkpoint: Path, device: str | None,
                 parts: dict[str, Any] | None = None) -> Loaded:
    """The second half: the model in eval mode on the resolved device, as a :class:`Loaded`."""
    from zsk.core.device import resolve_device

    dev = resolve_device(device, cfg.runtime.device)
    return Loaded(model=model.to(dev).eval(), cfg=cfg, device=dev, checkpoint=Path(checkpoint),
                  extra=dict(state.get("extra") or {}), parts=dict(parts or {}))


def load_trained(task: str, checkpoint: Path, config_cls: type, build: Callable[[Any], nn.Module],
                 sets: list[str] | None = None, device: str | None = None, recipe: Path | None = None,
                 exclude_prefixes: tuple[str, ...] = ()) -> tuple[Loaded, dict]:
    """The usual ``load``: :func:`read_trained`, the model from ``build(cfg)``, its weights loaded strictly
    (``exclude_prefixes``: frozen pretrained parts that ``build`` loaded itself), :func:`loaded_model`.
    Returns the :class:`Loaded` and the raw checkpoint dict."""
    from zsk.core.checkpoint import load_model_state

    cfg, state = read_trained(task, checkpoint, config_cls, sets, recipe)
    model = build(cfg)
    load_model_state(model, state["model"], exclude_prefixes, source=str(checkpoint))
    return loaded_model(model, cfg, state, checkpoint, device), state


def run_demo(task: Task, workdir: Path, device: str, metric: str,
             inputs: Callable[[Loaded, dict[str, Any]], Sequence[Any]], sets: Sequence[str] = (),
             split: str | None = None) -> dict[str, Any]:
    """What ``zsk demo <task>`` does for most tasks: train ``<task>/demo`` on the embedded sample data
    (generated into the cache on first use), evaluate ``best.pt`` and predict ``inputs(loaded, data)``
    (``data``: the recipe's resolved ``data`` section). Returns ``{"metric", "value"}``."""
    from zsk.core.run import start_run

    workdir = Path(workdir)
    ctx = start_run(task.name, task.Config, f"{task.name}/demo", list(sets), out=workdir / "run", device=device,
                    sample=task)
    task.train(ctx)
    loaded = task.load(ctx.run_dir / "best.pt", device=device)
    result = task.evaluate(loaded, split, workdir / "eval")
    for _ in task.predict(loaded, inputs(loaded, ctx.recipe.get("data") or {}), workdir / "pred"):
        pass
    return {"metric": metric, "value": result[metric]}


# ----------------------------------------------------------------------------- the generated commands


class _ResumeCommand(TyperCommand):
    """A command whose ``--resume`` takes an optional value: ``--resume`` alone means ``strict``
    (continue from last.pt, fail without one), ``--resume auto`` continues when last.pt exists and
    starts fresh otherwise."""

    def parse_args(self, ctx: Any, args: list[str]) -> list[str]:
        args = list(args)
        for i, arg in enumerate(args):
            if arg == "--":
                break
            if arg == "--resume" and (i + 1 == len(args) or args[i + 1] not in ("auto", "strict")):
                args.insert(i + 1, "strict")
        return super().parse_args(ctx, args)


def _command(fn: Callable[..., Any], name: str, doc: str, common: list[inspect.Parameter],
             extras: Sequence[Option]) -> Callable[..., Any]:
    """``fn(**kwargs)`` with a signature of the common parameters plus the task's extra options, so
    Typer builds the options from it."""
    params = list(common)
    names = {p.name for p in params}
    for opt in extras:
        if opt.name in names:
            raise ValueError(f"task option {opt.name!r} clashes with a common option of `{name}`")
        params.append(inspect.Parameter(opt.name, inspect.Parameter.KEYWORD_ONLY, default=opt.default,
                                        annotation=opt.annotation))
    # positional arguments first (Python requires parameters without defaults before the others)
    params.sort(key=lambda p: (p.kind, p.default is not inspect.Parameter.empty))
    params = [p.replace(kind=inspect.Parameter.KEYWORD_ONLY) for p in params]

    def command(**kwargs: Any) -> Any:
        return fn(**kwargs)

    command.__name__ = name
    command.__doc__ = doc
    command.__signature__ = inspect.Signature(params)  # type: ignore[attr-defined]
    command.__annotations__ = {p.name: p.annotation for p in params}
    return guarded(command)


OverwriteOpt = Annotated[bool, typer.Option("--overwrite", help="Replace the run already in --out (it is deleted) "
                                            "instead of refusing; --resume continues it instead.")]
EvalOutOpt = Annotated[Path | None, typer.Option("--out", "-o", help="Also save the full result (JSON, and any "
                                                "files the task writes) in this folder; eval writes nothing else.")]


def _p(name: str, annotation: Any, default: Any = inspect.Parameter.empty) -> inspect.Parameter:
    return inspect.Parameter(name, inspect.Parameter.KEYWORD_ONLY, default=default, annotation=annotation)


def _pick(kwargs: dict[str, Any], options: Sequence[Option]) -> dict[str, Any]:
    return {o.name: kwargs[o.name] for o in options}


def _with_status(task: Task, recipe: str | None) -> Callable[[RunContext], dict[str, Any]]:
    """``task.train`` that records the run in ``RUN/status.json`` (rank 0): running, then finished,
    interrupted (with the exit code the signal gives) or failed (with the error), for ``zsk runs``."""
    from zsk.core.errors import Interrupted
    from zsk.core.runs import write_status

    def train(ctx: RunContext) -> dict[str, Any]:
        main = ctx.dist.is_main
        if main:
            write_status(ctx.run_dir, "running", task=task.name, recipe=recipe, seed=int(ctx.cfg.runtime.seed))
        try:
            metrics = task.train(ctx)
        except Interrupted as e:
            if main:
                write_status(ctx.run_dir, "interrupted", exit_code=e.exit_code)
            raise
        except BaseException as e:
            if main and ctx.run_dir.is_dir():
                write_status(ctx.run_dir, "failed", exit_code=2 if isinstance(e, ZskError) else 1,
                             error=f"{type(e).__name__}: {e}"[:500])
            raise
        if main:
            write_status(ctx.run_dir, "finished", exit_code=0)
        return metrics

    return train


def _option_sets(kw: dict[str, Any], options: tuple[Option, ...]) -> list[str]:
    """``--set key=value`` overrides for the train options given on the command line (``None`` = not given)."""
    import json

    sets = []
    for opt in options:
        if opt.recipe_key is None:
            raise TypeError(f"train option {opt.name!r} needs a recipe_key")
        if kw.get(opt.name) is not None:
            sets.append(f"{opt.recipe_key}={json.dumps(kw[opt.name])}")
    return sets


def task_app(task: Task, docs: dict[str, str] | None = None) -> typer.Typer:
    """The Typer app of a task with the common verbs generated from its :class:`Task`; ``docs`` may
    give a verb's one-line help in the task's words. The task's ``cli.py`` adds its own verbs to it."""
    docs = docs or {}
    app = typer.Typer(name=task.name, help=task.help, no_args_is_help=True, pretty_exceptions_enable=False)
    flags = [_p("json_out", JsonOpt, False), _p("quiet", QuietOpt, False), _p("debug", DebugOpt, False)]

    def train(**kw: Any) -> None:
        from zsk.core import dist
        from zsk.core.progress import emit_result
        from zsk.core.run import release_run, start_run, train_seeds
        from zsk.metrics.summary import summarize_runs

        kw["set_"] = [*(kw["set_"] or []), *_option_sets(kw, task.train_options)] or None
        train_fn = _with_status(task, str(kw["recipe"]) if kw["recipe"] is not None else None)
        if kw["runs"] == 1:
            ctx = start_run(task.name, task.Config, kw["recipe"], kw["set_"], out=kw["out"], resume=kw["resume"],
                            device=kw["device"], seed=kw["seed"], sample=task, overwrite=kw["overwrite"])
            metrics = train_fn(ctx)
            release_run(ctx)
            dist.cleanup()  # leave the process group together (under torchrun)
            if ctx.dist.is_main:  # one result line under torchrun
                emit_result({"run_dir": str(ctx.run_dir), **metrics}, kw["json_out"], title=f"{task.name} train")
            return
        result = train_seeds(task.name, task.Config, kw["recipe"], kw["set_"], runs=kw["runs"], train_fn=train_fn,
                             summarize=lambda rows: summarize_runs(rows, task.summary_keys or _scalar_keys(rows)),
                             out=kw["out"], resume=kw["resume"], device=kw["device"], seed=kw["seed"],
                             sample=task, overwrite=kw["overwrite"])
        main = dist.is_main()
        dist.cleanup()
        if main:
            emit_result(result, kw["json_out"], title=f"{task.name} train: {kw['runs']} runs")

    app.command("train", cls=_ResumeCommand)(_command(
        train, "train", docs.get("train", "Train with a recipe; writes RUN/best.pt, RUN/last.pt, RUN/eval.json."),
        [_p("recipe", RecipeOpt), _p("set_", SetOpt, None), _p("out", OutOpt, None), _p("resume", ResumeOpt, None),
         _p("overwrite", OverwriteOpt, False), _p("device", DeviceOpt, None), _p("seed", SeedOpt, None), _p("runs", RunsOpt, 1), *flags],
        task.train_options))

    def eval_(**kw: Any) -> None:
        from zsk.core import dist
        from zsk.core.progress import emit_result
        from zsk.metrics.summary import summarize_runs

        options = _pick(kw, task.eval_options)
        _check_out_folder(kw["out"])
        checkpoints = expand_checkpoints(kw["checkpoint"])
        several = len(checkpoints) > 1
        results = []
        for i, ckpt in enumerate(checkpoints):
            loaded = task.load(ckpt, kw["set_"], kw["device"], kw["recipe"])
            # with several checkpoints, each one's files go to OUT/<i>/ (nothing overwrites another's)
            out = kw["out"] / str(i) if several and kw["out"] is not None else kw["out"]
            results.append(task.evaluate(loaded, kw["split"], out, **options))
        if not dist.is_main():
            return
        if not several:
            _save_json(kw["out"], "eval.json", results[0])
            emit_result(results[0], kw["json_out"], title=f"{task.name} eval")
            return
        shared = {k: v for k, v in results[0].items() if isinstance(v, str) and all(r.get(k) == v for r in results)}
        summary = {**shared, "checkpoints": [str(c) for c in checkpoints],
                   **summarize_runs(results, task.summary_keys or _scalar_keys(results))}
        for i, r in enumerate(results):
            _save_json(kw["out"] / str(i) if kw["out"] is not None else None, "eval.json",
                       {"checkpoint": str(checkpoints[i]), **r})
        _save_json(kw["out"], "eval-summary.json", summary)
        emit_result(summary, kw["json_out"], title=f"{task.name} eval: mean ± std over {len(results)} checkpoints")

    app.command("eval")(_command(
        eval_, "eval", docs.get("eval", "Evaluate a checkpoint (several: mean ± std over them) on a split."),
        [_p("checkpoint", CheckpointsOpt), _p("recipe", OptRecipeOpt, None), _p("set_", SetOpt, None),
         _p("split", SplitOpt, None), _p("out", EvalOutOpt, None), _p("device", DeviceOpt, None), *flags],
        task.eval_options))

    def predict(**kw: Any) -> None:
        from zsk.core.io import expand_inputs
        from zsk.core.progress import emit_result, log

        _check_out_folder(kw["out"])
        inputs = expand_inputs(kw["inputs"], suffixes=task.input_suffixes, stdin=task.stdin, text_args=task.text_args)
        (checkpoint,) = expand_checkpoints([kw["checkpoint"]])[:1] or [kw["checkpoint"]]
        loaded = task.load(checkpoint, kw["set_"], kw["device"], None)
        out = kw["out"] if kw["out"] is not None else Path("predictions")
        for row in task.predict(loaded, inputs, out, **_pick(kw, task.predict_options)):
            emit_result(row, kw["json_out"], title=str(row.get("input", task.name)))
        log(f"predictions written to {out}")

    from zsk.core.options import CheckpointOpt

    app.command("predict")(_command(
        predict, "predict", docs.get("predict", "Predict on new inputs with a trained checkpoint."),
        [_p("inputs", Annotated[list[str], typer.Argument(help=task.predict_help)]), _p("checkpoint", CheckpointOpt),
         _p("out", OutOpt, None), _p("set_", SetOpt, None), _p("device", DeviceOpt, None), *flags],
        task.predict_options))

    def info(**kw: Any) -> None:
        from zsk.core.progress import emit_result
        from zsk.core.run import load_config

        cfg, _ = load_config(task.name, task.Config, kw["recipe"], kw["set_"])  # info needs no data
        emit_result(task.info(cfg), kw["json_out"], title=f"{task.name} info")

    app.command("info")(_command(
        info, "info", docs.get("info", "Classes, splits, parameter counts and GFLOPs of a recipe's model."),
        [_p("recipe", RecipeOpt), _p("set_", SetOpt, None), *flags], ()))

    def sample(**kw: Any) -> None:
        from zsk.core.io import output_folder
        from zsk.core.progress import emit_result

        seed = kw["seed"] if kw["seed"] is not None else 0
        out = output_folder(kw["out_dir"], "sample folder")  # a file or an unwritable place: exit 2
        try:
            result = task.sample(out, seed, **_pick(kw, task.sample_options))
        except OSError as e:
            raise ZskError(f"sample folder {out}: cannot write the sample there ({e.strerror or e})") from None
        emit_result(result, kw["json_out"], title=f"{task.name} sample")

    app.command("sample")(_command(
        sample, "sample", docs.get("sample", "Write the synthetic sample set in the benchmark's on-disk layout."),
        [_p("out_dir", Annotated[Path, typer.Argument(help="Folder to write the sample data into.")]),
         _p("seed", SeedOpt, None), *flags], task.sample_options))
    return app


def _check_out_folder(folder: Path | None) -> None:
    """``--out`` of eval/predict must be a folder (or not exist yet): a file is a usage error."""
    if folder is not None and Path(folder).exists() and not Path(folder).is_dir():
        raise ZskError(f"--out {folder} is a file; give a folder for the outputs")


def _save_json(folder: Path | None, name: str, obj: dict[str, Any]) -> None:
    """``eval --out DIR``: keep the full result as ``DIR/name`` (written atomically)."""
    if folder is None:
        return
    import json

    from zsk.core.io import atomic_open

    with atomic_open(Path(folder) / name, "w") as f:
        f.write(json.dumps(obj, indent=2, default=float))


def _scalar_keys(results: Sequence[dict[str, Any]]) -> tuple[str, ...]:
    """Keys whose values are numbers in the first result (what mean ± std is taken of by default)."""
    first = results[0] if results else {}
    return tuple(k for k, v in first.items() if isinstance(v, (int, float)) and not isinstance(v, bool))
