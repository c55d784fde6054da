"""runtime.loggers: TensorBoard scalars read back with tensorboard's own reader, resume, errors, rank 0 only."""

from __future__ import annotations

import importlib
import json
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch
from torch import nn
from torch.utils.data import TensorDataset

from zsk.core import dist
from zsk.core import loggers as zsk_loggers
from zsk.core.errors import ZskError
from zsk.core.recipe import RuntimeConfig
from zsk.core.run import start_run
from zsk.core.trainer import TrainConfig, Trainer, batches_per_epoch, make_loader

N, BATCH = 16, 4


@dataclass
class Config:
    train: TrainConfig = field(default_factory=TrainConfig)
    runtime: RuntimeConfig = field(default_factory=RuntimeConfig)


class TwoGroups(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.body = nn.Linear(3, 4)
        self.head = nn.Linear(4, 2)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(torch.relu(self.body(x)))


def build(out: Path, sets: list[str], resume: Any = None, preview_fn: Any = None) -> Trainer:
    ctx = start_run("toy", Config, None, [f"train.batch_size={BATCH}", "train.log_every=1", "train.lr=0.1",
                                          "runtime.loggers=[tensorboard]", *sets],
                    out=out, device="cpu", resume=resume)
    g = torch.Generator().manual_seed(0)
    x = torch.randn(N, 3, generator=g)
    data = TensorDataset(x, (x[:, 0] > 0).long())
    model = TwoGroups()

    def step_fn(m: nn.Module, batch: list[torch.Tensor], step: int) -> dict[str, torch.Tensor]:
        xb, yb = batch
        return {"loss": nn.functional.cross_entropy(m(xb), yb)}

    groups = [{"params": list(model.body.parameters())}, {"params": list(model.head.parameters()), "lr_mult": 0.1}]
    return Trainer(ctx, model, ctx.cfg.train, step_fn,
                   lambda epoch, start: make_loader(data, BATCH, epoch=epoch, seed=0, start_batch=start),
                   batches_per_epoch(N, BATCH), eval_fn=lambda m: {"acc": 0.5}, param_groups=groups,
                   preview_fn=preview_fn)


def read_scalars(log_dir: Path) -> dict[str, list[tuple[int, float]]]:
    ea = pytest.importorskip("tensorboard.backend.event_processing.event_accumulator")
    acc = ea.EventAccumulator(str(log_dir), size_guidance={ea.SCALARS: 0})
    acc.Reload()
    return {tag: [(e.step, e.value) for e in acc.Scalars(tag)] for tag in acc.Tags()["scalars"]}


def test_tensorboard_scalars_are_read_back(tmp_path: Path) -> None:
    pytest.importorskip("tensorboard")
    out = tmp_path / "run"
    build(out, ["train.steps=4", "train.eval_every=2"]).fit()
    tb = read_scalars(out / "tensorboard")
    rows = [json.loads(x) for x in (out / "metrics.jsonl").read_text().splitlines()]
    train = [r for r in rows if r["kind"] == "train"]
    assert [s for s, _ in tb["train/loss"]] == [1, 2, 3, 4]
    assert [v for _, v in tb["train/loss"]] == pytest.approx([r["loss"] for r in train])
    assert [s for s, _ in tb["eval/acc"]] == [2, 4] and tb["eval/acc"][0][1] == pytest.approx(0.5)
    # every parameter group's lr: group 1 runs at lr_mult 0.1; "lr" stays group 0
    assert tb["train/lr/0"][0][1] == pytest.approx(0.1) and tb["train/lr/1"][0][1] == pytest.approx(0.01)
    assert all(r["lr"] == r["lr/0"] for r in train) and all("lr/1" in r for r in train)
    assert "train/steps_per_s" in tb and "train/samples_per_s" in tb


def test_resume_continues_the_same_log_dir_without_duplicate_steps(tmp_path: Path) -> None:
    pytest.importorskip("tensorboard")
    from torch.utils.tensorboard import SummaryWriter

    out = tmp_path / "run"
    build(out, ["train.steps=6", "train.max_steps=3"]).fit()  # last.pt at step 3
    # a killed run logged steps 4 and 5 after that checkpoint: the resume must drop them
    writer = SummaryWriter(str(out / "tensorboard"))
    for step in (4, 5):
        writer.add_scalar("train/loss", 999.0, step)
    writer.close()
    build(out, ["train.steps=6"], resume=True).fit()
    tb = read_scalars(out / "tensorboard")
    # the same log dir: event files of all three writers side by side, no new folder
    files = list((out / "tensorboard").iterdir())
    assert len(files) == 3 and all(f.is_file() and f.name.startswith("events.out.tfevents") for f in files)
    steps = [s for s, _ in tb["train/loss"]]
    assert steps == [1, 2, 3, 4, 5, 6]
    assert all(v != 999.0 for _, v in tb["train/loss"])


def test_unknown_logger_is_a_zsk_error_naming_the_choices(tmp_path: Path) -> None:
    with pytest.raises(ZskError, match=r"runtime\.loggers.*jsonl, tensorboard, wandb, mlflow") as e:
        build(tmp_path / "run", ["runtime.loggers=[jsonl, comet]", "train.steps=1"])
    assert e.value.exit_code == 2
    assert RuntimeConfig(loggers=["tensorboard"]).loggers == ["jsonl", "tensorboard"]  # jsonl always on
    assert RuntimeConfig().loggers == ["jsonl"]


@pytest.mark.parametrize("name", ["tensorboard", "mlflow", "wandb"])
def test_missing_package_is_exit_2_naming_the_extra(tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                                     name: str) -> None:
    real = importlib.import_module

    def fail(module: str, *args: Any, **kwargs: Any) -> Any:
        if module == name:
            raise ImportError(f"No module named {module!r}")
        return real(module, *args, **kwargs)

    monkeypatch.setattr(zsk_loggers.importlib, "import_module", fail)
    with pytest.raises(ZskError, match=rf"pip install zsk\[{name}\]") as e:
        build(tmp_path / "run", [f"runtime.loggers=[{name}]", "train.steps=1"])
    assert e.value.exit_code == 2
    assert not (tmp_path / "run" / "last.pt").exists()  # checked when the run starts, before training


def test_only_rank_0_logs(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    pytest.importorskip("tensorboard")
    opened: list[str] = []
    monkeypatch.setattr(zsk_loggers, "open_loggers", lambda *a, **k: opened.append("x") or [])
    monkeypatch.setattr(dist, "is_main", lambda: False)
    build(tmp_path / "run", ["train.steps=2"]).fit()
    assert opened == [] and not (tmp_path / "run" / "tensorboard").exists()


def test_wandb_and_mlflow_resume_the_run_whose_id_is_kept_in_the_run_dir(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """With stand-ins for the packages (neither is installed for the tests): offline by default, the id
    written on the first start and reused with resume="allow" / the same MLflow run on the second."""
    import sys
    import types

    inits: list[dict] = []
    logged: list[tuple] = []
    run = types.SimpleNamespace(log=lambda row, step: logged.append(("wandb", step, row)), finish=lambda: None)
    wandb = types.ModuleType("wandb")
    wandb.init = lambda **kw: inits.append(kw) or run  # type: ignore[attr-defined]

    created: list[str] = []

    class Client:
        def __init__(self, tracking_uri: str) -> None:
            assert tracking_uri.startswith("file:") and tracking_uri.endswith("/mlruns")

        def get_experiment_by_name(self, name: str) -> Any:
            return None

        def create_experiment(self, name: str) -> str:
            return "1"

        def create_run(self, exp_id: str, run_name: str) -> Any:
            created.append(run_name)
            return types.SimpleNamespace(info=types.SimpleNamespace(run_id=f"run{len(created)}"))

        def log_metric(self, run_id: str, key: str, value: float, step: int) -> None:
            logged.append(("mlflow", run_id, key, step))

        def set_terminated(self, run_id: str) -> None:
            pass

    tracking = types.ModuleType("mlflow.tracking")
    tracking.MlflowClient = Client  # type: ignore[attr-defined]
    mlflow = types.ModuleType("mlflow")
    mlflow.tracking = tracking  # type: ignore[attr-defined]
    monkeypatch.setitem(sys.modules, "wandb", wandb)
    monkeypatch.setitem(sys.modules, "mlflow", mlflow)
    monkeypatch.setitem(sys.modules, "mlflow.tracking", tracking)
    monkeypatch.delenv("WANDB_API_KEY", raising=False)
    monkeypatch.setenv("WANDB_MODE", "online")  # recorded, so the teardown restores the real value
    monkeypatch.delenv("WANDB_MODE")
    run_dir = tmp_path / "run"
    run_dir.mkdir()
    for _ in range(2):  # first start, then a resume
        opened = zsk_loggers.open_loggers(["jsonl", "wandb", "mlflow"], run_dir, resume_step=None)
        for logger in opened:
            logger.log({"kind": "train", "step": 3, "loss": 0.5, "lr/0": 0.1}, 3)
            logger.close()
    import os

    assert os.environ["WANDB_MODE"] == "offline"
    run_id = (run_dir / "wandb_run_id").read_text()
    assert len(run_id) == 8 and [kw["id"] for kw in inits] == [run_id, run_id]
    assert all(kw["resume"] == "allow" for kw in inits)
    assert all(kw["dir"] == str(run_dir) for kw in inits) and (run_dir / "wandb").is_dir()
    assert created == ["run"] and (run_dir / "mlflow_run_id").read_text() == "run1"
    assert ("mlflow", "run1", "train.loss", 3) in logged and ("wandb", 3, {"train/loss": 0.5, "train/lr/0": 0.1}) in logged


def _panel(m: nn.Module) -> dict[str, Any]:
    """A 6 x 10 picture whose red channel encodes the model's first weight (so steps differ)."""
    import numpy as np

    img = np.zeros((6, 10, 3), dtype=np.uint8)
    img[..., 0] = int(abs(float(m.body.weight[0, 0])) * 100) % 256
    img[:, :5, 1] = 200
    return {"first": img}


def test_preview_images_reach_tensorboard_at_each_evaluation(tmp_path: Path) -> None:
    ea = pytest.importorskip("tensorboard.backend.event_processing.event_accumulator")
    out = tmp_path / "run"
    build(out, ["train.steps=4", "train.eval_every=2"], preview_fn=_panel).fit()
    acc = ea.EventAccumulator(str(out / "tensorboard"), size_guidance={ea.IMAGES: 0})
    acc.Reload()
    assert acc.Tags()["images"] == ["preview/first"]
    shots = acc.Images("preview/first")
    assert [(s.step, s.width, s.height) for s in shots] == [(2, 10, 6), (4, 10, 6)]
    import io

    from PIL import Image

    decoded = np.asarray(Image.open(io.BytesIO(shots[0].encoded_image_string)).convert("RGB"))
    assert decoded.shape == (6, 10, 3) and (decoded[:, :5, 1] == 200).all() and (decoded[:, 5:, 1] == 0).all()


def test_no_tracker_means_no_preview_work(tmp_path: Path) -> None:
    calls: list[int] = []
    build(tmp_path / "run", ["train.steps=2", "runtime.loggers=[jsonl]"],
          preview_fn=lambda m: calls.append(1) or {}).fit()
    assert calls == []


def test_real_mlflow_and_wandb_log_scalars_and_images_offline(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """With the real packages (``pip install zsk[mlflow,wandb]``; skipped when absent): MLflow's local file store
    holds the metric history and the preview PNG; W&B writes an offline run under RUN/wandb."""
    pytest.importorskip("mlflow")
    pytest.importorskip("wandb")
    from mlflow.tracking import MlflowClient

    monkeypatch.delenv("WANDB_API_KEY", raising=False)
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    monkeypatch.setenv("MLFLOW_ALLOW_FILE_STORE", "true")  # recorded, so the teardown restores the real value
    monkeypatch.delenv("MLFLOW_ALLOW_FILE_STORE")
    monkeypatch.setenv("WANDB_MODE", "offline")
    monkeypatch.setenv("WANDB_SILENT", "true")
    out = tmp_path / "run"
    build(out, ["train.steps=4", "train.eval_every=2", "runtime.loggers=[mlflow, wandb]"], preview_fn=_panel).fit()
    assert os.environ["MLFLOW_ALLOW_FILE_STORE"] == "true"  # set by the logger for its local store
    client = MlflowClient(tracking_uri=(out / "mlruns").resolve().as_uri())
    run_id = (out / "mlflow_run_id").read_text().strip()
    assert [m.step for m in client.get_metric_history(run_id, "train.loss")] == [1, 2, 3, 4]
    assert [m.value for m in client.get_metric_history(run_id, "eval.acc")] == [0.5, 0.5]
    assert client.get_metric_history(run_id, "train.lr")[0].value == client.get_metric_history(run_id, "train.lr.0")[0].value
    arts = [a.path for a in client.list_artifacts(run_id, "previews/step-0000002")]
    assert arts == ["previews/step-0000002/preview_first.png"]
    assert client.get_run(run_id).info.status == "FINISHED"
    runs = list((out / "wandb").glob("offline-run-*"))
    assert len(runs) == 1 and runs[0].name.endswith((out / "wandb_run_id").read_text().strip())
