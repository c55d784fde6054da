"""``zsk bench``: train/inference throughput, peak memory and model FLOPs utilisation (MFU).

Honest figures (issue 19):

- FLOPs are counted for every op the models run, attention included: torch's counter has no formula for
  the CPU attention kernel nor for the fused ``nn.MultiheadAttention`` / ``nn.TransformerEncoderLayer``
  fast paths (which also hide their projections), so zsk adds them; a sparse x dense product counts 2·nnz·d;
  ``grid_sample`` (deformable attention's bilinear sampling) counts one multiply-add per corner pixel per
  sampled point and channel. Elementwise ops, norms, softmax, pooling and plain resizes (``interpolate``)
  count 0, as in torch's counter. Each task's inference count equals a hand count (``tests/tasks/*/test_*_flops.py``).
- The FLOPs are split by op class (matmul-like, convolution) and each class is held against a peak
  measured for that class on the same device, dtype and thread count, in the same run (best of several
  repetitions, so a busy machine lowers the peak less than it would a single timing). MFU is the time
  the model would take at those peaks divided by its measured time, the peaks and the model timed on the
  same clock (this process's CPU time when torch runs one CPU thread, so other processes' load does not
  count; wall time otherwise: ``mfu_clock``).
- Model timings are medians of the timed steps, in wall time and in CPU time (user and system apart:
  the system share shows memory churn, pages returned to the OS and faulted in again).
- An MFU above 1 is a measurement error (peaks timed while the machine was busier than during the
  model, or FLOPs over-counted): it is reported as such (``train_mfu: null`` and ``train_mfu_error``),
  never as a result.
"""

from __future__ import annotations

import math
import resource
import statistics
import sys
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

import torch
from torch import nn
from torch.utils.flop_counter import FlopCounterMode, flop_registry, sdpa_backward_flop_count, sdpa_flop_count

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


def _sdpa_cpu(query: Sequence[int], key: Sequence[int], value: Sequence[int], *args: object, out_val: object = None,
              **kwargs: object) -> int:
    """CPU flash attention (B, H, L, E): 2·B·H·L·S·E for Q Kᵀ plus 2·B·H·L·S·Ev for the weighted sum."""
    return int(sdpa_flop_count(query, key, value))


def _sdpa_cpu_backward(grad_out: Sequence[int], query: Sequence[int], key: Sequence[int], value: Sequence[int],
                       *args: object, out_val: object = None, **kwargs: object) -> int:
    """Its backward: torch's count for the other attention kernels' backward (the same products)."""
    return int(sdpa_backward_flop_count(grad_out, query, key, value))


_GRID_SAMPLE_TERMS = {0: 4, 1: 0, 2: 16}  # grid_sample modes bilinear, nearest, bicubic: input pixels per output


def _grid_sampler_2d(input: Sequence[int], grid: Sequence[int], interpolation_mode: int, *args: object,
                     out_val: object = None, **kwargs: object) -> int:
    """Bilinear sampling (multi-scale deformable attention's value gathering): one multiply-add per corner
    pixel, per sampled point and channel (as a sparse product with 4 non-zeros per point)."""
    terms = _GRID_SAMPLE_TERMS[int(interpolation_mode)]
    return 2 * terms * int(input[0]) * int(input[1]) * int(grid[1]) * int(grid[2])


def _grid_sampler_2d_backward(grad_output: Sequence[int], input: Sequence[int], grid: Sequence[int],
                              interpolation_mode: int, padding_mode: int, align_corners: bool,
                              output_mask: Sequence[bool], *args: object, out_val: object = None,
                              **kwargs: object) -> int:
    """Its backward: the forward's products once per input that needs a gradient."""
    return _grid_sampler_2d(input, grid, interpolation_mode) * (int(bool(output_mask[0])) + int(bool(output_mask[1])))


def _cudnn_rnn(input: Sequence[int], weight: Sequence[Sequence[int]], weight_stride0: int, weight_buf: object,
               hx: object, cx: object, mode: int, hidden_size: int, proj_size: int, num_layers: int,
               batch_first: bool, dropout: float, train: bool, bidirectional: bool, batch_sizes: object,
               *args: object, out_val: object = None, **kwargs: object) -> int:
    """cuDNN's fused RNN (nn.RNN / GRU / LSTM on CUDA: every layer, direction and time step in one op): each
    sequence element goes once through every 2-D weight matrix (W_ih, W_hh, LSTM's W_hr), 2·elements·numel(W)
    each; a GRU: 2·(3H·I + 3H·H) per element. Input (T, B, I), (B, T, I) or packed (sum of lengths, I)."""
    tokens = math.prod(input[:-1])
    return 2 * tokens * sum(math.prod(w) for w in weight if len(w) == 2)


def _cudnn_rnn_backward(input: Sequence[int], weight: Sequence[Sequence[int]], weight_stride0: int,
                        weight_buf: object, hx: object, cx: object, output: object, grad_output: object,
                        grad_hy: object, grad_cy: object, mode: int, hidden_size: int, proj_size: int,
                        num_layers: int, batch_first: bool, dropout: float, train: bool, bidirectional: bool,
                        batch_sizes: object, dropout_state: object, reserve: object, output_mask: Sequence[bool],
                        *args: object, out_val: object = None, **kwargs: object) -> int:
    """Its backward: gradients through every weight matrix (less layer 0's input products when the input needs
    no gradient) plus, when the weights need gradients, their products (as the forward)."""
    tokens = math.prod(input[:-1])
    mats = [(i, math.prod(w)) for i, w in enumerate(weight) if len(w) == 2]
    first_input = {0, weight_stride0} if bidirectional else {0}  # layer 0's W_ih of each direction
    data = sum(n for i, n in mats if output_mask[0] or i not in first_input)
    return 2 * tokens * (data + (sum(n for _, n in mats) if output_mask[3] else 0))


def attention_flops(tokens_q: int, tokens_kv: int, dim: int, batch: int) -> int:
    """Multi-head attention with its projections: Q, K, V and output projections (4 dim x dim products
    over the tokens) plus Q Kᵀ and the weighted sum of V (2·L·S·dim each); the heads split dim, not FLOPs."""
    projections = 2 * batch * dim * dim * (2 * tokens_q + 2 * tokens_kv)
    return projections + 2 * 2 * batch * tokens_q * tokens_kv * dim


def _batch_tokens(shape: Sequence[int]) -> tuple[int, int]:
    """(batch, tokens) of a (B, L, E) or unbatched (L, E) input."""
    return (int(math.prod(shape[:-2])), int(shape[-2])) if len(shape) >= 3 else (1, int(shape[0]))


def _native_mha(query: Sequence[int], key: Sequence[int], value: Sequence[int], embed_dim: int, *args: object,
                out_val: object = None, **kwargs: object) -> int:
    """``nn.MultiheadAttention``'s fused inference path (one op: projections and attention inside)."""
    batch, lq = _batch_tokens(query)
    _, lk = _batch_tokens(key)
    return attention_flops(lq, lk, int(embed_dim), batch)


def _encoder_layer(src: Sequence[int], embed_dim: int, num_heads: int, *args: object, out_val: object = None,
                   **kwargs: object) -> int:
    """``nn.TransformerEncoderLayer``'s fused inference path: self-attention plus the two FFN products."""
    batch, tokens = _batch_tokens(src)
    ffn_weight_1 = args[11]  # after qkv_weight, qkv_bias, proj_weight, proj_bias, use_gelu, norm_first, eps, 4 norms
    hidden = int(ffn_weight_1[0])  # type: ignore[index]
    return attention_flops(tokens, tokens, int(embed_dim), batch) + 2 * 2 * batch * tokens * int(embed_dim) * hidden


_aten = torch.ops.aten
# torch books a sparse x dense product as the dense product of the same shapes; graph methods
# (gzsl) would report FLOPs (and MFU) thousands of times too high. The attention entries are ops torch's
# counter has no formula for (it would count 0 FLOPs: a ViT-B/16 at 512x512 counted 123 GFLOP of 221).
_CUSTOM_FLOPS: dict[Any, Callable[..., int]] = {
    _aten.mm: _sparse_aware(_aten.mm, 0, 1),
    _aten.addmm: _sparse_aware(_aten.addmm, 1, 2),
    _aten._sparse_addmm: _sparse_aware(_aten._sparse_addmm, 1, 2),
    _aten.addmm_: _sparse_aware(_aten.addmm, 1, 2),  # in place (gzsl's grouped propagation accumulates so)
    _aten.dot: lambda a, b, *args, out_val=None, **kwargs: 2 * int(a[0]),
    _aten._scaled_dot_product_flash_attention_for_cpu: _sdpa_cpu,
    _aten._scaled_dot_product_flash_attention_for_cpu_backward: _sdpa_cpu_backward,
    _aten._native_multi_head_attention: _native_mha,
    _aten._transformer_encoder_layer_fwd: _encoder_layer,
    _aten.grid_sampler_2d: _grid_sampler_2d,
    _aten.grid_sampler_2d_backward: _grid_sampler_2d_backward,
    _aten._cudnn_rnn: _cudnn_rnn,  # the GRUs of retrieve on a GPU (on the CPU they run as counted matmuls)
    _aten._cudnn_rnn_backward: _cudnn_rnn_backward,
}
_SPARSE_AWARE = _CUSTOM_FLOPS  # the name before issue 19

CONV_OPS = {"convolution", "_convolution", "convolution_backward", "cudnn_convolution", "_slow_conv2d_forward",
            "convolution_overrideable", "mkldnn_convolution", "miopen_convolution"}


def op_class(op: object) -> str:
    """"conv" for convolution kernels (forward and backward), "matmul" for every other counted op
    (matrix products and attention)."""
    name = str(getattr(op, "_overloadpacket", op)).split(".")[-1]
    return "conv" if name in CONV_OPS else "matmul"


def count_flops_by_class(fn: Callable[[], object]) -> dict[str, float]:
    """FLOPs of one call of ``fn`` split into {"matmul": ..., "conv": ...} (forward and backward ops seen
    by torch's flop counter, with zsk's attention and sparse formulas)."""
    with FlopCounterMode(display=False, custom_mapping=_CUSTOM_FLOPS) as counter:
        fn()
    out = {"matmul": 0.0, "conv": 0.0}
    for op, n in counter.get_flop_counts().get("Global", {}).items():
        out[op_class(op)] += float(n)
    return out


def count_flops(fn: Callable[[], object]) -> float:
    """FLOPs of one call of ``fn`` (forward and backward ops seen by torch's flop counter); a sparse
    matrix times a dense one counts 2·nnz·d; attention kernels and fused attention layers are counted."""
    return float(sum(count_flops_by_class(fn).values()))


def synchronize(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)
    elif device.type == "mps":
        torch.mps.synchronize()


def peak_clock(device: torch.device) -> Callable[[], float]:
    """The clock peaks are timed with, the one MFU divides by: this process's CPU time when torch runs one CPU
    thread (other processes' load does not count), wall time otherwise."""
    return time.process_time if device.type == "cpu" and torch.get_num_threads() == 1 else time.perf_counter


def _best_rate(fn: Callable[[], object], flops: float, device: torch.device, reps: int) -> float:
    """Best achieved FLOP/s of ``fn`` over ``reps`` timed calls after a warm-up (load from other processes can
    only lower a rate, so the best call is the closest to the machine's own), on :func:`peak_clock`."""
    clock = peak_clock(device)
    fn()
    synchronize(device)
    best = math.inf
    for _ in range(reps):
        t0 = clock()
        fn()
        synchronize(device)
        best = min(best, clock() - t0)
    return flops / max(best, 1e-9)


def matmul_peak(device: torch.device, dtype: torch.dtype | None, reps: int = 5) -> float:
    """Achieved FLOP/s of a large square matmul on ``device`` in ``dtype`` (fp32 when None), best of ``reps``."""
    dt = dtype or torch.float32
    n = 8192 if device.type == "cuda" else 1024
    a = torch.randn(n, n, device=device, dtype=dt)
    b = torch.randn(n, n, device=device, dtype=dt)
    return _best_rate(lambda: a @ b, 2.0 * n**3, device, reps)


def conv_peak(device: torch.device, dtype: torch.dtype | None, reps: int = 3) -> float:
    """Achieved FLOP/s of convolutions on ``device`` in ``dtype``: the best of three 3x3(x3) convolutions
    (2-D 128 -> 128 on 32x32 and 64 -> 64 on 128x128, 3-D 32 -> 32 on 32x48x48), each the best of ``reps``
    calls (oneDNN convolutions can run well above an sgemm on a CPU, so a matmul peak would put conv models
    above 1)."""
    dt = dtype or torch.float32
    b = 8 if device.type == "cuda" else 1
    probes = [((b, 128, 32, 32), (128, 128, 3, 3)), ((b, 64, 128, 128), (64, 64, 3, 3)),
              ((b, 32, 32, 48, 48), (32, 32, 3, 3, 3))]
    best = 0.0
    with torch.no_grad():
        for x_shape, w_shape in probes:
            x = torch.randn(x_shape, device=device, dtype=dt)
            w = torch.randn(w_shape, device=device, dtype=dt)
            conv = torch.nn.functional.conv2d if len(w_shape) == 4 else torch.nn.functional.conv3d
            out_numel = x_shape[0] * w_shape[0] * math.prod(x_shape[2:])  # padding 1: same spatial size
            flops = 2.0 * out_numel * math.prod(w_shape[1:])
            best = max(best, _best_rate(lambda x=x, w=w, conv=conv: conv(x, w, padding=1), flops, device, reps))
    return best


def _cpu_seconds() -> tuple[float, float]:
    r = resource.getrusage(resource.RUSAGE_SELF)
    return r.ru_utime, r.ru_stime


def time_steps(fn: Callable[[], None], steps: int, device: torch.device, dtype: torch.dtype | None) -> dict[str, float]:
    """Median wall and CPU (user + system) seconds per call of ``fn`` over ``steps`` timed calls after two
    warm-up calls, and the system share of the CPU time over all of them (memory churn shows there)."""
    with autocast(device, dtype):
        fn()  # warm-up (allocations, kernels, caches)
        fn()
    synchronize(device)
    wall, user, system = [], [], []
    with autocast(device, dtype):
        for _ in range(steps):
            c0, t0 = _cpu_seconds(), time.perf_counter()
            fn()
            synchronize(device)
            t1, c1 = time.perf_counter(), _cpu_seconds()
            wall.append(t1 - t0)
            user.append(c1[0] - c0[0])
            system.append(c1[1] - c0[1])
    cpu = sum(user) + sum(system)
    return {"wall_s": statistics.median(wall), "cpu_s": statistics.median([u + s for u, s in zip(user, system, strict=True)]),
            "user_s": statistics.median(user), "sys_s": statistics.median(system),
            "sys_share": sum(system) / cpu if cpu > 0 else 0.0}


def _timed(fn: Callable[[], None], steps: int, device: torch.device, dtype: torch.dtype | None) -> float:
    """Median wall seconds per call (see `time_steps`)."""
    return time_steps(fn, steps, device, dtype)["wall_s"]


def utilisation(flops: dict[str, float], seconds: float, peaks: dict[str, float]) -> tuple[float | None, str | None]:
    """(MFU, error): the time ``flops`` would take at the measured ``peaks`` of their op classes over the
    measured ``seconds``; above 1 it is no result but a measurement error, returned as (None, message)."""
    ideal = sum(f / peaks[c] for c, f in flops.items() if f > 0)
    if seconds <= 0 or ideal <= 0:
        return None, "no FLOPs counted or no time measured"
    mfu = ideal / seconds
    if mfu > 1.0:
        return None, (f"measurement error: {mfu:.2f} > 1 (the peaks were timed while the machine was busier than "
                      "during the model, or an op's FLOPs are over-counted); rerun on an idle machine")
    return mfu, None


def peak_memory_mb(device: torch.device) -> float:
    """Peak device memory (CUDA) or peak resident set size of the process (CPU), in MiB."""
    if device.type == "cuda":
        return torch.cuda.max_memory_allocated(device) / 2**20
    rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return rss / 2**20 if sys.platform == "darwin" else rss / 1024


def run_bench(spec: BenchSpec, steps: int, device: torch.device, dtype: torch.dtype | None, cfg: Any) -> dict:
    """Time ``steps`` optimizer steps of the Trainer and ``steps`` inference calls (medians, wall and CPU
    time); count FLOPs per op class; measure the matmul and convolution peaks in the same run and report
    MFU against them (or the measurement error when it exceeds 1). ``cfg``: the task's Config."""
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)
    train_step, trainer = trainer_step(spec, cfg, device)
    peaks = {"matmul": matmul_peak(device, dtype), "conv": conv_peak(device, dtype)}
    train_t = time_steps(train_step, steps, device, None)  # the Trainer applies the recipe's autocast itself
    infer_t = time_steps(spec.infer_step, steps, device, dtype)
    train_flops = count_flops_by_class(train_step)
    with autocast(device, dtype):
        infer_flops = count_flops_by_class(spec.infer_step)
    # peaks again after the model: the best of both sides of the timings
    peaks = {"matmul": max(peaks["matmul"], matmul_peak(device, dtype)), "conv": max(peaks["conv"], conv_peak(device, dtype))}
    train_s, infer_s = train_t["wall_s"], infer_t["wall_s"]
    train_total, infer_total = sum(train_flops.values()), sum(infer_flops.values())
    # one CPU thread: the process's CPU time is the model's own time (a busy machine stretches the wall
    # clock, not it); otherwise the wall clock
    clock = "cpu" if device.type == "cpu" and torch.get_num_threads() == 1 and min(train_t["cpu_s"], infer_t["cpu_s"]) > 0 \
        else "wall"  # (a step shorter than the CPU clock's tick reads 0 CPU seconds)
    train_mfu, train_err = utilisation(train_flops, train_t[f"{clock}_s"], peaks)
    infer_mfu, infer_err = utilisation(infer_flops, infer_t[f"{clock}_s"], peaks)
    infer_unit = spec.infer_unit or spec.unit
    out: dict[str, Any] = {
        "device": str(device),
        "dtype": str(dtype or torch.float32).replace("torch.", ""),
        "threads": torch.get_num_threads(),
        "steps": steps,
        "optimizer": trainer.cfg.optimizer,
        "grad_accum": trainer.cfg.grad_accum,
        "train_step_s": train_s,
        "train_step_cpu_s": train_t["cpu_s"],
        "train_sys_share": train_t["sys_share"],
        "train_steps_per_s": 1.0 / train_s,
        f"train_{spec.unit}_per_s": spec.train_samples * trainer.cfg.grad_accum / train_s,
        "infer_call_s": infer_s,
        "infer_call_cpu_s": infer_t["cpu_s"],
        "infer_sys_share": infer_t["sys_share"],
        f"infer_{infer_unit}_per_s": spec.infer_samples / infer_s,
        "train_gflops_per_step": train_total / 1e9,
        "train_gflops_by_class": {k: v / 1e9 for k, v in train_flops.items()},
        "infer_gflops_per_call": infer_total / 1e9,
        "infer_gflops_by_class": {k: v / 1e9 for k, v in infer_flops.items()},
        "matmul_peak_tflops": peaks["matmul"] / 1e12,
        "conv_peak_tflops": peaks["conv"] / 1e12,
        "train_tflops": train_total / train_t[f"{clock}_s"] / 1e12,  # per second of mfu_clock
        "infer_tflops": infer_total / infer_t[f"{clock}_s"] / 1e12,
        "train_mfu": train_mfu,
        "infer_mfu": infer_mfu,
        "mfu_clock": clock,
        "peak_memory_mb": peak_memory_mb(device),
    }
    if train_err:
        out["train_mfu_error"] = train_err
    if infer_err:
        out["infer_mfu_error"] = infer_err
    if spec.extra is not None:
        out.update(spec.extra())
    return out
