"""FLOP and parameter counting, and ``run_bench`` on a toy spec."""

from __future__ import annotations

import math
import time
from dataclasses import dataclass, field

import pytest
import torch
from torch import nn

from zsk.core.bench import (
    BenchSpec,
    attention_flops,
    count_flops,
    count_flops_by_class,
    count_params,
    run_bench,
    time_steps,
    trainer_step,
    utilisation,
)
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
    assert out["train_step_cpu_s"] >= 0 and out["infer_call_cpu_s"] >= 0  # may read 0 below the CPU clock's tick
    positive = ["train_step_s", "train_steps_per_s", "train_images_per_s", "infer_call_s", "infer_pixels_per_s", "train_gflops_per_step", "infer_gflops_per_call",
                "matmul_peak_tflops", "conv_peak_tflops", "train_tflops", "infer_tflops", "peak_memory_mb"]
    for key in positive:
        assert key in out, key
        assert math.isfinite(out[key]) and out[key] > 0, (key, out[key])
    assert 0 <= out["train_sys_share"] <= 1 and 0 <= out["infer_sys_share"] <= 1
    assert out["train_images_per_s"] == pytest.approx(B / out["train_step_s"])
    assert out["infer_pixels_per_s"] == pytest.approx(B * 10 / out["infer_call_s"])
    assert out["infer_gflops_per_call"] * 1e9 == pytest.approx(2 * B * IN * OUT)
    assert out["infer_gflops_by_class"] == {"matmul": pytest.approx(2 * B * IN * OUT / 1e9), "conv": 0.0}
    # a matmul-only model is held against the matmul peak alone; an MFU above 1 is never printed as a result
    for side in ("train", "infer"):
        if out[f"{side}_mfu"] is None:
            assert "measurement error" in out[f"{side}_mfu_error"]
        else:
            assert 0 < out[f"{side}_mfu"] <= 1
            seconds = out[f"{side}_step_cpu_s" if side == "train" else "infer_call_cpu_s"] if out["mfu_clock"] == "cpu" \
                else out[f"{side}_step_s" if side == "train" else "infer_call_s"]
            flops = out[f"{side}_gflops_per_step" if side == "train" else "infer_gflops_per_call"] * 1e9
            assert out[f"{side}_mfu"] == pytest.approx(flops / seconds / (out["matmul_peak_tflops"] * 1e12))
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


def test_attention_flops_are_counted_by_hand() -> None:
    """Issue 19: torch's counter has no formula for the CPU attention kernel nor the fused MHA / encoder
    layer paths (which hide the projections too); zsk's count equals a hand count on each path."""
    b, l_, e, heads, ffn = 2, 10, 16, 4, 32
    x = torch.randn(b, l_, e)
    # hand count: Q, K, V, out projections 4 * (2 * b * l * e * e); Q K^T and A V 2 * (2 * b * l * l * e)
    hand_mha = 4 * 2 * b * l_ * e * e + 2 * 2 * b * l_ * l_ * e
    assert attention_flops(l_, l_, e, b) == hand_mha
    mha = nn.MultiheadAttention(e, heads, batch_first=True).eval()
    with torch.no_grad():  # inference: the fused aten._native_multi_head_attention op
        assert count_flops(lambda: mha(x, x, x, need_weights=False)) == hand_mha
    assert count_flops(lambda: mha(x, x, x, need_weights=False)) == hand_mha  # the unfused path agrees
    layer = nn.TransformerEncoderLayer(e, heads, ffn, batch_first=True).eval()
    hand_layer = hand_mha + 2 * (2 * b * l_ * e * ffn)  # plus the two FFN products
    with torch.no_grad():  # aten._transformer_encoder_layer_fwd
        assert count_flops(lambda: layer(x)) == hand_layer
    assert count_flops(lambda: layer(x)) == hand_layer
    q = torch.randn(b, heads, l_, e // heads)  # F.scaled_dot_product_attention on the CPU flash kernel
    assert count_flops(lambda: nn.functional.scaled_dot_product_attention(q, q, q)) == 2 * 2 * b * heads * l_ * l_ * (e // heads)
    # a ViT-like block: patch-embedding convolution (conv class) + attention (matmul class)
    conv = nn.Conv2d(3, e, 4, stride=4)
    img = torch.randn(b, 3, 8, 20)  # 2 x 5 = 10 patches

    def vit() -> None:
        with torch.no_grad():
            tokens = conv(img).flatten(2).transpose(1, 2)
            mha(tokens, tokens, tokens, need_weights=False)

    split = count_flops_by_class(vit)
    assert split == {"conv": 2 * b * e * l_ * (3 * 4 * 4), "matmul": hand_mha}


def test_utilisation_uses_the_peak_of_each_op_class_and_flags_values_above_one() -> None:
    peaks = {"matmul": 100.0, "conv": 200.0}
    # 100 matmul FLOPs take 1 s at peak, 200 conv FLOPs 1 s: 2 s ideal in 4 s measured
    assert utilisation({"matmul": 100.0, "conv": 200.0}, 4.0, peaks) == (0.5, None)
    mfu, err = utilisation({"matmul": 100.0, "conv": 0.0}, 0.5, peaks)
    assert mfu is None and "measurement error" in err and "2.00" in err


def test_time_steps_reports_medians_in_wall_and_cpu_time() -> None:
    calls = []

    def spin() -> None:
        calls.append(1)
        t0 = time.process_time()
        while time.process_time() - t0 < 0.002:
            pass

    out = time_steps(spin, 3, torch.device("cpu"), None)
    assert len(calls) == 2 + 3  # two warm-up calls, three timed
    assert out["cpu_s"] >= 0.0019 and out["wall_s"] >= 0.0019
    assert out["user_s"] + out["sys_s"] <= out["cpu_s"] * 2 and 0 <= out["sys_share"] <= 1


def test_grid_sample_counts_four_multiply_adds_per_sample_and_channel() -> None:
    """Bilinear grid_sample (deformable attention): 2·4 FLOPs per sampled point and channel forward; the
    backward repeats them for each input that needs a gradient (here the map and the grid)."""
    x = torch.randn(2, 3, 5, 7, requires_grad=True)
    grid = (torch.rand(2, 4, 6, 2) * 2 - 1).requires_grad_()
    fwd = 2 * 4 * 2 * 3 * 4 * 6
    assert count_flops(lambda: torch.nn.functional.grid_sample(x, grid, align_corners=False)) == fwd
    assert count_flops(lambda: torch.nn.functional.grid_sample(x, grid, align_corners=False).sum().backward()) == 3 * fwd
    near = lambda: torch.nn.functional.grid_sample(x, grid, mode="nearest", align_corners=False)  # noqa: E731
    assert count_flops(near) == 0  # a gather: no arithmetic
