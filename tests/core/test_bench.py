"""FLOP and parameter counting, and ``run_bench`` on a toy spec."""

from __future__ import annotations

import math
from dataclasses import dataclass, field

import pytest
import torch
from torch import nn

from zsk.core.bench import BenchSpec, count_flops, count_params, run_bench, trainer_step
from zsk.core.recipe import RuntimeConfig
from zsk.core.trainer import TrainConfig

B, IN, OUT = 8, 16, 32


def test_count_flops_of_a_linear_layer() -> None:
    layer = nn.Linear(IN, OUT)
    x = torch.randn(B, IN)
    with torch.no_grad():
        # a [B, IN] x [IN, OUT] matmul: B*OUT dot products of length IN, one multiply and one add each
        assert count_flops(lambda: layer(x)) == 2 * B * IN * OUT


def test_count_flops_of_a_training_step() -> None:
    layer = nn.Linear(IN, OUT)
    x = torch.randn(B, IN)  # the input needs no gradient: backward computes only dL/dW = x^T @ dL/dy

    def step() -> None:
        layer(x).sum().backward()

    assert count_flops(step) == 2 * B * IN * OUT + 2 * B * IN * OUT


def test_count_params() -> None:
    model = nn.Sequential(nn.Linear(4, 8), nn.ReLU(), nn.Linear(8, 3))
    # (4*8 + 8) + (8*3 + 3) = 40 + 27
    assert count_params(model) == (67, 67)
    for p in model[0].parameters():
        p.requires_grad_(False)
    assert count_params(model) == (67, 27)


@dataclass
class _Cfg:
    runtime: RuntimeConfig = field(default_factory=lambda: RuntimeConfig(device="cpu"))


def test_run_bench_on_a_toy_spec() -> None:
    model = nn.Linear(IN, OUT)
    x = torch.randn(B, IN)
    calls = {"extra": 0, "step_fn": 0}

    def step_fn(m: nn.Module, batch: torch.Tensor, step: int) -> dict[str, torch.Tensor]:
        calls["step_fn"] += 1
        return {"loss": m(batch).square().mean()}

    def infer_step() -> None:
        with torch.no_grad():
            model(x)

    def extra() -> dict:
        calls["extra"] += 1
        return {"s_per_volume": 0.5}

    train_cfg = TrainConfig(optimizer="sgd", lr=0.01, momentum=0.0, steps=1)
    spec = BenchSpec(model=model, step_fn=step_fn, batch=x, train_cfg=train_cfg, infer_step=infer_step,
                     train_samples=B, infer_samples=B * 10, unit="images", infer_unit="pixels", extra=extra)
    out = run_bench(spec, steps=3, device=torch.device("cpu"), dtype=None, cfg=_Cfg())
    assert out["device"] == "cpu" and out["dtype"] == "float32" and out["steps"] == 3
    assert out["optimizer"] == "sgd" and out["grad_accum"] == 1
    positive = ["train_step_s", "train_steps_per_s", "train_images_per_s", "infer_call_s", "infer_pixels_per_s",
                "train_gflops_per_step", "infer_gflops_per_call", "matmul_peak_tflops", "train_tflops",
                "infer_tflops", "train_mfu", "infer_mfu", "peak_memory_mb"]
    for key in positive:
        assert key in out, key
        assert math.isfinite(out[key]) and out[key] > 0, (key, out[key])
    assert out["train_images_per_s"] == pytest.approx(B / out["train_step_s"])
    assert out["infer_pixels_per_s"] == pytest.approx(B * 10 / out["infer_call_s"])
    assert out["infer_gflops_per_call"] * 1e9 == pytest.approx(2 * B * IN * OUT)
    assert out["train_mfu"] == pytest.approx(out["train_tflops"] / out["matmul_peak_tflops"])
    assert out["train_mfu"] < 1.5  # a tiny layer cannot beat a large matmul by much
    assert out["s_per_volume"] == 0.5 and calls["extra"] == 1


def test_bench_times_the_trainers_step_with_the_recipes_optimizer_and_accumulation() -> None:
    model = nn.Linear(IN, OUT)
    x = torch.randn(B, IN)
    seen = []

    def step_fn(m: nn.Module, batch: torch.Tensor, step: int) -> dict[str, torch.Tensor]:
        seen.append(step)
        return {"loss": m(batch).square().mean()}

    train_cfg = TrainConfig(optimizer="adamw", lr=1e-3, grad_accum=3, clip_grad_norm=1.0, steps=1)
    spec = BenchSpec(model=model, step_fn=step_fn, batch=x, train_cfg=train_cfg, infer_step=lambda: None,
                     train_samples=B, infer_samples=1)
    step, trainer = trainer_step(spec, _Cfg(), torch.device("cpu"))
    step()
    # one bench step = one optimizer step of 3 micro-batches, through the recipe's AdamW
    assert seen == [0, 0, 0] and trainer.step == 1
    assert isinstance(trainer.optimizer, torch.optim.AdamW)
    assert all("exp_avg" in trainer.optimizer.state[p] for p in model.parameters())
    step()
    assert seen[3:] == [1, 1, 1] and trainer.step == 2


def test_count_flops_books_sparse_products_by_nonzeros() -> None:
    # a 3x5 operator with 4 non-zeros times a 5x4 matrix: 2 * 4 * 4 = 32 multiply-adds, not 2 * 3 * 5 * 4
    idx = torch.tensor([[0, 1, 2, 2], [1, 2, 0, 1]])
    a = torch.sparse_coo_tensor(idx, torch.ones(4), (3, 5)).coalesce()
    x = torch.randn(5, 4, requires_grad=True)
    assert count_flops(lambda: torch.sparse.mm(a, x)) == 32
    # backward: A^T @ grad touches the same 4 non-zeros per column
    assert count_flops(lambda: torch.sparse.mm(a, x).sum().backward()) == 64
    # dense products keep torch's formula
    assert count_flops(lambda: torch.randn(4, 6) @ torch.randn(6, 7)) == 2 * 4 * 6 * 7
