"""Checkpoints: atomic writes survive a kill half-way; pickled objects are refused (exit 2 from a CLI)."""

from __future__ import annotations

import signal
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from torch import nn
from typer.testing import CliRunner

from zsk.core import checkpoint
from zsk.core.checkpoint import (
    FORMAT_VERSION,
    load_checkpoint,
    load_model_state,
    model_state,
    save_checkpoint,
)
from zsk.core.errors import ZskError

SCRIPTS = Path(__file__).parent / "scripts"


class Vocabulary:
    """A custom class: pickling an instance into a checkpoint must make it unloadable by zsk."""

    def __init__(self) -> None:
        self.words = ["a", "b"]


def test_save_and_load_round_trip(tmp_path: Path) -> None:
    path = tmp_path / "run" / "last.pt"  # the folder is created
    state = {"step": 3, "model": {"w": torch.arange(4.0)}, "extra": {"class_names": ["cat", "dog"], "bands": 103},
             "best": {"metric": "mIoU", "value": 0.5}, "recipe": {"train": {"lr": 1e-3, "betas": [0.9, 0.99]}}}
    save_checkpoint(path, state)
    got = load_checkpoint(path)
    assert got["format_version"] == FORMAT_VERSION and "zsk_version" in got
    assert got["step"] == 3 and torch.equal(got["model"]["w"], torch.arange(4.0))
    assert got["extra"] == state["extra"] and got["recipe"] == state["recipe"]
    assert sorted(p.name for p in path.parent.iterdir()) == ["last.pt"]  # no temp file left behind


def test_write_failing_half_way_keeps_the_previous_checkpoint(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    path = tmp_path / "last.pt"
    save_checkpoint(path, {"step": 1, "model": {"w": torch.ones(3)}})
    real_save = torch.save

    def broken_save(obj: object, f: object) -> None:
        import io

        buf = io.BytesIO()
        real_save(obj, buf)
        f.write(buf.getvalue()[: len(buf.getvalue()) // 2])  # type: ignore[attr-defined]
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(checkpoint.torch, "save", broken_save)
    with pytest.raises(OSError):
        save_checkpoint(path, {"step": 2, "model": {"w": torch.zeros(3)}})
    monkeypatch.undo()
    got = load_checkpoint(path)
    assert got["step"] == 1 and torch.equal(got["model"]["w"], torch.ones(3))
    assert [p.name for p in tmp_path.iterdir()] == ["last.pt"]  # the partial temp file was removed


def test_write_killed_half_way_keeps_the_previous_checkpoint(tmp_path: Path) -> None:
    path = tmp_path / "last.pt"
    save_checkpoint(path, {"step": 1, "model": {"w": torch.ones(1024, 1024)}})
    proc = subprocess.Popen([sys.executable, str(SCRIPTS / "slow_checkpoint.py"), str(path)],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        line = proc.stdout.readline()  # type: ignore[union-attr]
        assert line.strip() == "HALF", proc.stderr.read()  # type: ignore[union-attr]
        partial = [p for p in tmp_path.iterdir() if p.name != "last.pt"]
        assert len(partial) == 1 and partial[0].stat().st_size > 0  # the new file is being written beside it
        proc.send_signal(signal.SIGKILL)
        proc.wait(timeout=60)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    assert proc.returncode == -signal.SIGKILL
    got = load_checkpoint(path)
    assert got["step"] == 1 and torch.equal(got["model"]["w"], torch.ones(1024, 1024))
    # the killed writer's temp file cannot be loaded by mistake: it is not named like a checkpoint
    assert not any(p.name.endswith(".pt") for p in tmp_path.iterdir() if p.name != "last.pt")
    save_checkpoint(path, {"step": 3, "model": {"w": torch.zeros(2)}})  # the next write still works
    assert load_checkpoint(path)["step"] == 3


def _pickled_checkpoint(path: Path) -> Path:
    torch.save({"format_version": 1, "step": 5, "model": {"w": torch.ones(2)}, "extra": {"vocab": Vocabulary()}},
               path)
    return path


def test_pickled_object_is_refused(tmp_path: Path) -> None:
    path = _pickled_checkpoint(tmp_path / "evil.pt")
    with pytest.raises(ZskError) as e:
        load_checkpoint(path)
    msg = str(e.value)
    assert str(path) in msg and "pickled" in msg
    assert "Vocabulary" in msg  # says what was refused
    assert "\x1b[" not in msg and "\n" not in msg  # one plain line


def test_damaged_missing_and_foreign_files_are_zsk_errors(tmp_path: Path) -> None:
    good = tmp_path / "good.pt"
    save_checkpoint(good, {"step": 1, "model": {"w": torch.randn(100, 100)}})
    data = good.read_bytes()
    truncated = tmp_path / "truncated.pt"
    truncated.write_bytes(data[: len(data) // 2])
    garbage = tmp_path / "garbage.pt"
    garbage.write_bytes(b"this is not a checkpoint at all" * 20)
    empty = tmp_path / "empty.pt"
    empty.write_bytes(b"")
    for path in (truncated, garbage, empty):
        with pytest.raises(ZskError) as e:
            load_checkpoint(path)
        assert str(path) in str(e.value) and "damaged" in str(e.value), str(e.value)
    with pytest.raises(ZskError, match="not found"):
        load_checkpoint(tmp_path / "missing.pt")
    plain = tmp_path / "plain.pt"
    torch.save({"w": torch.ones(1)}, plain)  # a state dict, not a zsk checkpoint
    with pytest.raises(ZskError, match="format_version"):
        load_checkpoint(plain)
    future = tmp_path / "future.pt"
    torch.save({"format_version": FORMAT_VERSION + 1}, future)
    with pytest.raises(ZskError, match="upgrade zsk"):
        load_checkpoint(future)


def test_cli_refuses_a_pickled_checkpoint_with_exit_2(tmp_path: Path) -> None:
    sys.path.insert(0, str(SCRIPTS))
    try:
        from cli_app import app
    finally:
        sys.path.remove(str(SCRIPTS))
    path = _pickled_checkpoint(tmp_path / "evil.pt")
    runner = CliRunner()
    res = runner.invoke(app, ["ckpt", "--checkpoint", str(path)])
    assert res.exit_code == 2, res.output
    lines = res.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: ") and str(path) in lines[0]
    assert "Traceback" not in res.output and res.stdout == ""
    good = tmp_path / "good.pt"
    save_checkpoint(good, {"step": 4, "model": {}})
    res = runner.invoke(app, ["ckpt", "--checkpoint", str(good), "--json"])
    assert res.exit_code == 0, res.output
    assert '"step": 4' in res.stdout


def test_model_state_excludes_frozen_pretrained_parts() -> None:
    model = nn.Sequential()
    model.add_module("clip", nn.Linear(3, 3))
    model.add_module("head", nn.Linear(3, 2))
    state = model_state(model, exclude_prefixes=("clip.",))
    assert sorted(state) == ["head.bias", "head.weight"]
    fresh = nn.Sequential()
    fresh.add_module("clip", nn.Linear(3, 3))
    fresh.add_module("head", nn.Linear(3, 2))
    load_model_state(fresh, state, exclude_prefixes=("clip.",))
    assert torch.equal(fresh.head.weight, model.head.weight)
    with pytest.raises(ZskError, match=r"does not match.*the model has weights the file lacks \['clip\.weight'"):
        load_model_state(fresh, state)  # without the exclusion the clip weights are missing
    with pytest.raises(ZskError, match=r"the file has weights the model lacks \['x\.weight'\]"):
        load_model_state(nn.Sequential(), {"x.weight": torch.ones(1)})
    assert sorted(model_state(model)) == ["clip.bias", "clip.weight", "head.bias", "head.weight"]


def test_read_state_dict_reads_torch_and_safetensors_files_and_names_bad_ones(tmp_path) -> None:
    """Pretrained and official weights files: unwrapped from ``state_dict`` (unless told not to), safetensors
    read too; a missing, unreadable or non-dict file is a ZskError naming the file and the fix."""
    from safetensors.torch import save_file

    from zsk.core.checkpoint import read_state_dict

    w = {"a.weight": torch.arange(3.0)}
    torch.save({"state_dict": w}, tmp_path / "wrapped.pth")
    assert torch.equal(read_state_dict(tmp_path / "wrapped.pth", "weights", "fix")["a.weight"], w["a.weight"])
    assert set(read_state_dict(tmp_path / "wrapped.pth", "weights", "fix", unwrap=False)) == {"state_dict"}
    save_file(w, str(tmp_path / "w.safetensors"))
    assert torch.equal(read_state_dict(tmp_path / "w.safetensors", "weights", "fix")["a.weight"], w["a.weight"])
    (tmp_path / "junk.pth").write_bytes(b"not a torch file")
    torch.save([1, 2], tmp_path / "list.pth")
    for name, says in (("missing.pth", "not found"), ("junk.pth", "cannot be read"), ("list.pth", "is not a state dict")):
        with pytest.raises(ZskError, match=rf"MiT weights .*{name} {says}.*; set model\.pretrained"):
            read_state_dict(tmp_path / name, "MiT weights", "set model.pretrained")
