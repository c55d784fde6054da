"""Stages: the recipe schema (``train.stages.<name>`` over ``train.*``), what a stage hands on
(``select: best|last``), skipping finished stages on resume, and the final run folder."""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import ClassVar

import pytest
import torch
from torch import nn

from zsk.core.checkpoint import load_checkpoint
from zsk.core.errors import ZskError
from zsk.core.recipe import RuntimeConfig, parse_config
from zsk.core.run import start_run
from zsk.core.stages import Stage, run_stages, stage_config
from zsk.core.trainer import TrainConfig, Trainer


@dataclass
class TwoStageTrain(TrainConfig):
    STAGES: ClassVar[tuple[str, ...]] = ("first", "second")
    mix: float = 0.5  # a task key, settable per stage


@dataclass
class Config:
    train: TwoStageTrain = field(default_factory=TwoStageTrain)
    runtime: RuntimeConfig = field(default_factory=lambda: RuntimeConfig(device="cpu"))


def test_stage_blocks_inherit_train_and_are_validated() -> None:
    cfg = parse_config(Config, {"train": {"lr": 0.1, "steps": 7, "stages": {"second": {"lr": 0.01, "mix": 0.9,
                                                                                        "select": "last"}}}})
    first, second = stage_config(cfg.train, "first"), stage_config(cfg.train, "second")
    assert (first.lr, first.steps, first.mix, first.select) == (0.1, 7, 0.5, "best")
    assert (second.lr, second.steps, second.mix, second.select) == (0.01, 7, 0.9, "last")
    assert isinstance(second, TwoStageTrain)
    with pytest.raises(ZskError, match=r"unknown stage train.stages.third; stages of this method: first, second"):
        parse_config(Config, {"train": {"stages": {"third": {"lr": 1.0}}}})
    with pytest.raises(ZskError, match=r"train.stages.first.lrr"):
        parse_config(Config, {"train": {"stages": {"first": {"lrr": 1.0}}}})
    with pytest.raises(ZskError, match=r"train.stages.first.lr: expected a number"):
        parse_config(Config, {"train": {"stages": {"first": {"lr": "fast"}}}})
    with pytest.raises(ZskError, match="do not nest"):
        parse_config(Config, {"train": {"stages": {"first": {"stages": {}}}}})
    with pytest.raises(ZskError, match="this method has one stage"):
        parse_config(TrainConfig, {"stages": {"x": {}}})


class Toy(nn.Module):
    """Two parts trained one after the other: ``a`` in stage first, ``b`` in stage second."""

    def __init__(self) -> None:
        super().__init__()
        self.a = nn.Linear(2, 2)
        self.b = nn.Linear(2, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.b(self.a(x))


def _stages(ctx, net: Toy, evals: dict[str, list[float]], fits: list[str]) -> list[Stage]:  # noqa: ANN001
    x = torch.randn(16, 2, generator=torch.Generator().manual_seed(0))
    y = x.sum(1, keepdim=True)

    def build(name: str, part: nn.Module):
        def make(tcfg: TrainConfig) -> Trainer:
            scores = iter(evals[name])

            def eval_fn(m: nn.Module) -> dict[str, float]:
                return {"score": next(scores)}

            trainer = Trainer(ctx, part, tcfg, lambda m, b, s: {"loss": ((net(b[0]) - b[1]) ** 2).mean()},
                              lambda epoch, start: [(x, y)][start:], 1, eval_fn=eval_fn, stage=name)
            original = trainer.fit

            def fit() -> dict:
                fits.append(name)
                return original()

            trainer.fit = fit  # type: ignore[method-assign]
            return trainer
        return make

    return [Stage("first", build("first", net.a)), Stage("second", build("second", net.b))]


def test_two_stages_hand_on_the_selected_weights_and_write_the_run_folder(tmp_path: Path) -> None:
    sets = ["train.steps=4", "train.eval_every=1", "train.lr=0.1", "train.stages.second.select=last"]
    ctx = start_run("toy", Config, None, sets, out=tmp_path / "run")
    net = Toy()
    # first stage: the best score is at step 2 (of evaluations at steps 1, 2, 3 and the final one at 4)
    evals = {"first": [0.1, 0.9, 0.2, 0.3, 0.3], "second": [0.5, 0.6, 0.1, 0.2, 0.2]}
    fits: list[str] = []
    final = run_stages(ctx, _stages(ctx, net, evals, fits), final_model=net, extra={"k": 1},
                       final_eval=lambda m: {"final": 1.0})
    run = tmp_path / "run"
    names = {p.name for p in run.iterdir()}
    assert {"best.pt", "last.pt", "eval.json", "best-first.pt", "last-first.pt", "eval-first.json",
            "last-second.pt", "eval-second.json"} <= names
    assert final == {"final": 1.0} and json.loads((run / "eval.json").read_text()) == {"final": 1.0}
    best_first = load_checkpoint(run / "best-first.pt")
    assert best_first["step"] == 2
    # select: best for the first stage -> its best weights are in the final model
    for k, v in best_first["model"].items():
        assert torch.equal(net.a.state_dict()[k], v)
    # select: last for the second stage -> the final weights of that stage
    last_second = load_checkpoint(run / "last-second.pt")
    for k, v in last_second["model"].items():
        assert torch.equal(net.b.state_dict()[k], v)
    best = load_checkpoint(run / "best.pt")
    assert set(best["model"]) == {"a.weight", "a.bias", "b.weight", "b.bias"} and best["extra"]["k"] == 1
    assert fits == ["first", "second"]


def test_resume_skips_finished_stages(tmp_path: Path) -> None:
    sets = ["train.steps=3", "train.lr=0.1"]
    evals = {"first": [0.1] * 10, "second": [0.2] * 10}
    ctx = start_run("toy", Config, None, sets, out=tmp_path / "run")
    net = Toy()
    fits: list[str] = []
    run_stages(ctx, _stages(ctx, net, evals, fits), final_model=net)
    first_weights = {k: v.clone() for k, v in net.a.state_dict().items()}
    (tmp_path / "run" / "eval-second.json").unlink()  # as if killed during the second stage
    ctx = start_run("toy", Config, None, sets, out=tmp_path / "run", resume=True)
    again = Toy()
    fits.clear()
    run_stages(ctx, _stages(ctx, again, evals, fits), final_model=again)
    assert fits == ["second"]  # the first stage is not trained again, its weights are restored
    for k, v in first_weights.items():
        assert torch.equal(again.a.state_dict()[k], v)


def test_a_one_stage_method_gets_its_files_from_the_trainer(tmp_path: Path) -> None:
    ctx = start_run("toy", Config, None, ["train.steps=2"], out=tmp_path / "run")
    net = nn.Linear(2, 1)
    x = torch.randn(4, 2)

    def build(tcfg: TrainConfig) -> Trainer:
        return Trainer(ctx, net, tcfg, lambda m, b, s: {"loss": m(b).square().mean()}, lambda e, s: [x][s:], 1,
                       eval_fn=lambda m: {"score": 1.0})

    run_stages(ctx, [Stage("", build)])
    assert {"best.pt", "last.pt", "eval.json"} <= {p.name for p in (tmp_path / "run").iterdir()}


@pytest.mark.parametrize("select", ["best", "last"])
def test_a_one_stage_method_honours_select(tmp_path: Path, select: str) -> None:
    """select: best keeps the weights of the best evaluation in best.pt; select: last puts the final ones there."""
    ctx = start_run("toy", Config, None, ["train.steps=3", "train.eval_every=1", f"train.select={select}"],
                    out=tmp_path / "run")
    net = nn.Linear(2, 1)
    x = torch.randn(4, 2)
    scores = iter([0.9, 0.1, 0.2])  # the first evaluation is the best

    def build(tcfg: TrainConfig) -> Trainer:
        return Trainer(ctx, net, tcfg, lambda m, b, s: {"loss": m(b).square().mean()}, lambda e, s: [x][s:], 1,
                       eval_fn=lambda m: {"score": next(scores)})

    run_stages(ctx, [Stage("", build)])
    best, last = (load_checkpoint(tmp_path / "run" / f"{n}.pt") for n in ("best", "last"))
    assert last["step"] == 3 and best["step"] == (1 if select == "best" else 3)
    assert all(torch.equal(best["model"][k], last["model"][k]) for k in last["model"]) == (select == "last")


def test_a_stage_stopped_early_is_continued_on_resume(tmp_path: Path) -> None:
    evals = {"first": [0.1] * 10, "second": [0.2] * 10}
    ctx = start_run("toy", Config, None, ["train.steps=3", "train.max_steps=1"], out=tmp_path / "run")
    net = Toy()
    fits: list[str] = []
    run_stages(ctx, _stages(ctx, net, evals, fits), final_model=net)
    # the same run resumed without max_steps: both stages stopped at step 1 of 3 and must go on
    ctx = start_run("toy", Config, None, ["train.steps=3"], out=tmp_path / "run", resume=True)
    fits.clear()
    run_stages(ctx, _stages(ctx, Toy(), evals, fits), final_model=net)
    assert fits == ["first", "second"]
    assert load_checkpoint(tmp_path / "run" / "last-first.pt")["step"] == 3
