"""Distributed training from torchrun's environment: process group, DDP, sharding, reductions."""

from __future__ import annotations

import os
from dataclasses import dataclass
from typing import Any

import torch
import torch.distributed as torch_dist
from torch import nn


@dataclass
class DistInfo:
    """This process's place in the job (rank 0 of 1 when not launched by torchrun)."""

    rank: int = 0
    world_size: int = 1
    local_rank: int = 0

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    @property
    def enabled(self) -> bool:
        return self.world_size > 1


_info = DistInfo()


def init_distributed(device: torch.device) -> DistInfo:
    """Join the process group described by RANK/WORLD_SIZE/LOCAL_RANK (nccl on CUDA, gloo otherwise)."""
    global _info
    world = int(os.environ.get("WORLD_SIZE", "1"))
    if world <= 1:
        _info = DistInfo()
        return _info
    rank = int(os.environ["RANK"])
    local = int(os.environ.get("LOCAL_RANK", "0"))
    if not torch_dist.is_initialized():
        backend = "nccl" if device.type == "cuda" else "gloo"
        if device.type == "cuda":
            torch.cuda.set_device(device)
        torch_dist.init_process_group(backend=backend)
    _info = DistInfo(rank=rank, world_size=world, local_rank=local)
    return _info


def get_dist() -> DistInfo:
    """The DistInfo set by :func:`init_distributed` (single process by default)."""
    return _info


def is_main() -> bool:
    """True on rank 0, the only rank that writes files."""
    return _info.is_main


def barrier() -> None:
    """Wait for all ranks (no-op in a single process)."""
    if _info.enabled and torch_dist.is_initialized():
        torch_dist.barrier()


def all_reduce_sum(t: torch.Tensor) -> torch.Tensor:
    """Sum a tensor over ranks in place (no-op in a single process)."""
    if _info.enabled and torch_dist.is_initialized():
        torch_dist.all_reduce(t, op=torch_dist.ReduceOp.SUM)
    return t


def all_gather_object(obj: Any) -> list[Any]:
    """Gather a picklable object from every rank (``[obj]`` in a single process)."""
    if not (_info.enabled and torch_dist.is_initialized()):
        return [obj]
    out: list[Any] = [None] * _info.world_size
    torch_dist.all_gather_object(out, obj)
    return out


def broadcast_object(obj: Any) -> Any:
    """Rank 0's value of ``obj`` on every rank."""
    if not (_info.enabled and torch_dist.is_initialized()):
        return obj
    box = [obj]
    torch_dist.broadcast_object_list(box, src=0)
    return box[0]


def wrap_ddp(model: nn.Module, device: torch.device, find_unused_parameters: bool = False) -> nn.Module:
    """Wrap in DistributedDataParallel when running under torchrun and the model has trainable weights."""
    if not _info.enabled or not any(p.requires_grad for p in model.parameters()):
        return model
    ids = [device.index] if device.type == "cuda" else None
    return nn.parallel.DistributedDataParallel(model, device_ids=ids, find_unused_parameters=find_unused_parameters)


def unwrap(model: nn.Module) -> nn.Module:
    """The plain module inside a DDP wrapper."""
    return model.module if isinstance(model, nn.parallel.DistributedDataParallel) else model


def cleanup() -> None:
    """Leave the process group once every rank is done: a barrier first, so no rank tears its connections
    down while another still uses them (gloo then aborts the late rank: "terminate called without an
    active exception")."""
    if torch_dist.is_initialized():
        try:
            torch_dist.barrier()
        finally:
            torch_dist.destroy_process_group()
