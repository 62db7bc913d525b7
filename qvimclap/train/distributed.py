"""Distributed set-up: under ``torchrun`` (``WORLD_SIZE > 1``) every process joins one gloo/nccl group."""

from __future__ import annotations

import os
from typing import Any

import torch


def init_distributed() -> tuple[int, int]:
    """(rank, world size); joins the process group when started by torchrun with ``WORLD_SIZE > 1``."""
    world = int(os.environ.get("WORLD_SIZE", "1"))
    if world <= 1:
        return 0, 1
    import torch.distributed as dist

    if not dist.is_initialized():
        dist.init_process_group("nccl" if torch.cuda.is_available() else "gloo")
    return dist.get_rank(), dist.get_world_size()


def barrier(world: int) -> None:
    """Wait for every process (nothing to wait for in a single-process run)."""
    if world > 1:
        import torch.distributed as dist

        dist.barrier()


def from_rank0(value: Any, world: int) -> Any:
    """Rank 0's ``value`` on every process: decisions made from rank 0's validation or clock must agree."""
    if world == 1:
        return value
    import torch.distributed as dist

    box = [value]
    dist.broadcast_object_list(box, src=0)
    return box[0]


def gather_to_all(value: Any, world: int) -> list[Any]:
    """Every process's ``value``, in rank order (picklable objects; the checkpoint keeps each rank's RNG)."""
    if world == 1:
        return [value]
    import torch.distributed as dist

    out: list[Any] = [None] * world
    dist.all_gather_object(out, value)
    return out
