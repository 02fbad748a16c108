"""torchrun helpers for `train`: the process group, and the few collectives the loop needs.

Launched with ``torchrun --nproc-per-node N -m resize_pipeline.cli train ...``, every process reads
torchrun's ``WORLD_SIZE``/``RANK``/``LOCAL_RANK``; without them everything here is a no-op for one
process (rank 0 of 1).
"""

from __future__ import annotations

import logging
import os
from typing import Any

import torch
from torch import nn

log = logging.getLogger(__name__)


def distributed_env() -> tuple[int, int, int]:
    """(rank, world size, local rank) from torchrun's environment; (0, 1, 0) without it."""
    world = int(os.environ.get("WORLD_SIZE", "1"))
    return int(os.environ.get("RANK", "0")), world, int(os.environ.get("LOCAL_RANK", "0"))


def init_distributed(device: torch.device) -> None:
    import torch.distributed as dist

    if not dist.is_initialized():
        backend = "nccl" if device.type == "cuda" else "gloo"
        dist.init_process_group(backend)
        log.info("process group: backend %s, rank %d of %d", backend, dist.get_rank(), dist.get_world_size())


def shutdown_distributed() -> None:
    """Destroy the process group `train` started under torchrun (call once, at the end of a command)."""
    import torch.distributed as dist

    if dist.is_available() and dist.is_initialized():
        dist.destroy_process_group()


def broadcast_state(*modules: nn.Module) -> None:
    """Copy rank 0's parameters and buffers to every process."""
    import torch.distributed as dist

    with torch.no_grad():
        for m in modules:
            for t in [*m.parameters(), *m.buffers()]:
                dist.broadcast(t.data, 0)


def barrier(world: int) -> None:
    if world > 1:
        import torch.distributed as dist

        dist.barrier()


def all_true(flag: bool, world: int, device: torch.device) -> bool:
    """True when `flag` holds on every process (one tiny all-reduce; no-op for one process)."""
    if world == 1:
        return flag
    import torch.distributed as dist

    t = torch.tensor([1 if flag else 0], dtype=torch.int32, device=device)
    dist.all_reduce(t, op=dist.ReduceOp.MIN)
    return bool(t.item())


def sum_counts(values: list[float], world: int, device: torch.device) -> list[float]:
    """`values` summed over the processes."""
    if world == 1:
        return values
    import torch.distributed as dist

    t = torch.tensor(values, dtype=torch.float64, device=device)
    dist.all_reduce(t)
    return [float(v) for v in t.tolist()]


def gather_lists(values: list[Any], world: int) -> list[Any]:
    """Every process's `values`, concatenated in rank order (picklable objects)."""
    if world == 1:
        return values
    import torch.distributed as dist

    parts: list[Any] = [None] * world
    dist.all_gather_object(parts, values)
    return [v for part in parts for v in part]
