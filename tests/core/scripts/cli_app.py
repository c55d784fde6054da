"""A small Typer app built like a task's cli.py (shared options + ``guarded``), for CLI-contract tests.

Commands: ``recipe`` (validate a recipe into a Config), ``ckpt`` (load a checkpoint), ``ok`` (a result on
stdout, a log line on stderr), ``bad`` / ``fail`` / ``crash`` / ``stop`` (ZskError, ZskFailure, an
unexpected exception, Interrupted).
"""

from dataclasses import dataclass, field
from typing import Literal

import typer

from zsk.core.errors import Interrupted, ZskError, ZskFailure
from zsk.core.options import CheckpointOpt, DebugOpt, JsonOpt, OptRecipeOpt, QuietOpt, SetOpt, guarded
from zsk.core.progress import emit_result, log
from zsk.core.recipe import RuntimeConfig

app = typer.Typer(pretty_exceptions_enable=False, no_args_is_help=True)


@dataclass
class DataConfig:
    root: str = "data"
    crop: list[int] = field(default_factory=lambda: [64, 64])
    aug: dict[str, float] = field(default_factory=dict)


@dataclass
class ModelConfig:
    name: Literal["tiny", "base"] = "tiny"
    depth: int = 2
    dropout: float = 0.1


def config_cls() -> type:
    """The Config dataclass (built on demand: TrainConfig imports torch, which most commands here do not need)."""
    from zsk.core.trainer import TrainConfig

    @dataclass
    class Config:
        data: DataConfig = field(default_factory=DataConfig)
        model: ModelConfig = field(default_factory=ModelConfig)
        train: TrainConfig = field(default_factory=TrainConfig)
        runtime: RuntimeConfig = field(default_factory=RuntimeConfig)

    return Config


@app.command()
@guarded
def recipe(recipe: OptRecipeOpt = None, set_: SetOpt = None, debug: DebugOpt = False) -> None:
    """Validate a recipe; print three resolved keys on stdout."""
    from zsk.core.run import load_config

    cfg, _ = load_config("toy", config_cls(), recipe, set_)
    typer.echo(f"lr={cfg.train.lr} batch_size={cfg.train.batch_size} crop={cfg.data.crop}")


@app.command()
@guarded
def ckpt(checkpoint: CheckpointOpt, json_out: JsonOpt = False, debug: DebugOpt = False) -> None:
    """Load a checkpoint and print its step."""
    from zsk.core.checkpoint import load_checkpoint

    state = load_checkpoint(checkpoint)
    emit_result({"step": state.get("step"), "keys": sorted(state)}, json_out)


@app.command()
@guarded
def ok(json_out: JsonOpt = False, quiet: QuietOpt = False) -> None:
    """A result on stdout and a log line on stderr."""
    log("working on it: a log line for stderr only")
    emit_result({"metric": "acc", "value": 0.75, "per_class": [0.5, 1.0]}, json_out, title="result")


@app.command()
@guarded
def bad(debug: DebugOpt = False) -> None:
    """Bad input: exit 2 with one error line even when the message is longer than a terminal."""
    raise ZskError("data.root: /some/very/long/path/that/does/not/exist/on/this/machine/VOC2012 is missing; "
                   "download the dataset or pass --set data.root=/path/to/VOC2012")


@app.command()
@guarded
def fail(debug: DebugOpt = False) -> None:
    """A clear failure: exit 1."""
    raise ZskFailure("training diverged: non-finite loss by step 3")


@app.command()
@guarded
def crash(debug: DebugOpt = False) -> None:
    """An unexpected exception: exit 1, no traceback unless --debug."""
    raise RuntimeError("boom in the middle of something")


@app.command()
@guarded
def stop() -> None:
    """Interrupted by SIGTERM: exit 143."""
    raise Interrupted(143, "stopped by signal 15 at step 4")


if __name__ == "__main__":
    app()
