"""Experiment trackers behind ``runtime.loggers``: TensorBoard, MLflow and W&B, next to metrics.jsonl.

Each backend is an optional extra (``pip install zsk[tensorboard]`` ...); :func:`check_available` fails
with exit 2 naming the extra when one asked for is not installed. Only rank 0 opens a backend; a
resumed run continues the same run (TensorBoard: the same log dir with ``purge_step``; MLflow and W&B:
the run id kept in a file in the run directory). ``jsonl`` is written by the Trainer itself. Besides
scalars, each backend takes images (``log_images``): the segmentation-like tasks send a few
``image | ground truth | prediction`` panels after every evaluation (``Trainer(preview_fn=...)``).
"""

from __future__ import annotations

import importlib
import os
import secrets
from pathlib import Path
from typing import Any

import numpy as np

from zsk.core.errors import ZskError

LOGGER_CHOICES = ("jsonl", "tensorboard", "wandb", "mlflow")
# the module each backend imports, and the extra that installs it
_MODULES = {"tensorboard": "tensorboard", "mlflow": "mlflow", "wandb": "wandb"}
_SKIP_KEYS = {"kind", "step", "epoch", "stage"}


def validate(names: list[str]) -> list[str]:
    """``runtime.loggers`` checked against :data:`LOGGER_CHOICES` (``jsonl`` always on)."""
    bad = [n for n in names if n not in LOGGER_CHOICES]
    if bad:
        raise ZskError(f"runtime.loggers: {bad[0]!r} is not one of {', '.join(LOGGER_CHOICES)}")
    return list(dict.fromkeys(["jsonl", *names]))


def check_available(names: list[str]) -> None:
    """Raise ``ZskError`` (exit 2) naming the extra for a requested backend whose package is missing."""
    for name in names:
        module = _MODULES.get(name)
        if module is None:
            continue
        try:
            importlib.import_module(module)
        except ImportError:
            raise ZskError(f"runtime.loggers asks for {name}, but the {module} package is not installed: "
                           f"pip install zsk[{name}]") from None


def scalars(row: dict[str, Any]) -> dict[str, float]:
    """The numeric entries of a metrics row, tagged ``[<stage>/]<kind>/<key>``."""
    prefix = (f"{row['stage']}/" if row.get("stage") else "") + str(row.get("kind", "train"))
    out = {}
    for k, v in row.items():
        if k in _SKIP_KEYS or isinstance(v, bool) or not isinstance(v, (int, float)):
            continue
        out[f"{prefix}/{k}"] = float(v)
    return out


class TensorBoardLogger:
    """Scalars into ``RUN/tensorboard[/<stage>]``; a resume purges events at and after the resumed step."""

    def __init__(self, log_dir: Path, purge_step: int | None = None) -> None:
        from torch.utils.tensorboard import SummaryWriter

        self.log_dir = log_dir
        self.writer = SummaryWriter(log_dir=str(log_dir), purge_step=purge_step)

    def log(self, row: dict, step: int) -> None:
        for tag, value in scalars(row).items():
            self.writer.add_scalar(tag, value, global_step=step)
        self.writer.flush()

    def log_images(self, images: dict[str, np.ndarray], step: int) -> None:
        for tag, image in images.items():
            self.writer.add_image(tag, image, global_step=step, dataformats="HWC")
        self.writer.flush()

    def close(self) -> None:
        self.writer.close()


class MLflowLogger:
    """Metrics into ``$MLFLOW_TRACKING_URI`` when set (a tracking server), else a local file store
    ``RUN/mlruns`` (offline; MLflow 3 keeps that store behind ``MLFLOW_ALLOW_FILE_STORE``, which is set
    for it); the run id is kept in ``RUN/mlflow_run_id[-<stage>]``."""

    def __init__(self, run_dir: Path, stage: str = "") -> None:
        from mlflow.tracking import MlflowClient

        uri = os.environ.get("MLFLOW_TRACKING_URI")
        if not uri:
            os.environ.setdefault("MLFLOW_ALLOW_FILE_STORE", "true")
            uri = (run_dir / "mlruns").resolve().as_uri()
        self.client = MlflowClient(tracking_uri=uri)
        id_file = run_dir / (f"mlflow_run_id-{stage}" if stage else "mlflow_run_id")
        run_id = id_file.read_text().strip() if id_file.is_file() else ""
        if not run_id:
            exp = self.client.get_experiment_by_name("zsk")
            exp_id = exp.experiment_id if exp is not None else self.client.create_experiment("zsk")
            run_id = self.client.create_run(exp_id, run_name=run_dir.name + (f"-{stage}" if stage else "")).info.run_id
            id_file.write_text(run_id)
        self.run_id = run_id

    def log(self, row: dict, step: int) -> None:
        # dots, not slashes: MLflow's file store makes each "/" a folder, so "train/lr" (a file) and
        # "train/lr/0" (below a folder of that name) could not both exist
        for tag, value in scalars(row).items():
            self.client.log_metric(self.run_id, tag.replace("/", "."), value, step=step)

    def log_images(self, images: dict[str, np.ndarray], step: int) -> None:
        """PNG artifacts ``previews/step-<step>/<tag>.png`` of the run."""
        import tempfile

        from PIL import Image

        with tempfile.TemporaryDirectory() as tmp:
            for tag, image in images.items():
                path = Path(tmp) / (tag.replace("/", "_") + ".png")
                Image.fromarray(image).save(path)
                self.client.log_artifact(self.run_id, str(path), artifact_path=f"previews/step-{step:07d}")

    def close(self) -> None:
        self.client.set_terminated(self.run_id)


class WandbLogger:
    """A W&B run under ``RUN/wandb`` (offline unless an API key is set), resumed by the id in ``RUN/wandb_run_id``."""

    def __init__(self, run_dir: Path, stage: str = "") -> None:
        import wandb

        if not os.environ.get("WANDB_API_KEY") and "WANDB_MODE" not in os.environ:
            os.environ["WANDB_MODE"] = "offline"
        id_file = run_dir / (f"wandb_run_id-{stage}" if stage else "wandb_run_id")
        # our own id (W&B's id helper moved between releases): 8 lowercase hex characters
        run_id = id_file.read_text().strip() if id_file.is_file() else secrets.token_hex(4)
        id_file.write_text(run_id)
        (run_dir / "wandb").mkdir(exist_ok=True)
        self.run = wandb.init(project=os.environ.get("WANDB_PROJECT", "zsk"), dir=str(run_dir), id=run_id,
                              resume="allow", name=run_dir.name + (f"-{stage}" if stage else ""))

    def log(self, row: dict, step: int) -> None:
        self.run.log(scalars(row), step=step)

    def log_images(self, images: dict[str, np.ndarray], step: int) -> None:
        import wandb

        self.run.log({tag: wandb.Image(image) for tag, image in images.items()}, step=step)

    def close(self) -> None:
        self.run.finish()


def open_loggers(names: list[str], run_dir: Path, *, stage: str = "", resume_step: int | None = None) -> list[Any]:
    """The backends named in ``names`` other than jsonl (call on rank 0 only)."""
    check_available(names)
    out: list[Any] = []
    for name in names:
        if name == "tensorboard":
            log_dir = run_dir / "tensorboard" / stage if stage else run_dir / "tensorboard"
            out.append(TensorBoardLogger(log_dir, purge_step=resume_step))
        elif name == "mlflow":
            out.append(MLflowLogger(run_dir, stage))
        elif name == "wandb":
            out.append(WandbLogger(run_dir, stage))
    return out
