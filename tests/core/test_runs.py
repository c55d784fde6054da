"""Run folders are claimed atomically and never shared or silently reused; a refused run leaves the
folder as it was; stored recipes carry absolute data roots; config ranges and mismatched weights are
exit-2 errors; a periodic last.pt bounds what a kill -9 loses."""

from __future__ import annotations

import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import ClassVar

import pytest
import torch
import yaml
from torch import nn

from zsk.core import run as core_run
from zsk.core.checkpoint import load_model_state
from zsk.core.errors import ZskError
from zsk.core.recipe import RuntimeConfig, parse_config
from zsk.core.run import release_run, start_run
from zsk.core.trainer import TrainConfig, Trainer


@dataclass
class DataConfig:
    root: str = "data"


@dataclass
class Config:
    data: DataConfig = field(default_factory=DataConfig)
    train: TrainConfig = field(default_factory=lambda: TrainConfig(steps=2))
    runtime: RuntimeConfig = field(default_factory=lambda: RuntimeConfig(device="cpu"))


def _recipe(tmp_path: Path, task: str = "toy") -> Path:
    path = tmp_path / "toy.yaml"
    path.write_text(f"task: {task}\ntrain:\n  steps: 2\n")
    return path


def test_two_runs_started_in_the_same_second_get_their_own_folders(tmp_path: Path, monkeypatch) -> None:  # noqa: ANN001
    monkeypatch.chdir(tmp_path)
    monkeypatch.setattr(core_run.time, "strftime", lambda fmt: "20261206-000000")
    recipe = _recipe(tmp_path)
    a = start_run("toy", Config, recipe)
    b = start_run("toy", Config, recipe)
    assert a.run_dir != b.run_dir
    assert a.run_dir.name == "toy-20261206-000000" and b.run_dir.name == "toy-20261206-000000-2"
    assert (a.run_dir / "recipe.yaml").is_file() and (b.run_dir / "recipe.yaml").is_file()


def test_an_existing_run_folder_is_refused_without_resume_or_overwrite(tmp_path: Path) -> None:
    recipe = _recipe(tmp_path)
    out = tmp_path / "run"
    ctx = start_run("toy", Config, recipe, out=out)
    (out / "metrics.jsonl").write_text('{"kind": "train", "step": 1}\n')
    (out / "last.pt").write_bytes(b"weights")
    release_run(ctx)
    before = {p.name: p.read_bytes() for p in out.iterdir()}
    with pytest.raises(ZskError, match="already holds .*--resume.*--overwrite"):
        start_run("toy", Config, recipe, out=out)
    assert {p.name: p.read_bytes() for p in out.iterdir()} == before  # untouched
    start_run("toy", Config, recipe, out=out, overwrite=True)
    assert sorted(p.name for p in out.iterdir()) == ["recipe.yaml"]
    with pytest.raises(ZskError, match="one of them"):
        start_run("toy", Config, recipe, out=out, overwrite=True, resume=True)
    # --overwrite never deletes a folder that is not a run folder
    mine = tmp_path / "my-documents"
    mine.mkdir()
    (mine / "thesis.tex").write_text("precious")
    with pytest.raises(ZskError, match="not a zsk run folder"):
        start_run("toy", Config, recipe, out=mine, overwrite=True)
    assert (mine / "thesis.tex").read_text() == "precious"


def test_out_that_is_a_file_or_cannot_be_written_is_exit_2(tmp_path: Path) -> None:
    recipe = _recipe(tmp_path)
    a_file = tmp_path / "file.txt"
    a_file.write_text("x")
    with pytest.raises(ZskError, match="is a file"):
        start_run("toy", Config, recipe, out=a_file)
    with pytest.raises(ZskError, match="cannot write there|not writable"):
        start_run("toy", Config, recipe, out=Path("/proc/zsk-run"))


def test_a_run_folder_in_use_by_another_process_is_refused(tmp_path: Path) -> None:
    recipe = _recipe(tmp_path)
    out = tmp_path / "run"
    out.mkdir()
    holder = subprocess.Popen([sys.executable, "-c", (
        "import fcntl, os, sys, time; fd = os.open(sys.argv[1], os.O_RDONLY); fcntl.flock(fd, fcntl.LOCK_EX); "
        "print('held', flush=True); time.sleep(30)"), str(out)], stdout=subprocess.PIPE, text=True)
    try:
        assert holder.stdout is not None and holder.stdout.readline().strip() == "held"
        with pytest.raises(ZskError, match="in use by another zsk process"):
            start_run("toy", Config, recipe, out=out)
    finally:
        holder.kill()
        holder.wait()


def test_a_refused_resume_leaves_the_run_folder_as_it_was(tmp_path: Path) -> None:
    out = tmp_path / "run"
    out.mkdir()
    (out / "recipe.yaml").write_text(yaml.safe_dump({"task": "medseg", "train": {"steps": 5}}))
    (out / "last.pt").write_bytes(b"x")
    before = (out / "recipe.yaml").read_text()
    with pytest.raises(ZskError, match="holds a medseg run, not toy"):
        start_run("toy", Config, _recipe(tmp_path), out=out, resume=True)
    assert (out / "recipe.yaml").read_text() == before


def test_resume_with_a_changed_model_is_one_line_and_keeps_the_recipe(tmp_path: Path) -> None:
    recipe = _recipe(tmp_path)
    out = tmp_path / "run"
    ctx = start_run("toy", Config, recipe, out=out)
    x = torch.randn(4, 3)
    Trainer(ctx, nn.Linear(3, 2), ctx.cfg.train, lambda m, b, s: {"loss": m(b).sum()}, lambda e, s: [x][s:], 1).fit()
    release_run(ctx)
    stored = (out / "recipe.yaml").read_text()
    ctx = start_run("toy", Config, recipe, ["train.steps=4"], out=out, resume=True)
    trainer = Trainer(ctx, nn.Linear(3, 5), ctx.cfg.train, lambda m, b, s: {"loss": m(b).sum()}, lambda e, s: [x][s:], 1)
    with pytest.raises(ZskError) as err:
        trainer.fit()
    assert "does not fit the model" in str(err.value) and "\n" not in str(err.value)
    assert (out / "recipe.yaml").read_text() == stored  # not rewritten: the run never continued


def test_mismatched_weights_are_one_line_naming_the_key() -> None:
    state = nn.Linear(3, 2).state_dict()
    with pytest.raises(ZskError) as err:
        load_model_state(nn.Linear(3, 4), state, source="best.pt")
    msg = str(err.value)
    assert msg.startswith("best.pt does not fit") and "weight: [2, 3] in the file, [4, 3] in the model" in msg
    assert "(+1 more)" in msg and "\n" not in msg


def test_relative_data_root_is_stored_absolute(tmp_path: Path, monkeypatch) -> None:  # noqa: ANN001
    monkeypatch.chdir(tmp_path)
    ctx = start_run("toy", Config, _recipe(tmp_path), ["data.root=datasets/voc"], out=tmp_path / "run")
    stored = yaml.safe_load((tmp_path / "run" / "recipe.yaml").read_text())
    assert stored["data"]["root"] == str(tmp_path / "datasets" / "voc")
    assert ctx.cfg.data.root == str(tmp_path / "datasets" / "voc")


@pytest.mark.parametrize("key,value,message", [
    ("lr", -1, "train.lr must be >= 0"), ("batch_size", 0, "train.batch_size must be > 0"),
    ("grad_accum", 0, "train.grad_accum must be > 0"), ("steps", 0, "train.steps must be >= 1"),
    ("epochs", -2, "train.epochs must be >= 1"), ("clip_grad_norm", 0.0, "train.clip_grad_norm must be > 0"),
    ("momentum", 1.5, "train.momentum must be in"), ("weight_decay", -0.1, "train.weight_decay must be >= 0"),
    ("warmup_ratio", 1.5, "train.warmup_ratio"), ("milestones", [30, 10], "train.milestones"),
    ("lr", float("nan"), "train.lr must be a finite number"),
])
def test_train_ranges_are_checked_once_for_every_task(key: str, value: object, message: str) -> None:
    with pytest.raises(ZskError, match=message.replace(".", r"\.").replace("(", r"\(")):
        parse_config(TrainConfig, {key: value})


def test_runtime_ranges_are_checked() -> None:
    with pytest.raises(ZskError, match=r"runtime\.workers must be >= 0"):
        parse_config(RuntimeConfig, {"workers": -1})


def test_last_pt_is_written_periodically_by_time(tmp_path: Path, monkeypatch) -> None:  # noqa: ANN001
    """With no save_every and no evaluation, last.pt still appears during training once save_minutes
    have passed (a kill -9 loses at most that much)."""
    ctx = start_run("toy", Config, _recipe(tmp_path), ["train.steps=6", "train.save_minutes=1"], out=tmp_path / "run")
    clock = {"t": 1000.0}
    monkeypatch.setattr(time, "monotonic", lambda: clock["t"])
    seen = []
    x = torch.randn(4, 3)

    def step(m: nn.Module, b: torch.Tensor, s: int) -> dict[str, torch.Tensor]:
        clock["t"] += 25.0  # every step takes 25 s
        seen.append((s, (tmp_path / "run" / "last.pt").exists()))
        return {"loss": m(b).square().mean()}

    Trainer(ctx, nn.Linear(3, 2), ctx.cfg.train, step, lambda e, s: [x][s:], 1).fit()
    # steps 0-2 run before 60 s have passed; after step 2 (75 s) last.pt is written
    assert [s for s, exists in seen if not exists] == [0, 1, 2] and all(e for s, e in seen if s >= 3)


def test_a_range_error_in_a_stage_block_names_the_stage() -> None:
    @dataclass
    class Staged(TrainConfig):
        STAGES: ClassVar[tuple[str, ...]] = ("warm", "main")

    with pytest.raises(ZskError, match=r"^train\.stages\.main\.lr must be >= 0"):
        parse_config(Staged, {"steps": 3, "stages": {"main": {"lr": -1}}})


def test_a_range_error_outside_the_stage_block_keeps_its_train_name() -> None:
    @dataclass
    class Own(TrainConfig):
        STAGES: ClassVar[tuple[str, ...]] = ("warm", "main")
        crop: int = 8

        def __post_init__(self) -> None:
            super().__post_init__()  # merges the stage blocks first, then checks its own key
            if self.crop < 1:
                raise ZskError(f"train.crop must be >= 1, got {self.crop}")

    with pytest.raises(ZskError, match=r"^train\.crop must be >= 1"):
        parse_config(Own, {"steps": 3, "crop": 0, "stages": {"main": {"lr": 0.1}}})
    with pytest.raises(ZskError, match=r"^train\.stages\.main\.crop must be >= 1"):
        parse_config(Own, {"steps": 3, "stages": {"main": {"crop": 0}}})
