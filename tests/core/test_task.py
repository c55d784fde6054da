"""The task contract: verbs generated from a Task (train --runs / --resume [auto], eval over several
checkpoints, predict input expansion, info, sample), ``data.root: "@sample"`` and ``expand_inputs``."""

from __future__ import annotations

import io
import json
import sys
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Annotated, Any

import pytest
import torch
import typer
from torch import nn
from typer.testing import CliRunner

from zsk.core.errors import ZskError
from zsk.core.io import StdinInput, expand_inputs
from zsk.core.recipe import RuntimeConfig
from zsk.core.run import RunContext, load_config, start_run
from zsk.core.stages import Stage, run_stages
from zsk.core.task import Loaded, Option, Task, load_trained, task_app
from zsk.core.trainer import TrainConfig, Trainer


@dataclass
class DataConfig:
    root: str = "data/toy"
    offset: float = 0.0


@dataclass
class ToyTrain(TrainConfig):
    steps: int | None = 3
    lr: float = 0.1
    log_every: int = 1


@dataclass
class Config:
    data: DataConfig = field(default_factory=DataConfig)
    train: ToyTrain = field(default_factory=ToyTrain)
    runtime: RuntimeConfig = field(default_factory=lambda: RuntimeConfig(device="cpu"))


def build_model(cfg: Config) -> nn.Module:
    return nn.Linear(1, 1)


class ToyTask:
    """A minimal task implementing the protocol directly (not through TaskModules)."""

    name = "toy"
    help = "A toy task."
    predict_help = "Text files or '-'."
    input_suffixes = (".txt",)
    stdin = "paths"
    text_args = False
    summary_keys = ("score",)
    eval_options = (Option("scale", Annotated[float, typer.Option("--scale", help="Multiply the score.")], 1.0),)
    predict_options = (Option("upper", Annotated[bool, typer.Option("--upper")], False),)
    sample_options = (Option("count", Annotated[int, typer.Option("--count")], 2),)
    train_options = (Option("offset", Annotated[float | None, typer.Option("--offset")], None, recipe_key="data.offset"),)
    sample_version = "1"
    Config = Config

    def __init__(self) -> None:
        self.sample_calls = 0

    def train(self, ctx: RunContext) -> dict[str, Any]:
        x = torch.linspace(-1, 1, 8)[:, None]

        def build(tcfg: TrainConfig) -> Trainer:
            return Trainer(ctx, build_model(ctx.cfg), tcfg, lambda m, b, s: {"loss": (m(b) - 2 * b).square().mean()},
                           lambda e, s: [x][s:], 1, eval_fn=lambda m: {"score": ctx.cfg.runtime.seed + 0.5})

        return run_stages(ctx, [Stage("", build)])

    def load(self, checkpoint: Path, sets: list[str] | None = None, device: str | None = None,
             recipe: Path | None = None) -> Loaded:
        return load_trained("toy", checkpoint, Config, build_model, sets, device, recipe)[0]

    def evaluate(self, loaded: Loaded, split: str | None = None, out: Path | None = None, *,
                 scale: float = 1.0) -> dict[str, Any]:
        w = float(loaded.model.weight.item())
        return {"split": split or "test", "score": round(w, 3) * scale, "seed": loaded.cfg.runtime.seed}

    def predict(self, loaded: Loaded, inputs: Sequence[Path | StdinInput], out: Path, *,
                upper: bool = False) -> Iterator[dict[str, Any]]:
        for p in inputs:
            text = Path(p).read_text().strip()
            yield {"input": str(p), "text": text.upper() if upper else text}

    def info(self, cfg: Any) -> dict[str, Any]:
        return {"task": "toy", "root": cfg.data.root, "gflops": 1.0}

    def bench_spec(self, cfg: Any, device: torch.device, batch_size: int | None) -> Any:
        raise AssertionError("not used here")

    def demo(self, workdir: Path, device: str) -> dict[str, Any]:
        return {"metric": "score", "value": 1.0}

    def sample(self, out: Path, seed: int = 0, *, count: int = 2) -> dict[str, Any]:
        out.mkdir(parents=True, exist_ok=True)
        for i in range(count):
            (out / f"{i}.txt").write_text(f"sample {i} seed {seed}")
        return {"written": count, "seed": seed}

    def sample_data(self, root: Path) -> dict[str, Any]:
        self.sample_calls += 1
        self.sample(root / "data")
        return {"data.root": str(root / "data"), "data.offset": 2.5}


def invoke(app: typer.Typer, *args: Any, stdin: str | None = None) -> Any:
    return CliRunner().invoke(app, [str(a) for a in args], input=stdin)


def test_toy_task_satisfies_the_protocol() -> None:
    assert isinstance(ToyTask(), Task)


def test_generated_verbs_train_eval_predict_info_sample(tmp_path: Path) -> None:
    app = task_app(ToyTask())
    recipe = tmp_path / "toy.yaml"
    recipe.write_text("task: toy\ntrain:\n  lr: 0.2\n")
    r = invoke(app, "train", "--recipe", recipe, "--out", tmp_path / "run", "--json", "--quiet")
    assert r.exit_code == 0, r.output
    row = json.loads(r.stdout.strip().splitlines()[-1])
    assert row["run_dir"] == str(tmp_path / "run") and row["score"] == 0.5
    r = invoke(app, "eval", "-c", tmp_path / "run" / "best.pt", "--scale", "2", "--split", "val", "--json",
               "--out", tmp_path / "ev")
    assert r.exit_code == 0, r.output
    res = json.loads(r.stdout.strip().splitlines()[-1])
    assert res["split"] == "val" and json.loads((tmp_path / "ev" / "eval.json").read_text()) == res
    # predict: a folder expands to its .txt files, the task option arrives as a keyword
    invoke(app, "sample", tmp_path / "s", "--count", "3", "--seed", "4")
    (tmp_path / "s" / "skip.bin").write_bytes(b"x")
    r = invoke(app, "predict", tmp_path / "s", "-c", tmp_path / "run" / "best.pt", "--upper", "--json",
               "--out", tmp_path / "pred")
    assert r.exit_code == 0, r.output
    rows = [json.loads(x) for x in r.stdout.strip().splitlines()]
    assert [Path(x["input"]).name for x in rows] == ["0.txt", "1.txt", "2.txt"]
    assert rows[0]["text"] == "SAMPLE 0 SEED 4"
    r = invoke(app, "info", "--recipe", recipe, "--set", "data.root=/x", "--json")
    assert json.loads(r.stdout)["root"] == "/x"
    # --out that is a file is a usage error for eval and predict, before any work
    (tmp_path / "afile").write_text("x")
    for verb in (["eval", "-c", tmp_path / "run" / "best.pt"], ["predict", tmp_path / "s", "-c", tmp_path / "run" / "best.pt"]):
        r = invoke(app, *verb, "--out", tmp_path / "afile")
        assert r.exit_code == 2 and "is a file" in r.output, r.output
    # a task option the command does not know is a usage error (exit 2)
    assert invoke(app, "eval", "-c", tmp_path / "run" / "best.pt", "--upper").exit_code == 2


def test_train_options_become_recipe_overrides(tmp_path: Path) -> None:
    """``--offset 1.5`` is ``--set data.offset=1.5``: recorded in the run's recipe.yaml; absent, the default stays."""
    import yaml

    app = task_app(ToyTask())
    recipe = tmp_path / "toy.yaml"
    recipe.write_text("task: toy\ndata:\n  offset: 0.25\n")
    r = invoke(app, "train", "--recipe", recipe, "--offset", "1.5", "--out", tmp_path / "a", "--quiet")
    assert r.exit_code == 0, r.output
    assert yaml.safe_load((tmp_path / "a" / "recipe.yaml").read_text())["data"]["offset"] == 1.5
    r = invoke(app, "train", "--recipe", recipe, "--out", tmp_path / "b", "--quiet")
    assert r.exit_code == 0, r.output
    assert yaml.safe_load((tmp_path / "b" / "recipe.yaml").read_text())["data"]["offset"] == 0.25
    assert invoke(app, "train", "--recipe", recipe, "--offset", "x", "--out", tmp_path / "c").exit_code == 2


def test_eval_of_several_checkpoints_reports_mean_and_std(tmp_path: Path) -> None:
    app = task_app(ToyTask())
    recipe = tmp_path / "toy.yaml"
    recipe.write_text("task: toy\n")
    r = invoke(app, "train", "--recipe", recipe, "--out", tmp_path / "runs", "--runs", "2", "--seed", "3", "--json")
    assert r.exit_code == 0, r.output
    summary = json.loads(r.stdout.strip().splitlines()[-1])
    # train --runs 2: seeds 3 and 4, each run's score is seed + 0.5
    assert summary["runs"] == 2 and summary["score"]["mean"] == pytest.approx(4.0)
    assert summary["score"]["std"] == pytest.approx(2**0.5 / 2)
    assert json.loads((tmp_path / "runs" / "summary.json").read_text())["runs"] == 2
    ckpts = [tmp_path / "runs" / f"run-{i}" / "best.pt" for i in range(2)]
    r = invoke(app, "eval", "-c", ckpts[0], "-c", ckpts[1], "--json", "--out", tmp_path / "ev")
    assert r.exit_code == 0, r.output
    res = json.loads(r.stdout.strip().splitlines()[-1])
    scores = [json.loads((tmp_path / "ev" / str(i) / "eval.json").read_text())["score"] for i in range(2)]
    assert res["runs"] == 2 and res["score"]["mean"] == pytest.approx(sum(scores) / 2)
    assert res["checkpoints"] == [str(c) for c in ckpts] and res["split"] == "test"  # shared text keys stay
    # a --runs folder stands for its runs' best.pt, a run folder for its best.pt
    r = invoke(app, "eval", "-c", tmp_path / "runs", "--json")
    assert json.loads(r.stdout.strip().splitlines()[-1])["checkpoints"] == [str(c) for c in ckpts]
    r = invoke(app, "eval", "-c", tmp_path / "runs" / "run-1", "--json")
    assert json.loads(r.stdout.strip().splitlines()[-1])["score"] == scores[1]
    assert invoke(app, "eval", "-c", tmp_path / "ev").exit_code == 2


def test_resume_auto_starts_fresh_then_continues(tmp_path: Path) -> None:
    app = task_app(ToyTask())
    recipe = tmp_path / "toy.yaml"
    recipe.write_text("task: toy\n")
    out = tmp_path / "run"
    r = invoke(app, "train", "--recipe", recipe, "--out", out, "--set", "train.max_steps=1", "--resume", "auto")
    assert r.exit_code == 0, r.output
    assert "no last.pt, starting fresh" in r.output
    first = [json.loads(x) for x in (out / "metrics.jsonl").read_text().splitlines() if '"train"' in x]
    assert [x["step"] for x in first] == [1]
    r = invoke(app, "train", "--recipe", recipe, "--out", out, "--resume", "auto")
    assert r.exit_code == 0, r.output
    assert "continuing" in r.output
    rows = [json.loads(x) for x in (out / "metrics.jsonl").read_text().splitlines() if '"train"' in x]
    assert [x["step"] for x in rows] == [1, 2, 3]  # it went on from step 1, not from 0
    # plain --resume keeps its strict meaning: no last.pt is an error (exit 2)
    r = invoke(app, "train", "--recipe", recipe, "--out", tmp_path / "empty", "--resume")
    assert r.exit_code == 2 and "has no last.pt" in r.output
    r = invoke(app, "train", "--recipe", recipe, "--out", out, "--resume", "sometimes")
    assert r.exit_code == 2


def test_sample_marker_writes_the_sample_once_into_the_cache(tmp_path: Path, monkeypatch) -> None:  # noqa: ANN001
    monkeypatch.setenv("ZSK_CACHE", str(tmp_path / "cache"))
    task = ToyTask()
    recipe = tmp_path / "demo.yaml"
    recipe.write_text('task: toy\ndata:\n  root: "@sample"\n')
    cfg, resolved = load_config("toy", Config, recipe, None, sample=task)
    assert Path(cfg.data.root).is_dir() and cfg.data.offset == 2.5
    assert Path(cfg.data.root).is_relative_to(tmp_path / "cache")
    ctx = start_run("toy", Config, recipe, None, out=tmp_path / "run", sample=task)
    assert ctx.cfg.data.root == cfg.data.root and task.sample_calls == 1  # written once, then reused
    assert "@sample" not in (tmp_path / "run" / "recipe.yaml").read_text()  # the run records the real path
    # a half-written sample folder (no completion marker) is written again
    marker = next((tmp_path / "cache" / "samples").glob("toy-v1/.zsk-sample.json"))
    marker.unlink()
    load_config("toy", Config, recipe, None, sample=task)
    assert task.sample_calls == 2
    # info needs no data: without a source the marker is left as it is
    cfg, _ = load_config("toy", Config, recipe, None)
    assert cfg.data.root == "@sample"


def test_expand_inputs(tmp_path: Path, monkeypatch) -> None:  # noqa: ANN001
    (tmp_path / "d" / "sub").mkdir(parents=True)
    for name in ("b.png", "a.png", "sub/c.PNG", "x.txt", ".hidden.png"):
        (tmp_path / "d" / name).write_bytes(b"1")
    one = tmp_path / "one.png"
    one.write_bytes(b"1")
    got = expand_inputs([str(one), str(tmp_path / "d")], suffixes=(".png",))
    assert got == [one, tmp_path / "d" / "a.png", tmp_path / "d" / "b.png", tmp_path / "d" / "sub" / "c.PNG"]
    assert expand_inputs([str(tmp_path / "d" / "*.png")]) == [tmp_path / "d" / "a.png", tmp_path / "d" / "b.png"]
    with pytest.raises(ZskError, match="not found"):
        expand_inputs([str(tmp_path / "missing.png")])
    with pytest.raises(ZskError, match="matches no file"):
        expand_inputs([str(tmp_path / "*.jpg")])
    with pytest.raises(ZskError, match="holds no files"):
        expand_inputs([str(tmp_path / "d")], suffixes=(".nii.gz",))
    with pytest.raises(ZskError, match="no inputs"):
        expand_inputs([])
    # free-text tasks: what names no file is a text, what names a file is still the file
    assert expand_inputs(["a dog on the beach", str(one)], text_args=True) == ["a dog on the beach", one]

    def fake_stdin(data: bytes) -> None:
        monkeypatch.setattr(sys, "stdin", io.TextIOWrapper(io.BytesIO(data), encoding="utf-8"))

    fake_stdin(f"{one}\n\n{tmp_path / 'd' / 'a.png'}\n".encode())
    assert expand_inputs(["-"]) == [one, tmp_path / "d" / "a.png"]
    fake_stdin(b"first line\nsecond\n")
    (text,) = expand_inputs(["-"], stdin="texts")
    assert isinstance(text, StdinInput) and text.lines == ["first line", "second"]
    fake_stdin(b"\x93NUMPY")
    (raw,) = expand_inputs(["-"], stdin="bytes")
    assert raw.data == b"\x93NUMPY"
    with pytest.raises(ZskError, match="only once"):
        fake_stdin(b"")
        expand_inputs(["-", "-"], stdin="texts")
