"""Tiny entry points for trying out a launch (notebooks 02, 08): a collective that works, a rank that crashes, a hang.

Each takes the ``backend`` the launcher chooses. Run one in a terminal::

    torchrun --standalone --nproc-per-node 2 -m dtutor.launch dtutor.pytorch.ddp_lessons:hello
"""

from __future__ import annotations

import os
import time

import torch
import torch.distributed as dist


def _init(backend: str) -> tuple[int, int]:
    dist.init_process_group(backend)
    return dist.get_rank(), dist.get_world_size()


def hello(backend: str = "gloo") -> dict:
    """Every rank adds its rank number in an all-reduce; each returns what it saw."""
    rank, world = _init(backend)
    try:
        total = torch.tensor([float(rank)])
        dist.all_reduce(total)  # SUM by default
        print(f"hello from rank {rank} of {world} (pid {os.getpid()})")
        return {"rank": rank, "world_size": world, "sum_of_ranks": int(total.item())}
    finally:
        dist.destroy_process_group()


def fail_on_rank(failing_rank: int = 1, backend: str = "gloo") -> int:
    """Rank ``failing_rank`` raises; the others wait in a barrier that never completes."""
    rank, _ = _init(backend)
    if rank == failing_rank:
        raise RuntimeError(f"rank {rank} failed on purpose")
    dist.barrier()
    return rank


def sleep(seconds: float = 3600.0) -> float:
    """Sleep ``seconds`` (no process group): a stand-in for a hung job."""
    time.sleep(seconds)
    return seconds
