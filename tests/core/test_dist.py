"""Distributed training on CPU: ``torchrun --nproc_per_node 2`` (gloo) through the trainer."""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from zsk.core import dist
from zsk.core.checkpoint import load_checkpoint
from zsk.metrics.confusion import ConfusionMatrix

SCRIPTS = Path(__file__).parent / "scripts"


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_single_process_helpers_are_no_ops() -> None:
    info = dist.get_dist()
    assert (info.rank, info.world_size, info.is_main, info.enabled) == (0, 1, True, False)
    t = torch.tensor([1, 2])
    assert dist.all_reduce_sum(t) is t and t.tolist() == [1, 2]
    assert dist.all_gather_object({"a": 1}) == [{"a": 1}]
    assert dist.broadcast_object(5) == 5
    model = torch.nn.Linear(2, 2)
    assert dist.wrap_ddp(model, torch.device("cpu")) is model and dist.unwrap(model) is model
    dist.barrier()


def test_torchrun_two_cpu_processes(tmp_path: Path) -> None:
    run_dir, ranks = tmp_path / "run", tmp_path / "ranks"
    ranks.mkdir()
    env = {k: v for k, v in os.environ.items() if k not in ("RANK", "WORLD_SIZE", "LOCAL_RANK")}
    env.update(OMP_NUM_THREADS="1", GLOO_SOCKET_IFNAME="lo", ZSK_DEVICE="cpu")
    cmd = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "2", "--master_addr", "127.0.0.1",
           "--master_port", str(free_port()), str(SCRIPTS / "toy_train.py"), "--out", str(run_dir),
           "--ranks-dir", str(ranks), "--set", "train.steps=6", "--set", "train.eval_every=3"]
    proc = subprocess.run(cmd, capture_output=True, text=True, env=env, timeout=300)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert "world size: 2" in proc.stderr

    # the metric accumulator agrees across ranks after reduce, and counts every sample exactly once
    matrices = [torch.tensor(json.loads((ranks / f"cm-rank{r}.json").read_text())) for r in (0, 1)]
    assert torch.equal(matrices[0], matrices[1])
    assert int(matrices[0].sum()) == 40  # each rank saw half of the 40 samples

    # both ranks end with the same weights (DDP averaged the gradients), and it is what last.pt holds
    w0 = torch.load(ranks / "weights-rank0.pt", weights_only=True)
    w1 = torch.load(ranks / "weights-rank1.pt", weights_only=True)
    for k in w0:
        assert torch.equal(w0[k], w1[k]), k
    last = load_checkpoint(run_dir / "last.pt")
    assert last["step"] == 6
    for k in w0:
        assert torch.equal(last["model"][k], w0[k]), k

    # only rank 0 wrote run files: exactly the expected files, and no record twice
    assert {p.name for p in run_dir.iterdir()} == {"recipe.yaml", "metrics.jsonl", "last.pt", "best.pt", "eval.json"}
    recs = [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]
    keys = [(r["kind"], r["step"]) for r in recs]
    assert len(keys) == len(set(keys))
    assert sorted(k for k in keys if k[0] == "eval") == [("eval", 3), ("eval", 6)]
    assert sorted(k for k in keys if k[0] == "train") == [("train", s) for s in (2, 4, 6)]
    summary = json.loads((run_dir / "eval.json").read_text())
    assert summary["step"] == 6 and summary["acc"] == pytest.approx(
        float(matrices[0].diagonal().sum()) / 40)


def test_confusion_matrix_reduce_is_a_sum(monkeypatch: pytest.MonkeyPatch) -> None:
    """Without a process group, reduce() must leave counts alone; with one it sums (checked by the torchrun
    test above); here the reduction hook is faked to show reduce() hands the matrix to all_reduce_sum."""
    cm = ConfusionMatrix(2)
    cm.update(torch.tensor([0, 1, 1]), torch.tensor([0, 1, 0]))
    seen: list[torch.Tensor] = []
    monkeypatch.setattr(dist, "all_reduce_sum", lambda t: (seen.append(t), t.mul_(2))[1])
    cm.reduce()
    assert seen and seen[0] is cm.matrix
    assert cm.matrix.tolist() == [[2, 2], [0, 2]]
