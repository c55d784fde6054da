"""Every mounted task implements the task contract of zsk/core/task.py: the same modules, functions
with the protocol's signatures (task options keyword-only, with the declared defaults), the generated
verbs, demo recipes on the embedded sample data, paper recipes built from ``_base`` blocks, ``info``
without data, and a bench step through the real Trainer."""

from __future__ import annotations

import importlib
import importlib.util
import inspect
import json
from pathlib import Path

import pytest
import torch
import yaml
from typer.testing import CliRunner

from zsk.cli import app, available_tasks, task_of
from zsk.core.bench import BenchSpec, trainer_step
from zsk.core.recipe import load_recipe, parse_config, recipes_dir
from zsk.core.task import MODULE_OF, Task, TaskModules
from zsk.core.trainer import TrainConfig

TASKS = available_tasks()
MODULES = ("config", "model", "losses", "data", "train", "evaluate", "predict", "hooks", "cli")
P = inspect.Parameter


def test_all_eleven_tasks_are_mounted() -> None:
    assert set(TASKS) == {"segment", "retrieve", "sbir", "css", "refer", "fakenews", "adapt", "contrast", "medseg",
                          "gzsl", "hsi"}


@pytest.mark.parametrize("task", TASKS)
def test_every_task_has_the_same_modules(task: str) -> None:
    for name in MODULES:
        assert importlib.util.find_spec(f"zsk.tasks.{task}.{name}") is not None, f"{task} has no {name}.py"
    assert importlib.util.find_spec(f"zsk.tasks.{task}.pipeline") is None, f"{task} still has pipeline.py"
    definition = task_of(task)
    assert isinstance(definition, TaskModules) and isinstance(definition, Task)
    assert definition.name == task and definition.package == f"zsk.tasks.{task}"
    assert definition.stdin in ("paths", "texts", "bytes")
    assert "Config" in vars(importlib.import_module(f"zsk.tasks.{task}.config"))


def _params(fn) -> list[inspect.Parameter]:  # noqa: ANN001
    return list(inspect.signature(fn).parameters.values())


def _check(fn, positional: list[tuple[str, object]], options) -> None:  # noqa: ANN001
    """``fn`` takes exactly ``positional`` (name, default) then the task's options, keyword-only."""
    params = _params(fn)
    head = [(p.name, p.default) for p in params[: len(positional)]]
    expected = [(name, P.empty if default is P.empty else default) for name, default in positional]
    assert head == expected, f"{fn.__module__}.{fn.__name__}{inspect.signature(fn)}: expected {expected}"
    assert all(p.kind in (P.POSITIONAL_ONLY, P.POSITIONAL_OR_KEYWORD) for p in params[: len(positional)])
    rest = params[len(positional):]
    assert [(p.name, p.default, p.kind) for p in rest] == [(o.name, o.default, P.KEYWORD_ONLY) for o in options], (
        f"{fn.__module__}.{fn.__name__}: task options must be keyword-only with the declared defaults")


@pytest.mark.parametrize("task", TASKS)
def test_protocol_functions_have_the_contracts_signatures(task: str) -> None:
    d = task_of(task)
    fn = {name: getattr(importlib.import_module(f"zsk.tasks.{task}.{module}"), name)
          for name, module in MODULE_OF.items()}
    _check(fn["train"], [("ctx", P.empty)], ())
    _check(fn["load"], [("checkpoint", P.empty), ("sets", None), ("device", None), ("recipe", None)], ())
    _check(fn["evaluate"], [("loaded", P.empty), ("split", None), ("out", None)], d.eval_options)
    _check(fn["predict"], [("loaded", P.empty), ("inputs", P.empty), ("out", P.empty)], d.predict_options)
    _check(fn["info"], [("cfg", P.empty)], ())
    bench = _params(fn["bench_spec"])
    assert [p.name for p in bench[:3]] == ["cfg", "device", "batch_size"]
    assert all(p.default is not P.empty for p in bench[3:])  # extra bench arguments need defaults
    _check(fn["demo"], [("workdir", P.empty), ("device", P.empty)], ())
    _check(fn["sample"], [("out", P.empty), ("seed", 0)], d.sample_options)
    _check(fn["sample_data"], [("root", P.empty)], ())


def test_check_helper_catches_a_wrong_signature() -> None:
    def evaluate(loaded, split=None, out=None, scale=1.0):  # noqa: ANN001, ANN202 - option not keyword-only
        return {}

    from zsk.core.task import Option

    with pytest.raises(AssertionError):
        _check(evaluate, [("loaded", P.empty), ("split", None), ("out", None)], [Option("scale", float, 1.0)])


@pytest.mark.parametrize("task", TASKS)
def test_the_common_verbs_are_generated(task: str) -> None:
    result = CliRunner().invoke(app, [task, "--help"])
    assert result.exit_code == 0, result.output
    for verb in ("train", "eval", "predict", "info", "sample"):
        assert verb in result.output
    train_help = CliRunner().invoke(app, [task, "train", "--help"]).output
    for option in ("--recipe", "--set", "--out", "--resume", "--device", "--seed", "--runs", "--json"):
        assert option in train_help, (task, option)
    eval_help = CliRunner().invoke(app, [task, "eval", "--help"]).output
    for option in ("--checkpoint", "--split", "--out"):
        assert option in eval_help, (task, option)


@pytest.mark.parametrize("task", TASKS)
def test_demo_recipe_runs_on_the_embedded_sample(task: str) -> None:
    raw = yaml.safe_load((recipes_dir() / task / "demo.yaml").read_text())
    assert raw["data"]["root"] == "@sample", f"{task}/demo.yaml must use data.root: '@sample'"


def _paper_recipes() -> list[Path]:
    return sorted(p for p in recipes_dir().glob("*/*.yaml") if not p.parent.name.startswith("_") and p.stem != "demo")


def test_base_blocks_are_one_level_deep() -> None:
    blocks = sorted((recipes_dir() / "_base").glob("*.yaml"))
    assert blocks, "recipes/_base/ holds the shared blocks"
    for block in blocks:
        assert "base" not in (yaml.safe_load(block.read_text()) or {}), f"{block.name}: _base blocks do not inherit"


@pytest.mark.parametrize("recipe", _paper_recipes(), ids=lambda p: f"{p.parent.name}/{p.stem}")
def test_paper_recipes_inherit_only_from_base_blocks(recipe: Path) -> None:
    raw = yaml.safe_load(recipe.read_text()) or {}
    bases = raw.get("base", [])
    bases = [bases] if isinstance(bases, str) else list(bases)
    for b in bases:
        assert (recipe.parent / b).resolve().parent == (recipes_dir() / "_base").resolve(), (
            f"{recipe}: base {b} is not a recipes/_base/ block")
    task = recipe.parent.name
    parse_config(task_of(task).Config, load_recipe(recipe))  # and it is a valid recipe of its task


@pytest.mark.parametrize("task", TASKS)
def test_info_json_needs_no_data(task: str, tmp_path, monkeypatch) -> None:  # noqa: ANN001
    monkeypatch.chdir(tmp_path)  # no dataset under the recipe's data.root
    result = CliRunner().invoke(app, [task, "info", "--recipe", f"{task}/demo", "--json", "--quiet"])
    assert result.exit_code == 0, result.output
    info = json.loads(result.stdout.strip().splitlines()[-1])
    assert info["params_total"] >= info["params_trainable"] > 0
    assert info["gflops"] > 0
    assert not list(tmp_path.iterdir())  # info wrote nothing


@pytest.mark.parametrize("task", TASKS)
def test_bench_times_the_trainers_step_on_the_demo_recipe(task: str) -> None:
    """bench's train step is the Trainer's: one call is one optimizer step with the recipe's optimizer
    that changes the weights (inference timing is each task's own test: it is slow at paper sizes)."""
    d = task_of(task)
    cfg = parse_config(d.Config, load_recipe(f"{task}/demo", ["runtime.device=cpu"]))
    spec = d.bench_spec(cfg, torch.device("cpu"), None)
    assert isinstance(spec, BenchSpec) and isinstance(spec.train_cfg, TrainConfig)
    step, trainer = trainer_step(spec, cfg, torch.device("cpu"))
    before = [p.detach().clone() for p in trainer.model.parameters() if p.requires_grad]
    step()
    assert trainer.step == 1 and trainer.cfg.optimizer == spec.train_cfg.optimizer
    expected = {"sgd": torch.optim.SGD, "adam": torch.optim.Adam, "adamw": torch.optim.AdamW}[spec.train_cfg.optimizer]
    assert type(trainer.optimizer) is expected
    after = [p.detach() for p in trainer.model.parameters() if p.requires_grad]
    assert any(not torch.equal(a, b) for a, b in zip(before, after, strict=True))
