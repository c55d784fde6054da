"""Methods trained in several stages (hsi piecewise -> refine, gzsl propagate -> finetune, fakenews
branches -> fusion, segment inductive -> self-training) declare them as a list of :class:`Stage`.

One recipe schema for all of them: ``train.stages.<name>:`` blocks override ``train.*`` for that
stage (validated when the recipe is read), and ``select: best|last`` says which weights a stage hands
on. :func:`run_stages` runs the stages in order, skips finished ones on ``--resume``, and writes the
run folder every task has: ``best.pt``, ``last.pt`` and ``eval.json`` for the final model.
"""

from __future__ import annotations

import dataclasses
import json
import shutil
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from torch import nn

from zsk.core import dist
from zsk.core.checkpoint import load_checkpoint, load_model_state
from zsk.core.errors import ZskError
from zsk.core.io import atomic_path
from zsk.core.progress import log

if TYPE_CHECKING:
    from zsk.core.run import RunContext
    from zsk.core.trainer import TrainConfig, Trainer


def export_checkpoint(*args: Any, **kwargs: Any) -> None:
    from zsk.core.trainer import export_checkpoint as export

    export(*args, **kwargs)


def validate_stage_blocks(train: TrainConfig) -> None:
    """Check every ``train.stages.<name>`` block: a stage of this method, and keys of ``train.*`` with
    the right types (``ZskError`` naming the key otherwise)."""
    names = type(train).STAGES
    for name, block in train.stages.items():
        if name not in names:
            valid = ", ".join(names) if names else "none (this method has one stage)"
            raise ZskError(f"unknown stage train.stages.{name}; stages of this method: {valid}")
        if not isinstance(block, dict):
            raise ZskError(f"train.stages.{name}: expected a section (mapping), got {block!r}")
        if "stages" in block:
            raise ZskError(f"train.stages.{name}.stages: stages do not nest; set the stage's keys directly")
        stage_config(train, name)


def stage_config(train: TrainConfig, name: str) -> TrainConfig:
    """The settings stage ``name`` runs with: ``train.*``, then the method's own defaults for that stage
    (``TrainConfig.STAGE_DEFAULTS[name]``), then the recipe's ``train.stages.<name>`` block."""
    from zsk.core.recipe import config_to_dict, parse_config

    block = {**type(train).STAGE_DEFAULTS.get(name, {}), **(train.stages.get(name) or {})}
    if not block:
        return train
    base = {f.name: getattr(train, f.name) for f in dataclasses.fields(train) if f.init and f.name != "stages"}
    # a stage's own settings hold no stage blocks (a TrainConfig with default blocks would recurse)
    merged = {**config_to_dict(base), **block, "stages": {}}
    try:
        return parse_config(type(train), merged, prefix=f"train.stages.{name}")
    except ZskError as e:  # range checks name `train.<key>`: say which stage's setting it is
        msg = str(e)
        here = f"train.stages.{name}."
        key = msg[len("train."):].split(" ", 1)[0].split(".", 1)[0].rstrip(":") if msg.startswith("train.") else ""
        if key in block and not msg.startswith(here):  # the stage's own setting is wrong, not train.*
            msg = msg.replace("train.", here, 1)
        raise ZskError(msg) from None


@dataclass
class Stage:
    """One stage: its name (``train.stages.<name>``; "" for a one-stage method) and ``build``, which
    makes the stage's :class:`Trainer` (with ``stage=name``) from the stage's settings."""

    name: str
    build: Callable[[TrainConfig], Trainer]


def run_stages(ctx: RunContext, stages: Sequence[Stage], *, final_model: nn.Module | None = None,
               extra: dict | None = None, exclude_prefixes: tuple[str, ...] = (),
               final_eval: Callable[[nn.Module], dict[str, Any]] | None = None) -> dict[str, Any]:
    """Run ``stages`` in order and return the final model's metrics.

    Each stage trains with :func:`stage_config`; a stage whose ``eval-<name>.json`` exists and whose
    ``last-<name>.pt`` reached the stage's last step is finished and, on ``--resume``, is skipped. After a stage, the weights its ``select`` names (``best-<name>.pt``
    or ``last-<name>.pt``) are loaded into its model before the next stage starts. A one-stage method
    (``Stage("", ...)``) gets ``best.pt``/``last.pt``/``eval.json`` from its Trainer; a multi-stage one
    gets them from ``final_model`` (the module holding every stage's parts) after the last stage:
    ``last.pt`` with the last stage's final weights, ``best.pt`` with the selected ones, and
    ``eval.json`` from ``final_eval`` (or the last stage's own summary).
    """
    if not stages:
        raise ValueError("run_stages needs at least one stage")
    if len(stages) == 1 and stages[0].name == "":
        trainer = stages[0].build(ctx.cfg.train)
        metrics = trainer.fit()
        if ctx.cfg.train.select == "last" and dist.is_main():
            # best.pt holds the final weights (an unbiased run: nothing chosen on the evaluation split)
            with atomic_path(trainer.best_path) as tmp:
                shutil.copyfile(trainer.last_path, tmp)
        dist.barrier()
        return metrics
    if any(s.name == "" for s in stages):
        raise ValueError("every stage of a multi-stage method needs a name")
    if final_model is None:
        raise ValueError("a multi-stage method must pass final_model (what best.pt holds)")
    metrics: dict[str, Any] = {}
    trainer: Trainer | None = None
    for stage in stages:
        cfg = stage_config(ctx.cfg.train, stage.name)
        trainer = stage.build(cfg)
        if trainer.stage != stage.name:
            raise ValueError(f"stage {stage.name!r} built a Trainer for stage {trainer.stage!r}")
        if ctx.resume and _finished(trainer):
            log(f"stage {stage.name} finished earlier: skipped")
            metrics = json.loads((ctx.run_dir / f"eval-{stage.name}.json").read_text(encoding="utf-8"))
        else:
            metrics = trainer.fit()
        if stage is stages[-1]:
            _restore(trainer, trainer.last_path)
            export_checkpoint(ctx, final_model, ctx.run_dir / "last.pt", {**trainer.extra, **(extra or {})},
                              metrics, exclude_prefixes)
        chosen = trainer.best_path if cfg.select == "best" and trainer.best_path.is_file() else trainer.last_path
        _restore(trainer, chosen)
        log(f"stage {stage.name}: handing on {chosen.name}")
    assert trainer is not None
    final = final_eval(final_model) if final_eval is not None else metrics
    export_checkpoint(ctx, final_model, ctx.run_dir / "best.pt", {**trainer.extra, **(extra or {})}, final,
                      exclude_prefixes)
    if dist.is_main():
        (ctx.run_dir / "eval.json").write_text(json.dumps(final, indent=2, default=float))
    dist.barrier()
    return final


def _finished(trainer: Trainer) -> bool:
    """A stage is finished when it wrote its summary and its last checkpoint reached the stage's end
    (a stage stopped early by ``train.max_steps`` and resumed with a longer schedule goes on)."""
    summary = trainer.ctx.run_dir / f"eval-{trainer.stage}.json"
    if not (summary.is_file() and trainer.last_path.is_file()):
        return False
    return int(load_checkpoint(trainer.last_path).get("step", 0)) >= trainer.stop_at


def _restore(trainer: Trainer, path: Any) -> None:
    state = load_checkpoint(path)
    load_model_state(trainer.model, state["model"], trainer.exclude_prefixes, source=str(path))
