"""The training loop, written once: schedules, AMP, accumulation, clipping, NaN guard, eval, resume, signals.

A task supplies ``step_fn(model, batch, step) -> {"loss": ..., other terms}``, a ``loader_fn(epoch,
start_batch)`` and optionally ``eval_fn(model) -> metrics``; methods with several stages build one
:class:`Trainer` per stage.
"""

from __future__ import annotations

import contextlib
import functools
import json
import math
import os
import random
import signal
import threading
import time
import weakref
from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any, ClassVar, Literal

import numpy as np
import torch
from torch import nn
from torch.utils.data import DataLoader, Dataset

from zsk.core import dist
from zsk.core.checkpoint import load_checkpoint, load_model_state, model_state, save_checkpoint
from zsk.core.device import autocast, autocast_dtype, needs_grad_scaler
from zsk.core.errors import Interrupted, ZskError, ZskFailure
from zsk.core.progress import StepBar, log
from zsk.core.run import RunContext


@dataclass
class TrainConfig:
    """Optimisation keys every task accepts under ``train:`` (tasks subclass and add their own)."""

    batch_size: int = 8
    lr: float = 1e-3
    optimizer: Literal["sgd", "adam", "adamw"] = "adamw"
    momentum: float = 0.9
    nesterov: bool = False
    betas: tuple[float, float] = (0.9, 0.999)
    weight_decay: float = 0.0
    schedule: Literal["constant", "poly", "cosine", "step"] = "constant"
    poly_power: float = 0.9
    min_lr: float = 0.0
    milestones: list[int] = field(default_factory=list)
    gamma: float = 0.1
    warmup_steps: int = 0
    warmup_ratio: float = 1e-6
    epochs: int | None = None
    steps: int | None = None
    max_steps: int | None = None
    grad_accum: int = 1
    # the official total batch (e.g. 16 = 4 per GPU x 4 GPUs): when set, the Trainer accumulates the micro-batches
    # that keep batch_size x grad_accum x GPUs at it on any number of GPUs (grad_accum_for); null: grad_accum as set
    effective_batch: int | None = None
    clip_grad_norm: float | None = None
    eval_every: int = 0
    eval_epoch_end: bool = False  # with eval_every: evaluate at every epoch end too (VSE++ validates both ways)
    log_every: int = 10
    save_every: int = 0
    save_minutes: float = 10.0  # also write last.pt after this many minutes without one (0 = off)
    best_metric: str | None = None
    best_mode: Literal["max", "min"] = "max"
    select: Literal["best", "last"] = "best"  # the weights a stage hands on (zsk.core.stages)
    stages: dict[str, dict[str, Any]] = field(default_factory=dict)  # train.stages.<name>: overrides of train.*

    # Names of the method's stages, in order, and per-stage defaults that sit between train.* and a
    # recipe's train.stages.<name> block (a multi-stage task's TrainConfig sets these).
    STAGES: ClassVar[tuple[str, ...]] = ()
    STAGE_DEFAULTS: ClassVar[dict[str, dict[str, Any]]] = {}

    def __post_init__(self) -> None:
        from zsk.core.stages import validate_stage_blocks

        check_ranges("train", self, positive=("batch_size", "grad_accum", "log_every", "poly_power", "gamma"),
                     non_negative=("lr", "weight_decay", "min_lr", "warmup_steps", "eval_every", "save_every",
                                   "save_minutes"),
                     at_least_one=("epochs", "steps", "max_steps", "effective_batch"), positive_or_none=("clip_grad_norm",))
        if not 0.0 <= self.momentum < 1.0:
            raise ZskError(f"train.momentum must be in [0, 1), got {self.momentum}")
        if not all(0.0 <= b < 1.0 for b in self.betas):
            raise ZskError(f"train.betas must lie in [0, 1), got {list(self.betas)}")
        if not 0.0 <= self.warmup_ratio <= 1.0:
            raise ZskError(f"train.warmup_ratio must be in [0, 1], got {self.warmup_ratio}")
        if any(m < 0 for m in self.milestones) or list(self.milestones) != sorted(self.milestones):
            raise ZskError(f"train.milestones must be increasing step numbers >= 0, got {list(self.milestones)}")
        validate_stage_blocks(self)


def check_ranges(section: str, cfg: Any, *, positive: Sequence[str] = (), non_negative: Sequence[str] = (),
                 at_least_one: Sequence[str] = (), positive_or_none: Sequence[str] = ()) -> None:
    """Range checks of numeric config fields, named ``<section>.<field>`` in the ``ZskError``:
    ``positive`` > 0, ``non_negative`` >= 0, ``at_least_one`` None or >= 1, ``positive_or_none`` None or > 0."""
    import math as _math

    def bad(name: str, want: str) -> ZskError:
        return ZskError(f"{section}.{name} must be {want}, got {getattr(cfg, name)!r}")

    for name in (*positive, *non_negative, *at_least_one, *positive_or_none):
        value = getattr(cfg, name)
        if isinstance(value, float) and not _math.isfinite(value):
            raise bad(name, "a finite number")
    for name in positive:
        if getattr(cfg, name) <= 0:
            raise bad(name, "> 0")
    for name in non_negative:
        if getattr(cfg, name) < 0:
            raise bad(name, ">= 0")
    for name in at_least_one:
        if getattr(cfg, name) is not None and getattr(cfg, name) < 1:
            raise bad(name, ">= 1 (or unset)")
    for name in positive_or_none:
        if getattr(cfg, name) is not None and getattr(cfg, name) <= 0:
            raise bad(name, "> 0 (or unset)")


def lr_factor(step: int, total: int, cfg: TrainConfig, base_lr: float | None = None) -> float:
    """Learning-rate multiplier at optimizer step ``step`` (0-based) of ``total``.

    poly: (1 - t/T)^p (mmseg), cosine: (1 + cos(pi t/T))/2, step: gamma^(#milestones <= t); all decay
    from 1 to ``min_lr/base_lr``; linear warmup multiplies by 1 - (1 - t/W)(1 - warmup_ratio) for t < W.
    ``base_lr`` is the parameter group's own initial lr (``lr * lr_mult``), so ``min_lr`` is an absolute
    floor in every group, as in mmcv's LR hooks.
    """
    base = cfg.lr if base_lr is None else base_lr
    min_ratio = cfg.min_lr / base if base > 0 else 0.0
    t = min(step, total)
    if cfg.schedule == "constant":
        factor = 1.0
    elif cfg.schedule == "poly":
        factor = (1.0 - min_ratio) * (1.0 - t / total) ** cfg.poly_power + min_ratio
    elif cfg.schedule == "cosine":
        factor = min_ratio + (1.0 - min_ratio) * 0.5 * (1.0 + math.cos(math.pi * t / total))
    elif cfg.schedule == "step":
        factor = max(cfg.gamma ** sum(1 for m in cfg.milestones if step >= m), min_ratio)
    else:
        raise ZskError(f"train.schedule: {cfg.schedule!r} is not one of constant, poly, cosine, step")
    if cfg.warmup_steps > 0 and step < cfg.warmup_steps:
        factor *= 1.0 - (1.0 - step / cfg.warmup_steps) * (1.0 - cfg.warmup_ratio)
    return factor


def move_to(batch: Any, device: torch.device, non_blocking: bool = True) -> Any:
    """Move every tensor in a nested batch (dict/list/tuple) to ``device``."""
    if isinstance(batch, torch.Tensor):
        return batch.to(device, non_blocking=non_blocking and device.type == "cuda")
    if isinstance(batch, dict):
        return {k: move_to(v, device, non_blocking) for k, v in batch.items()}
    if isinstance(batch, (list, tuple)) and not (batch and isinstance(batch[0], str)):
        moved = [move_to(v, device, non_blocking) for v in batch]
        return type(batch)(moved) if isinstance(batch, tuple) and not hasattr(batch, "_fields") else moved
    return batch


def batches_per_epoch(num_samples: int, batch_size: int, drop_last: bool = True) -> int:
    """Batches one rank sees per epoch under :func:`make_loader`'s sharding."""
    world = dist.get_dist().world_size
    per_rank = num_samples // world if drop_last else math.ceil(num_samples / world)
    return per_rank // batch_size if drop_last else math.ceil(per_rank / batch_size)


def epoch_batches(num_samples: int, batch_size: int, *, epoch: int, seed: int, shuffle: bool = True,
                  drop_last: bool = True, even_shards: bool = True) -> list[list[int]]:
    """This rank's batches of sample indices for one epoch; the order depends only on (seed, epoch)."""
    info = dist.get_dist()
    if shuffle:
        g = torch.Generator()
        g.manual_seed(seed * 100_003 + epoch)
        order = torch.randperm(num_samples, generator=g).tolist()
    else:
        order = list(range(num_samples))
    if info.world_size > 1:
        if drop_last:
            order = order[: num_samples - num_samples % info.world_size]
        elif even_shards and order:
            pad = (-num_samples) % info.world_size
            order = order + order[:pad]
        order = order[info.rank :: info.world_size]
    batches = [order[i : i + batch_size] for i in range(0, len(order), batch_size)]
    if drop_last:
        batches = [b for b in batches if len(b) == batch_size]
    return batches


def usable_cpus() -> int:
    """CPU cores this process may run on (its affinity mask, not the machine's count)."""
    try:
        return max(1, len(os.sched_getaffinity(0)))
    except AttributeError:  # macOS, Windows
        return max(1, os.cpu_count() or 1)


def worker_count(requested: int) -> int:
    """``runtime.workers`` capped at the cores this process may use (minus the main process), so a
    recipe written for a GPU node does not oversubscribe a laptop."""
    return max(0, min(int(requested), usable_cpus() - 1))


class _EpochBatches:
    """A batch sampler whose batches are replaced each epoch, so one DataLoader (and its persistent
    worker processes) serves the whole run. With workers, each index is paired with a seed derived from
    (seed, epoch, position), and :class:`_Seeded` reseeds the RNGs before loading that sample: random
    augmentations then depend only on those numbers, not on worker count, persistence or resume."""

    def __init__(self) -> None:
        self.batches: list[list[Any]] = []

    def __iter__(self) -> Iterator[list[Any]]:
        return iter(self.batches)

    def __len__(self) -> int:
        return len(self.batches)


class _Seeded(Dataset):
    """Dataset wrapper for worker processes: item ``(index, seed)`` reseeds Python, NumPy and torch."""

    def __init__(self, dataset: Dataset) -> None:
        self.dataset = dataset

    def __len__(self) -> int:
        return len(self.dataset)  # type: ignore[arg-type]

    def __getitem__(self, item: tuple[int, int]) -> Any:
        index, seed = item
        random.seed(seed)
        np.random.seed(seed % 2**32)
        torch.manual_seed(seed)
        return self.dataset[index]


# One persistent DataLoader per (dataset, workers, collate): epochs reuse its worker processes.
_PERSISTENT: dict[tuple[int, int, int], tuple[weakref.ref, DataLoader, _EpochBatches]] = {}


def make_loader(dataset: Dataset, batch_size: int, *, epoch: int = 0, seed: int = 0, shuffle: bool = True,
                drop_last: bool = True, workers: int = 0, collate_fn: Callable | None = None, start_batch: int = 0,
                batch_sampler: Sequence[Sequence[int]] | None = None, even_shards: bool = True) -> DataLoader:
    """A DataLoader whose batch order depends only on (seed, epoch), sharded over ranks, starting at
    ``start_batch`` without loading the skipped batches (exact resume). ``workers`` is capped at the
    usable cores; with workers the loader and its processes persist across epochs, memory is pinned
    on CUDA, and each sample's randomness is seeded from (seed, epoch, position)."""
    if batch_sampler is None:
        batches: list = epoch_batches(len(dataset), batch_size, epoch=epoch, seed=seed, shuffle=shuffle,  # type: ignore[arg-type]
                                      drop_last=drop_last, even_shards=even_shards)
    else:
        batches = [list(b) for b in batch_sampler]
    rank = dist.get_dist().rank
    workers = worker_count(workers)
    if workers == 0:
        g = torch.Generator()
        g.manual_seed(seed * 100_003 + epoch * 1_009 + start_batch * 7 + rank)
        return DataLoader(dataset, batch_sampler=batches[start_batch:], num_workers=0, collate_fn=collate_fn,
                          pin_memory=torch.cuda.is_available(), generator=g)
    base = (seed * 100_003 + epoch * 1_009) * 65_537 + rank * 1_000_003
    # an item is an index, or what a task's batch sampler yields (medseg: (index, seed) pairs), passed on as is
    seeded = [[(i if isinstance(i, (tuple, list)) else int(i), (base + b * 4_099 + j) % 2**63) for j, i in enumerate(batch)]
              for b, batch in enumerate(batches)][start_batch:]
    key = (id(dataset), workers, id(collate_fn))
    cached = _PERSISTENT.get(key)
    if cached is None or cached[0]() is not dataset:
        sampler = _EpochBatches()
        # its own generator: a DataLoader without one draws its base seed from the global RNG at every epoch's
        # iterator, which would shift dropout and every later draw, so results would depend on the worker count
        loader = DataLoader(_Seeded(dataset), batch_sampler=sampler, num_workers=workers, collate_fn=collate_fn,
                            pin_memory=torch.cuda.is_available(), persistent_workers=True,
                            generator=torch.Generator().manual_seed(seed * 100_003 + rank))
        while len(_PERSISTENT) >= 4:  # bounded: an old run's loader (and its workers) is released
            _PERSISTENT.pop(next(iter(_PERSISTENT)))
        _PERSISTENT[key] = cached = (weakref.ref(dataset), loader, sampler)
    _, loader, sampler = cached
    sampler.batches = seeded
    return loader


def make_eval_loader(dataset: Dataset, batch_size: int, workers: int = 0, collate_fn: Callable | None = None,
                     sharded: bool = True) -> DataLoader:
    """In-order loader for evaluation, split across ranks without padding (every sample counted once),
    or the whole dataset on every rank with ``sharded=False``. Like :func:`make_loader` it draws nothing
    from the global RNG, so an evaluation in the middle of training leaves a resumed run exact."""
    batches = None
    if not sharded:
        n = len(dataset)  # type: ignore[arg-type]
        batches = [list(range(i, min(i + batch_size, n))) for i in range(0, n, batch_size)]
    return make_loader(dataset, batch_size, shuffle=False, drop_last=False, workers=workers, collate_fn=collate_fn,
                       even_shards=False, batch_sampler=batches)


def rng_state() -> dict:
    """Python, NumPy and torch RNG states as tensors and primitives (checkpoint-safe)."""
    version, internal, gauss = random.getstate()
    np_state = np.random.get_state()
    state: dict[str, Any] = {
        "python": [version, list(internal), gauss],
        "numpy": {"keys": torch.from_numpy(np_state[1].astype(np.int64)), "pos": int(np_state[2]),
                  "has_gauss": int(np_state[3]), "cached_gaussian": float(np_state[4])},
        "torch": torch.get_rng_state(),
    }
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def set_rng_state(state: dict) -> None:
    """Restore what :func:`rng_state` saved."""
    version, internal, gauss = state["python"]
    random.setstate((version, tuple(internal), gauss))
    n = state["numpy"]
    np.random.set_state(("MT19937", n["keys"].numpy().astype(np.uint32), n["pos"], n["has_gauss"], n["cached_gaussian"]))
    torch.set_rng_state(state["torch"])
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


def build_optimizer(params: list[dict], cfg: TrainConfig) -> torch.optim.Optimizer:
    """SGD / Adam / AdamW over parameter groups; a group's ``lr_mult`` scales ``train.lr``; its ``repeat``
    (default 1) makes the Trainer step it that many times per step (:func:`step_repeated`)."""
    groups = []
    for g in params:
        group = {k: v for k, v in g.items() if k != "lr_mult"}
        group["params"] = [p for p in g["params"] if p.requires_grad]
        group["lr"] = cfg.lr * g.get("lr_mult", 1.0)
        group.setdefault("weight_decay", cfg.weight_decay)
        group["lr_mult"] = g.get("lr_mult", 1.0)
        if group["params"]:
            groups.append(group)
    if not groups:
        raise ZskFailure("the model has no trainable parameters")
    if cfg.optimizer == "sgd":
        return torch.optim.SGD(groups, lr=cfg.lr, momentum=cfg.momentum, nesterov=cfg.nesterov)
    if cfg.optimizer == "adam":
        return torch.optim.Adam(groups, lr=cfg.lr, betas=tuple(cfg.betas))
    return torch.optim.AdamW(groups, lr=cfg.lr, betas=tuple(cfg.betas))


def clip_grad_norm_repeated_(param_groups: Sequence[dict], max_norm: float) -> torch.Tensor:
    """``clip_grad_norm_`` over an optimizer's parameter list in which a group with ``"repeat": r`` lists each
    of its parameters r times (official code that puts a module into the list twice, e.g. VSRN_LSEH model.py):
    such a gradient enters the 2-norm r times and, when clipped, is multiplied by the coefficient r times, as
    torch's loop over the list does. Returns the total norm."""
    entries = [(p.grad.detach(), int(g.get("repeat", 1))) for g in param_groups for p in g["params"]
               if p.grad is not None]
    if not entries:
        return torch.zeros(())
    device = entries[0][0].device
    norms = [torch.linalg.vector_norm(grad, 2.0).to(device) for grad, r in entries for _ in range(r)]
    total = torch.linalg.vector_norm(torch.stack(norms), 2.0)
    coef = torch.clamp(max_norm / (total + 1e-6), max=1.0)
    for grad, r in entries:
        for _ in range(r):
            grad.mul_(coef.to(grad.device))
    return total


def step_repeated(optimizer: torch.optim.Optimizer) -> None:
    """One optimizer step in which a parameter group with ``"repeat": r`` is stepped r times with the same
    gradients, each time a full update (step count, moments, parameters), as torch's for-loop optimizers
    update a parameter that their list holds r times; the other groups step once."""
    optimizer.step()
    groups = optimizer.param_groups
    for k in range(1, max(int(g.get("repeat", 1)) for g in groups)):
        # the groups already stepped often enough sit this one out: a parameter without gradient is skipped
        resting = [(p, p.grad) for g in groups if int(g.get("repeat", 1)) <= k for p in g["params"]]
        for p, _ in resting:
            p.grad = None
        try:
            optimizer.step()
        finally:
            for p, grad in resting:
                p.grad = grad


class Callback:
    """Side effects around the loop (snapshots, example pools), kept out of the pure step and eval
    functions. Subclass and override what you need; state that must survive a resume belongs in
    ``trainer.extra`` (saved in every checkpoint)."""

    def on_step_end(self, trainer: Trainer, out: dict[str, torch.Tensor]) -> None:
        """After each optimizer step (``trainer.step`` already counts it); ``out``: the step's terms."""

    def on_eval_end(self, trainer: Trainer, metrics: dict[str, Any]) -> None:
        """After each evaluation (best checkpoint already written)."""


class _SignalWatch:
    """Remember SIGTERM/SIGINT (and SIGUSR1, what SLURM's ``--signal`` sends before a time limit or a
    preemption) so the loop can finish its step, write ``last.pt`` and exit 143/130/138."""

    def __init__(self) -> None:
        self.received: int | None = None
        self._previous: dict[int, Any] = {}

    def __enter__(self) -> _SignalWatch:
        if threading.current_thread() is threading.main_thread():
            for sig in (signal.SIGTERM, signal.SIGINT, getattr(signal, "SIGUSR1", None)):
                if sig is not None:
                    self._previous[sig] = signal.signal(sig, self._handle)
        return self

    def _handle(self, signum: int, frame: Any) -> None:
        if self.received is not None and signum == signal.SIGINT:
            raise KeyboardInterrupt  # a second Ctrl-C stops at once
        self.received = signum

    def __exit__(self, *exc: object) -> None:
        for sig, handler in self._previous.items():
            signal.signal(sig, handler)

    @property
    def exit_code(self) -> int:
        return 128 + int(self.received or 0)


def grad_accum_for(tcfg: TrainConfig) -> int:
    """``train.grad_accum``, or, when ``train.effective_batch`` is set (the official total batch, e.g. 16 = 4
    per GPU x 4 GPUs), the accumulation that keeps batch x accumulation x GPUs at it on any number of GPUs."""
    effective = tcfg.effective_batch
    if effective is None:
        return tcfg.grad_accum
    per_step = tcfg.batch_size * dist.get_dist().world_size
    if effective % per_step:
        raise ZskError(f"train.effective_batch={effective} is not a multiple of train.batch_size x GPUs "
                       f"= {per_step}; change train.batch_size or train.effective_batch")
    return effective // per_step


class Trainer:
    """One training stage: optimizer, schedule, AMP, accumulation, eval, checkpoints, resume, signals."""

    def __init__(self, ctx: RunContext, model: nn.Module, cfg: TrainConfig,
                 step_fn: Callable[[nn.Module, Any, int], dict[str, torch.Tensor]],
                 loader_fn: Callable[[int, int], Iterable], steps_per_epoch: int,
                 eval_fn: Callable[[nn.Module], dict[str, float]] | None = None,
                 param_groups: list[dict] | None = None, extra: dict | None = None,
                 exclude_prefixes: tuple[str, ...] = (), stage: str = "",
                 find_unused_parameters: bool = False, callbacks: Sequence[Callback] = (),
                 preview_fn: Callable[[nn.Module], dict[str, np.ndarray]] | None = None) -> None:
        self.ctx = ctx
        if cfg.effective_batch is not None:  # the accumulation this batch size and GPU count need
            cfg = replace(cfg, grad_accum=grad_accum_for(cfg))
        self.cfg = cfg
        self.device = ctx.device
        self.model = model.to(self.device)
        self.step_fn = step_fn
        self.loader_fn = loader_fn
        self.eval_fn = eval_fn
        self.preview_fn = preview_fn
        self.extra = dict(extra or {})
        self.exclude_prefixes = tuple(exclude_prefixes)
        self.stage = stage
        self.batches_per_epoch = steps_per_epoch
        if steps_per_epoch <= 0:
            raise ZskError(f"training data gives no full batch per epoch (train.batch_size={cfg.batch_size} is larger "
                           f"than the training set per process): lower train.batch_size or add data")
        if cfg.grad_accum < 1:
            raise ZskError("train.grad_accum must be >= 1")
        self.optim_steps_per_epoch = max(1, steps_per_epoch // cfg.grad_accum)
        if cfg.steps is not None:
            self.total_steps = cfg.steps
        elif cfg.epochs is not None:
            self.total_steps = cfg.epochs * self.optim_steps_per_epoch
        else:
            raise ZskError("the recipe sets neither train.steps nor train.epochs: set one (e.g. --set train.steps=1000)")
        if self.total_steps <= 0:
            raise ZskError(f"train.steps/train.epochs give {self.total_steps} optimizer steps; need at least 1")
        self.stop_at = min(self.total_steps, cfg.max_steps) if cfg.max_steps is not None else self.total_steps
        runtime = getattr(ctx.cfg, "runtime", None)
        self.amp_dtype = autocast_dtype(self.device, getattr(runtime, "precision", "auto"))
        self.scaler = torch.amp.GradScaler("cuda") if needs_grad_scaler(self.device, self.amp_dtype) else None
        groups = param_groups if param_groups is not None else [{"params": list(self.model.parameters())}]
        self.optimizer = build_optimizer(groups, cfg)
        # a group with "repeat": r stands for an official parameter list that holds its parameters r times
        repeats = [int(g.get("repeat", 1)) for g in self.optimizer.param_groups]
        if min(repeats) < 1:
            raise ZskFailure(f"a parameter group's 'repeat' must be >= 1, got {min(repeats)}")
        self._repeat = max(repeats)
        if self._repeat > 1 and self.scaler is not None:
            raise ZskError("stepping a parameter group repeatedly (an official optimizer list that holds parameters "
                           "twice) is not supported with fp16's grad scaler: set runtime.precision=fp32 (or bf16)")
        self.scheduler = torch.optim.lr_scheduler.LambdaLR(
            self.optimizer, [functools.partial(lr_factor, total=self.total_steps, cfg=cfg, base_lr=g["lr"])
                             for g in self.optimizer.param_groups])
        self.ddp_model = dist.wrap_ddp(self.model, self.device, find_unused_parameters=find_unused_parameters)
        self.step = 0
        self.epoch = 0
        self.batch_in_epoch = 0
        self.best: dict[str, Any] = {}
        self.last_metrics: dict[str, float] = {}
        self._bad = torch.zeros((), dtype=torch.bool, device=self.device)
        self._sums: dict[str, torch.Tensor] = {}
        self._count = 0
        self._bad_terms: list[str] = []
        self._step_lr = self.optimizer.param_groups[0]["lr"]  # the lr the latest optimizer step used
        self._step_lrs = [g["lr"] for g in self.optimizer.param_groups]
        self.callbacks = list(callbacks)
        self._micro = 0
        self._last_save = time.monotonic()
        # experiment trackers (runtime.loggers): a missing package fails here, before any training
        self.logger_names = [n for n in getattr(runtime, "loggers", ["jsonl"]) if n != "jsonl"]
        if self.logger_names and dist.is_main():
            from zsk.core.loggers import check_available

            check_available(self.logger_names)
        self._loggers: list[Any] | None = None

    # ----------------------------------------------------------------- files
    def _name(self, base: str) -> str:
        return f"{base}-{self.stage}.pt" if self.stage else f"{base}.pt"

    @property
    def last_path(self) -> Path:
        return self.ctx.run_dir / self._name("last")

    @property
    def best_path(self) -> Path:
        return self.ctx.run_dir / self._name("best")

    def state_dict(self) -> dict[str, Any]:
        """The full training state (checkpoint-safe: tensors and primitives)."""
        return {
            "task": self.ctx.task,
            "stage": self.stage,
            "recipe": {k: v for k, v in self.ctx.recipe.items() if k != "_source"},
            "model": model_state(self.model, self.exclude_prefixes),
            "optimizer": self.optimizer.state_dict(),
            "scheduler": self.scheduler.state_dict(),
            "scaler": self.scaler.state_dict() if self.scaler is not None else None,
            "step": self.step,
            "epoch": self.epoch,
            "batch_in_epoch": self.batch_in_epoch,
            "total_steps": self.total_steps,
            "rng": rng_state(),
            "best": dict(self.best),
            "metrics": dict(self.last_metrics),
            "extra": self.extra,
            # the loss sums since the last log row: a resumed run's next row averages the same steps
            "log": {"sums": {k: float(v.item()) for k, v in self._sums.items()}, "count": self._count},
        }

    def save(self, path: Path) -> None:
        """Write a checkpoint of the current state (rank 0 only)."""
        self._check_finite()
        if dist.is_main():
            save_checkpoint(path, self.state_dict())
        if path == self.last_path:
            self._last_save = time.monotonic()

    def load(self, path: Path) -> None:
        """Restore the training state saved by :meth:`save`."""
        state = load_checkpoint(path)
        if state.get("stage", "") != self.stage:
            raise ZskError(f"{path} is a checkpoint of stage {state.get('stage')!r}, not {self.stage!r}")
        load_model_state(self.model, state["model"], self.exclude_prefixes, source=str(path))
        try:
            self.optimizer.load_state_dict(state["optimizer"])
        except (ValueError, KeyError) as e:
            raise ZskError(f"{path}: its optimizer state does not fit this run's parameters ({e}); resume with the "
                           "recipe the run was started with, or start a new run") from None
        self.scheduler.load_state_dict(state["scheduler"])
        if self.scaler is not None and state.get("scaler"):
            self.scaler.load_state_dict(state["scaler"])
        self.step, self.epoch, self.batch_in_epoch = state["step"], state["epoch"], state["batch_in_epoch"]
        self.best = dict(state.get("best") or {})
        self.last_metrics = dict(state.get("metrics") or {})
        # the checkpoint's `extra` wins: tasks may keep training state there (e.g. a growing example pool)
        self.extra.update(state.get("extra") or {})
        set_rng_state(state["rng"])
        saved_log = state.get("log") or {}
        self._sums = {k: torch.tensor(v, device=self.device) for k, v in (saved_log.get("sums") or {}).items()}
        self._count = int(saved_log.get("count", 0))
        self._truncate_log()

    def _truncate_log(self) -> None:
        """Drop the rows a killed run wrote after its checkpoint (this stage, later steps), so that after
        the resume metrics.jsonl reads as one uninterrupted run."""
        path = self.ctx.run_dir / "metrics.jsonl"
        if not dist.is_main() or not path.is_file():
            return
        lines = path.read_text(encoding="utf-8").splitlines()
        keep = []
        for line in lines:
            try:
                row = json.loads(line)
            except json.JSONDecodeError:
                continue  # a line cut short by the kill
            if row.get("stage", "") == self.stage and int(row.get("step", 0)) > self.step:
                continue
            keep.append(line)
        if len(keep) != len(lines):
            from zsk.core.io import atomic_open

            with atomic_open(path, "w") as f:
                f.write("".join(line + "\n" for line in keep))

    def _log_jsonl(self, record: dict, tracked: dict | None = None) -> None:
        """Append ``record`` to metrics.jsonl and send it, with ``tracked`` (tracker-only keys), to the
        ``runtime.loggers`` backends (rank 0)."""
        if dist.is_main():
            with open(self.ctx.run_dir / "metrics.jsonl", "a", encoding="utf-8") as f:
                f.write(json.dumps(record) + "\n")
            self._log_trackers({**record, **(tracked or {})})

    def _open_loggers(self, resume_step: int | None = None) -> None:
        """Open the ``runtime.loggers`` backends (rank 0; once per Trainer); ``resume_step``: continue there."""
        if self._loggers is None and self.logger_names and dist.is_main():
            from zsk.core.loggers import open_loggers

            self._loggers = open_loggers(self.logger_names, self.ctx.run_dir, stage=self.stage, resume_step=resume_step)

    def _log_trackers(self, record: dict) -> None:
        if not self.logger_names:
            return
        self._open_loggers()
        for logger in self._loggers or []:
            logger.log(record, int(record.get("step", self.step)))

    def _log_previews(self) -> None:
        """Send ``preview_fn``'s pictures (a few predictions beside their images and ground truth) to the
        experiment trackers, tagged ``[<stage>/]preview/<name>`` (rank 0, only when a tracker is on)."""
        if self.preview_fn is None or not self.logger_names or not dist.is_main():
            return
        self.model.eval()
        with torch.no_grad():
            images = self.preview_fn(self.model)
        self.model.train()
        prefix = f"{self.stage}/preview" if self.stage else "preview"
        tagged = {f"{prefix}/{name}": img for name, img in images.items()}
        self._open_loggers()
        for logger in self._loggers or []:
            logger.log_images(tagged, self.step)

    def close_loggers(self) -> None:
        """Flush and close the experiment trackers (the end of :meth:`fit`, or an interrupted one)."""
        for logger in self._loggers or []:
            logger.close()
        self._loggers = None

    # ----------------------------------------------------------------- loop pieces
    def _check_finite(self) -> None:
        if bool(self._bad.item()):
            terms = ", ".join(self._bad_terms) or "loss"
            raise ZskFailure(f"training diverged: non-finite {terms} by step {self.step}"
                             f"{' of stage ' + self.stage if self.stage else ''}; lower train.lr, enable "
                             f"train.clip_grad_norm or check the data (last good checkpoint: {self.last_path})")

    def _accumulate(self, out: dict[str, torch.Tensor]) -> None:
        for k, v in out.items():
            if not isinstance(v, torch.Tensor) or v.numel() != 1:
                continue
            v = v.detach().float().reshape(())
            finite = torch.isfinite(v)
            if self.device.type == "cpu" and not bool(finite):
                self._bad_terms.append(k)
            self._bad |= ~finite
            self._sums[k] = self._sums.get(k, torch.zeros((), device=self.device)) + v
        self._count += 1

    def _flush_log(self, t0: float, samples: int) -> None:
        self._check_finite()
        if self._count == 0:
            return
        record: dict[str, Any] = {"kind": "train", "step": self.step, "epoch": self.epoch,
                                  "lr": self._step_lr}
        for i, lr in enumerate(self._step_lrs):  # every parameter group's lr ("lr" stays group 0)
            record[f"lr/{i}"] = lr
        if self.stage:
            record["stage"] = self.stage
        for k, v in self._sums.items():
            record[k] = float(v.item()) / self._count
        elapsed = max(time.perf_counter() - t0, 1e-9)
        record["steps_per_s"] = self._count / self.cfg.grad_accum / elapsed
        # samples of every rank per second: for the trackers only (metrics.jsonl keeps its one timing key)
        tracked = {"samples_per_s": samples * dist.get_dist().world_size / elapsed} if samples > 0 else {}
        self._log_jsonl(record, tracked)
        terms = " ".join(f"{k}={record[k]:.4g}" for k in self._sums)
        log(f"{self.stage + ' ' if self.stage else ''}step {self.step}/{self.stop_at} {terms} lr={record['lr']:.3g}")
        self._sums, self._count = {}, 0
        return

    def evaluate(self) -> dict[str, float]:
        """Run ``eval_fn`` on the plain model, log the metrics, keep ``best``."""
        if self.eval_fn is None:
            return {}
        self.model.eval()
        with torch.no_grad():
            metrics = {k: float(v) if isinstance(v, (int, float)) else v for k, v in self.eval_fn(self.model).items()}
        self.model.train()
        self.last_metrics = metrics
        record = {"kind": "eval", "step": self.step, "epoch": self.epoch, **metrics}
        if self.stage:
            record["stage"] = self.stage
        self._log_jsonl(record)
        scalars = {k: v for k, v in metrics.items() if isinstance(v, float)}
        key = self.cfg.best_metric or next(iter(scalars), None)
        if key is not None:
            if key not in scalars:
                raise ZskError(f"train.best_metric {key!r} is not among the evaluation metrics: {', '.join(scalars)}")
            value = scalars[key]
            better = (not self.best or (value > self.best["value"] if self.cfg.best_mode == "max" else value < self.best["value"]))
            if better:
                self.best = {"metric": key, "value": value, "step": self.step}
                self.save(self.best_path)
        log("eval " + " ".join(f"{k}={v:.4g}" for k, v in scalars.items()))
        self._log_previews()
        for cb in self.callbacks:
            cb.on_eval_end(self, metrics)
        return metrics

    # ----------------------------------------------------------------- one step
    def train_step(self, batch: Any) -> dict[str, torch.Tensor]:
        """One micro-batch of training, exactly as :meth:`fit` runs it: the step function under autocast,
        the (scaled) backward divided by ``grad_accum``, and after ``grad_accum`` micro-batches the
        optimizer step (clipping, GradScaler, LR schedule). ``zsk bench`` times this method."""
        accum = self.cfg.grad_accum
        sync = self._micro + 1 == accum
        no_sync = self.ddp_model.no_sync if (not sync and self.ddp_model is not self.model) else contextlib.nullcontext
        with no_sync():
            with autocast(self.device, self.amp_dtype):
                out = self.step_fn(self.ddp_model, batch, self.step)
            if "loss" not in out:
                raise ZskFailure("the step function returned no 'loss'")
            loss = out["loss"].float() / accum
            (self.scaler.scale(loss) if self.scaler is not None else loss).backward()
        self._accumulate(out)
        self._micro += 1
        if self._micro < accum:
            return out
        self._micro = 0
        if self.cfg.clip_grad_norm:
            if self.scaler is not None:
                self.scaler.unscale_(self.optimizer)
            if self._repeat > 1:
                clip_grad_norm_repeated_(self.optimizer.param_groups, self.cfg.clip_grad_norm)
            else:
                torch.nn.utils.clip_grad_norm_(self.model.parameters(), self.cfg.clip_grad_norm)
        if self.scaler is not None:
            self.scaler.step(self.optimizer)
            self.scaler.update()
        elif self._repeat > 1:
            step_repeated(self.optimizer)
        else:
            self.optimizer.step()
        self.optimizer.zero_grad(set_to_none=True)
        self._step_lr = self.optimizer.param_groups[0]["lr"]
        self._step_lrs = [g["lr"] for g in self.optimizer.param_groups]
        self.scheduler.step()
        self.step += 1
        return out

    # ----------------------------------------------------------------- main loop
    def fit(self) -> dict[str, float]:
        """Train to ``train.steps``/``train.epochs`` (or ``train.max_steps``) and return the final metrics."""
        try:
            return self._fit()
        finally:
            self.close_loggers()

    def _fit(self) -> dict[str, float]:
        if self.ctx.resume and self.last_path.is_file():
            self.load(self.last_path)
            log(f"resumed {self.last_path} at step {self.step}")
            self.ctx.commit_recipe()  # the run is known to continue: now its recipe.yaml may change
            if self.step >= self.stop_at:
                return self.last_metrics
        # trackers continue a resumed run: TensorBoard drops its events after the checkpoint's step
        self._open_loggers(resume_step=self.step + 1 if self.step > 0 else None)
        self.model.train()
        t0, samples = time.perf_counter(), 0
        empty_epochs = 0
        with _SignalWatch() as sig, StepBar(self.stop_at, self.stage or "train", start=self.step) as bar:
            while self.step < self.stop_at:
                produced = False
                for batch in self.loader_fn(self.epoch, self.batch_in_epoch):
                    produced = True
                    batch = move_to(batch, self.device)
                    self.batch_in_epoch += 1
                    samples += _batch_len(batch)
                    before = self.step
                    out = self.train_step(batch)
                    if self.step == before:
                        continue
                    if self.device.type == "cpu":
                        self._check_finite()
                    bar.update(self.step)
                    for cb in self.callbacks:
                        cb.on_step_end(self, out)
                    done = self.step >= self.stop_at
                    if self.step % max(1, self.cfg.log_every) == 0 or done:
                        self._flush_log(t0, samples)
                        t0, samples = time.perf_counter(), 0
                    if self.cfg.eval_every and self.step % self.cfg.eval_every == 0 and not done:
                        self.evaluate()
                        self.save(self.last_path)
                    elif self.cfg.save_every and self.step % self.cfg.save_every == 0:
                        self.save(self.last_path)
                    elif self.cfg.save_minutes and time.monotonic() - self._last_save >= 60 * self.cfg.save_minutes:
                        self.save(self.last_path)  # a kill -9 loses at most this much training
                    if sig.received is not None:
                        self.save(self.last_path)  # with the loss sums of the unlogged steps (no off-grid row)
                        dist.barrier()
                        raise Interrupted(sig.exit_code, f"stopped by signal {sig.received} at step {self.step}; "
                                          f"continue with --resume --out {self.ctx.run_dir}")
                    if done:
                        break
                else:
                    # the epoch's batches are exhausted
                    self.epoch += 1
                    self.batch_in_epoch = 0
                    empty_epochs = 0 if produced else empty_epochs + 1
                    if empty_epochs > 1:
                        raise ZskError("the training loader yields no batches: check the training split and train.batch_size")
                    at_epoch_end = not self.cfg.eval_every or (self.cfg.eval_epoch_end and self.step % self.cfg.eval_every)
                    if at_epoch_end and self.cfg.epochs is not None and self.step < self.stop_at:
                        self.evaluate()
                        self.save(self.last_path)
                    continue
                break
        metrics = self.evaluate()
        self.save(self.last_path)
        if self.eval_fn is None or not self.best_path.exists():
            # no evaluation: the final weights are the best we have
            if dist.is_main():
                save_checkpoint(self.best_path, self.state_dict())
        if dist.is_main():
            summary = {"step": self.step, "best": self.best, **{k: v for k, v in metrics.items()}}
            if self.stage:
                summary["stage"] = self.stage
            name = f"eval-{self.stage}.json" if self.stage else "eval.json"
            (self.ctx.run_dir / name).write_text(json.dumps(summary, indent=2, default=float))
        dist.barrier()
        return metrics


def _batch_len(batch: Any) -> int:
    """Samples in a batch: the first dimension of its first tensor (0 when there is none)."""
    if isinstance(batch, torch.Tensor):
        return int(batch.shape[0]) if batch.dim() else 0
    values = batch.values() if isinstance(batch, dict) else batch if isinstance(batch, (list, tuple)) else ()
    for v in values:
        n = _batch_len(v)
        if n:
            return n
    return 0


def export_checkpoint(ctx: RunContext, model: nn.Module, path: Path, extra: dict | None = None,
                      metrics: dict | None = None, exclude_prefixes: tuple[str, ...] = ()) -> None:
    """Write an inference checkpoint (weights + recipe + extra) outside a Trainer, e.g. after the last
    stage of a multi-stage method (rank 0 only)."""
    if dist.is_main():
        save_checkpoint(path, {"task": ctx.task, "stage": "", "recipe": {k: v for k, v in ctx.recipe.items() if k != "_source"},
                               "model": model_state(model, exclude_prefixes), "extra": dict(extra or {}),
                               "metrics": dict(metrics or {}), "step": 0})
