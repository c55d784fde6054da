"""A tiny training run through zsk.core (start_run + Trainer + make_loader), for subprocess tests.

Usage: python toy_train.py --out RUN [--resume] [--kill-at K] [--ranks-dir D] [--set key=value ...]

``--kill-at K`` sends this process SIGTERM from inside ``step_fn`` at optimizer step K (the trainer
must finish the step, write ``last.pt`` and exit 143). ``--ranks-dir D`` makes every rank write its
reduced confusion matrix and its final weights to D (the distributed test compares them). Also run
under ``torch.distributed.run``.
"""

from __future__ import annotations

import argparse
import json
import os
import signal
import sys
from dataclasses import dataclass, field
from pathlib import Path

import torch
from torch import nn
from torch.utils.data import TensorDataset

from zsk.core import dist
from zsk.core.options import report_error
from zsk.core.recipe import RuntimeConfig
from zsk.core.run import start_run
from zsk.core.trainer import TrainConfig, Trainer, batches_per_epoch, make_eval_loader, make_loader
from zsk.metrics.classification import accuracy
from zsk.metrics.confusion import ConfusionMatrix

NUM_SAMPLES = 40
NUM_CLASSES = 3


@dataclass
class DataConfig:
    num_samples: int = NUM_SAMPLES


@dataclass
class Config:
    data: DataConfig = field(default_factory=DataConfig)
    train: TrainConfig = field(default_factory=TrainConfig)
    runtime: RuntimeConfig = field(default_factory=RuntimeConfig)


def toy_dataset(n: int) -> TensorDataset:
    """Fixed points in R^4 labelled by a fixed linear rule (same data in every process)."""
    g = torch.Generator().manual_seed(1234)
    x = torch.randn(n, 4, generator=g)
    w = torch.randn(4, NUM_CLASSES, generator=g)
    return TensorDataset(x, (x @ w).argmax(1))


def toy_model() -> nn.Module:
    """Dropout makes the result depend on the RNG state, which resume must restore."""
    return nn.Sequential(nn.Linear(4, 16), nn.ReLU(), nn.Dropout(0.3), nn.Linear(16, NUM_CLASSES))


def main(argv: list[str]) -> None:
    p = argparse.ArgumentParser()
    p.add_argument("--out", required=True)
    p.add_argument("--resume", action="store_true")
    p.add_argument("--kill-at", type=int, default=None)
    p.add_argument("--signal", default="SIGTERM", help="The signal --kill-at sends (SIGTERM, SIGUSR1).")
    p.add_argument("--ranks-dir", default=None)
    p.add_argument("--set", dest="sets", action="append", default=[])
    args = p.parse_args(argv)
    torch.set_num_threads(1)
    defaults = ["train.batch_size=4", "train.steps=12", "train.lr=0.05", "train.schedule=cosine",
                "train.warmup_steps=3", "train.weight_decay=0.01", "train.log_every=2", "runtime.seed=7"]
    ctx = start_run("toy", Config, None, defaults + args.sets, out=args.out, resume=args.resume, device="cpu")
    cfg: Config = ctx.cfg
    data = toy_dataset(cfg.data.num_samples)
    model = toy_model()
    loss_fn = nn.CrossEntropyLoss()

    def step_fn(m: nn.Module, batch: list[torch.Tensor], step: int) -> dict[str, torch.Tensor]:
        if args.kill_at is not None and step == args.kill_at:
            os.kill(os.getpid(), getattr(signal, args.signal))
        x, y = batch
        loss = loss_fn(m(x), y)
        return {"loss": loss, "ce": loss.detach()}

    def loader_fn(epoch: int, start_batch: int) -> torch.utils.data.DataLoader:
        return make_loader(data, cfg.train.batch_size, epoch=epoch, seed=cfg.runtime.seed, start_batch=start_batch)

    def eval_fn(m: nn.Module) -> dict[str, float]:
        cm = ConfusionMatrix(NUM_CLASSES)
        for x, y in make_eval_loader(data, 8):
            cm.update(m(x).argmax(1), y)
        cm.reduce()
        if args.ranks_dir:
            rank = dist.get_dist().rank
            Path(args.ranks_dir, f"cm-rank{rank}.json").write_text(json.dumps(cm.matrix.tolist()))
        return {"acc": accuracy(cm.matrix)}

    trainer = Trainer(ctx, model, cfg.train, step_fn, loader_fn, batches_per_epoch(len(data), cfg.train.batch_size),
                      eval_fn=eval_fn, extra={"class_names": ["a", "b", "c"]})
    trainer.fit()
    if args.ranks_dir:
        rank = dist.get_dist().rank
        torch.save({k: v.detach().clone() for k, v in model.state_dict().items()},
                   Path(args.ranks_dir, f"weights-rank{rank}.pt"))
    dist.cleanup()


if __name__ == "__main__":
    try:
        main(sys.argv[1:])
    except BaseException as exc:  # noqa: BLE001 - mirror the CLI boundary (zsk.core.options.guarded)
        sys.exit(report_error(exc))
