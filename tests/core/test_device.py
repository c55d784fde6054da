"""Device resolution (flag > $ZSK_DEVICE > recipe > auto) and the autocast dtype."""

from __future__ import annotations

import pytest
import torch

from zsk.core.device import autocast, autocast_dtype, needs_grad_scaler, resolve_device
from zsk.core.errors import ZskError


@pytest.fixture()
def no_accelerators(monkeypatch: pytest.MonkeyPatch) -> None:
    """Make the machine look CPU-only whatever it really has."""
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 0)
    monkeypatch.setattr(torch.backends.mps, "is_available", lambda: False)


def test_flag_wins_over_env_and_recipe(monkeypatch: pytest.MonkeyPatch, no_accelerators: None) -> None:
    # the lower-priority values are invalid: if they were consulted, resolve_device would raise
    monkeypatch.setenv("ZSK_DEVICE", "bogus")
    assert resolve_device("cpu", "cuda:7") == torch.device("cpu")


def test_env_wins_over_recipe(monkeypatch: pytest.MonkeyPatch, no_accelerators: None) -> None:
    monkeypatch.setenv("ZSK_DEVICE", "cpu")
    assert resolve_device(None, "bogus") == torch.device("cpu")
    monkeypatch.setenv("ZSK_DEVICE", "cuda")
    with pytest.raises(ZskError, match="CUDA is not available"):
        resolve_device(None, "cpu")


def test_recipe_wins_over_auto(no_accelerators: None) -> None:
    assert resolve_device(None, "cpu") == torch.device("cpu")
    with pytest.raises(ZskError, match="cuda"):
        resolve_device(None, "cuda")


def test_auto_picks_the_best_available(monkeypatch: pytest.MonkeyPatch, no_accelerators: None) -> None:
    assert resolve_device(None, "auto") == torch.device("cpu")
    assert resolve_device(None, None) == torch.device("cpu")
    assert resolve_device("auto") == torch.device("cpu")
    monkeypatch.setattr(torch.backends.mps, "is_available", lambda: True)
    assert resolve_device("auto") == torch.device("mps")
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 2)
    monkeypatch.setenv("LOCAL_RANK", "1")  # torchrun's second process on a 2-GPU node
    assert resolve_device("auto") == torch.device("cuda", 1)
    assert resolve_device("cuda") == torch.device("cuda", 1)
    assert resolve_device("cuda:0") == torch.device("cuda", 0)


def test_unavailable_or_unknown_devices_are_zsk_errors(monkeypatch: pytest.MonkeyPatch, no_accelerators: None) -> None:
    with pytest.raises(ZskError, match="--device cpu"):
        resolve_device("cuda")
    with pytest.raises(ZskError, match="CUDA is not available"):
        resolve_device("cuda:0")
    with pytest.raises(ZskError, match="MPS is not available"):
        resolve_device("mps")
    for name in ("tpu", "gpu", "cuda:x"):
        with pytest.raises(ZskError, match="auto, cpu, cuda"):
            resolve_device(name)
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 1)
    with pytest.raises(ZskError, match="only 1 CUDA"):
        resolve_device("cuda:3")


def test_device_names_are_case_and_space_insensitive(no_accelerators: None) -> None:
    assert resolve_device(" CPU ") == torch.device("cpu")


def test_autocast_dtype_on_cpu() -> None:
    cpu = torch.device("cpu")
    assert autocast_dtype(cpu) is None  # fp32 on CPU unless asked
    assert autocast_dtype(cpu, "auto") is None
    assert autocast_dtype(cpu, "fp32") is None
    assert autocast_dtype(cpu, "bf16") is torch.bfloat16
    assert autocast_dtype(cpu, "fp16") is torch.float16
    with pytest.raises(ZskError, match="precision"):
        autocast_dtype(cpu, "fp8")
    assert not needs_grad_scaler(cpu, torch.float16)


def test_autocast_dtype_on_cuda(monkeypatch: pytest.MonkeyPatch) -> None:
    cuda = torch.device("cuda", 0)
    monkeypatch.setattr(torch.cuda, "is_bf16_supported", lambda *a, **k: True)
    assert autocast_dtype(cuda) is torch.bfloat16
    monkeypatch.setattr(torch.cuda, "is_bf16_supported", lambda *a, **k: False)
    assert autocast_dtype(cuda) is torch.float16
    assert autocast_dtype(cuda, "fp32") is None
    assert needs_grad_scaler(cuda, torch.float16)
    assert not needs_grad_scaler(cuda, torch.bfloat16) and not needs_grad_scaler(cuda, None)


def test_autocast_context_on_cpu() -> None:
    cpu = torch.device("cpu")
    layer = torch.nn.Linear(4, 3)
    x = torch.randn(2, 4)
    with autocast(cpu, None):
        assert layer(x).dtype == torch.float32
    with autocast(cpu, torch.bfloat16):
        assert layer(x).dtype == torch.bfloat16
    assert layer(x).dtype == torch.float32


def test_fp16_on_a_cpu_warns_once(capsys: pytest.CaptureFixture[str]) -> None:
    """fp16 autocast on a CPU is kept (the recipe asked for it) but named as slow, once per process."""
    import torch

    from zsk.core import device as core_device
    from zsk.core import progress

    progress._warned.clear()
    assert core_device.autocast_dtype(torch.device("cpu"), "fp16") == torch.float16
    assert core_device.autocast_dtype(torch.device("cpu"), "fp16") == torch.float16
    assert core_device.autocast_dtype(torch.device("cpu"), "bf16") == torch.bfloat16
    err = capsys.readouterr().err
    assert err.count("runtime.precision fp16 on a CPU") == 1 and "runtime.precision=fp32" in err
