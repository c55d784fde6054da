"""``zsk bench``: train/inference throughput, peak memory and model FLOPs utilisation (MFU).

MFU is measured against a dense matmul peak timed on the same device, in the same dtype, in the same
run, so the figure is honest on any machine (datasheet peaks are never reached in practice).
"""

from __future__ import annotations

import resource
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import torch
from torch import nn
from torch.utils.flop_counter import FlopCounterMode, flop_registry

from zsk.core.device import autocast


@dataclass
class BenchSpec:
    """What a task hands to ``zsk bench``: the model, step function and train settings the recipe
    trains with, one synthetic batch of the recipe's real input size, and an inference closure.

    ``zsk bench`` builds the real :class:`zsk.core.trainer.Trainer` from these and times its
    ``train_step`` (optimizer, AMP and GradScaler, accumulation and clipping of the recipe): one timed
    train step is one optimizer step, i.e. ``train.grad_accum`` micro-batches.
    """

    model: nn.Module
    step_fn: Callable[[nn.Module, Any, int], dict[str, torch.Tensor]]
    batch: Any
    train_cfg: Any  # the stage's zsk.core.trainer.TrainConfig
    infer_step: Callable[[], None]
    train_samples: int  # samples per micro-batch
    infer_samples: int
    param_groups: list[dict] | None = None
    exclude_prefixes: tuple[str, ...] = ()
    unit: str = "samples"
    infer_unit: str | None = None
    extra: Callable[[], dict] | None = None


def trainer_step(spec: BenchSpec, cfg: Any, device: torch.device) -> tuple[Callable[[], None], Any]:
    """A closure running one optimizer step of the real Trainer on ``spec.batch`` (``grad_accum``
    micro-batches), and the Trainer itself. ``cfg`` is the task's Config (its ``runtime.precision``
    picks AMP as in training)."""
    import dataclasses
    import tempfile
    from pathlib import Path

    from zsk.core import dist
    from zsk.core.run import RunContext
    from zsk.core.trainer import Trainer, move_to

    train_cfg = dataclasses.replace(spec.train_cfg, steps=10**9, epochs=None, max_steps=None, stages={})
    ctx = RunContext(task="bench", cfg=cfg, recipe={}, run_dir=Path(tempfile.gettempdir()), device=device,
                     dist=dist.get_dist())
    trainer = Trainer(ctx, spec.model, train_cfg, spec.step_fn, lambda epoch, start: [], 1,
                      param_groups=spec.param_groups, exclude_prefixes=spec.exclude_prefixes)
    batch = move_to(spec.batch, device)
    trainer.model.train()

    def step() -> None:
        for _ in range(train_cfg.grad_accum):
            trainer.train_step(batch)

    return step, trainer


def count_params(model: nn.Module) -> tuple[int, int]:
    """(total, trainable) parameter counts."""
    total = sum(p.numel() for p in model.parameters())
    trainable = sum(p.numel() for p in model.parameters() if p.requires_grad)
    return total, trainable


def _sparse_aware(packet: object, a: int, b: int) -> Callable[..., int]:
    """A raw-tensor FLOP formula for a matmul-like op whose operands are ``args[a] @ args[b]``: with a
    sparse operand it counts 2·nnz·d (what the kernel does), otherwise torch's dense formula."""
    dense = flop_registry.get(packet)

    def formula(*args: object, out_val: object = None, **kwargs: object) -> int:
        left, right = args[a], args[b]
        if isinstance(left, torch.Tensor) and left.layout != torch.strided:
            return 2 * int(left._nnz()) * int(right.shape[-1])  # type: ignore[union-attr]
        if isinstance(right, torch.Tensor) and right.layout != torch.strided:
            return 2 * int(right._nnz()) * int(left.shape[0])  # type: ignore[union-attr]
        return int(dense(*args, out_val=out_val, **kwargs)) if dense is not None else 0

    formula._get_raw = True  # type: ignore[attr-defined]
    return formula


# torch books a sparse x dense product as the dense product of the same shapes; graph methods
# (gzsl) would report FLOPs (and MFU) thousands of times too high.
_SPARSE_AWARE = {
    torch.ops.aten.mm: _sparse_aware(torch.ops.aten.mm, 0, 1),
    torch.ops.aten.addmm: _sparse_aware(torch.ops.aten.addmm, 1, 2),
    torch.ops.aten._sparse_addmm: _sparse_aware(torch.ops.aten._sparse_addmm, 1, 2),
}


def count_flops(fn: Callable[[], object]) -> float:
    """FLOPs of one call of ``fn`` (forward and backward ops seen by torch's flop counter); a sparse
    matrix times a dense one counts 2·nnz·d."""
    with FlopCounterMode(display=False, custom_mapping=_SPARSE_AWARE) as counter:
        fn()
    return float(counter.get_total_flops())


def synchronize(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)
    elif device.type == "mps":
        torch.mps.synchronize()


def matmul_peak(device: torch.device, dtype: torch.dtype | None, seconds: float = 1.0) -> float:
    """Achieved FLOP/s of a large square matmul on ``device`` in ``dtype`` (fp32 when None)."""
    dt = dtype or torch.float32
    n = 8192 if device.type == "cuda" else 1024
    a = torch.randn(n, n, device=device, dtype=dt)
    b = torch.randn(n, n, device=device, dtype=dt)
    for _ in range(3):
        a @ b
    synchronize(device)
    reps, t0 = 0, time.perf_counter()
    while True:
        a @ b
        reps += 1
        if reps % 4 == 0:
            synchronize(device)
            if time.perf_counter() - t0 > seconds:
                break
    elapsed = time.perf_counter() - t0
    return 2.0 * n**3 * reps / elapsed


def _timed(fn: Callable[[], None], steps: int, device: torch.device, dtype: torch.dtype | None) -> float:
    with autocast(device, dtype):
        fn()  # warm-up (allocations, kernels, caches)
        fn()
    synchronize(device)
    t0 = time.perf_counter()
    with autocast(device, dtype):
        for _ in range(steps):
            fn()
    synchronize(device)
    return (time.perf_counter() - t0) / steps


def peak_memory_mb(device: torch.device) -> float:
    """Peak device memory (CUDA) or peak resident set size of the process (CPU), in MiB."""
    if device.type == "cuda":
        return torch.cuda.max_memory_allocated(device) / 2**20
    rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return rss / 2**20 if sys.platform == "darwin" else rss / 1024


def run_bench(spec: BenchSpec, steps: int, device: torch.device, dtype: torch.dtype | None, cfg: Any) -> dict:
    """Time ``steps`` optimizer steps of the Trainer and ``steps`` inference calls; count FLOPs;
    compare with the matmul peak. ``cfg``: the task's Config (runtime settings of the recipe)."""
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)
    train_step, trainer = trainer_step(spec, cfg, device)
    train_s = _timed(train_step, steps, device, None)  # the Trainer applies the recipe's autocast itself
    infer_s = _timed(spec.infer_step, steps, device, dtype)
    train_flops = count_flops(train_step)
    with autocast(device, dtype):
        infer_flops = count_flops(spec.infer_step)
    peak = matmul_peak(device, dtype)
    infer_unit = spec.infer_unit or spec.unit
    out = {
        "device": str(device),
        "dtype": str(dtype or torch.float32).replace("torch.", ""),
        "steps": steps,
        "optimizer": trainer.cfg.optimizer,
        "grad_accum": trainer.cfg.grad_accum,
        "train_step_s": train_s,
        "train_steps_per_s": 1.0 / train_s,
        f"train_{spec.unit}_per_s": spec.train_samples * trainer.cfg.grad_accum / train_s,
        "infer_call_s": infer_s,
        f"infer_{infer_unit}_per_s": spec.infer_samples / infer_s,
        "train_gflops_per_step": train_flops / 1e9,
        "infer_gflops_per_call": infer_flops / 1e9,
        "matmul_peak_tflops": peak / 1e12,
        "train_tflops": train_flops / train_s / 1e12,
        "infer_tflops": infer_flops / infer_s / 1e12,
        "train_mfu": train_flops / train_s / peak,
        "infer_mfu": infer_flops / infer_s / peak,
        "peak_memory_mb": peak_memory_mb(device),
    }
    if spec.extra is not None:
        out.update(spec.extra())
    return out
