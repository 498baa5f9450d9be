"""The part every ``torch.distributed`` strategy shares: joining the process group, collectives, leaving.

DDP, the pipelines and tensor parallelism all start from this: one process per rank, started by torchrun
(gloo on CPUs, nccl with one GPU per rank; the rank's GPU is ``LOCAL_RANK``), metrics combined with
``dist.all_reduce``, and a teardown that releases what holds the group before destroying it (torch 2.13 +
gloo can otherwise abort at exit: "terminate called without an active exception").
"""

from __future__ import annotations

import gc
import os
from collections.abc import Iterable

import torch
import torch.distributed as dist
from torch import nn

from dtutor.config import choose_backend
from dtutor.pytorch.strategy import Strategy

OPS = {"sum": dist.ReduceOp.SUM, "max": dist.ReduceOp.MAX}


def join_process_group(backend: str = "auto") -> tuple[int, int, torch.device]:
    """Join (once) the process group torchrun describes; return rank, world size and this rank's device.

    With nccl the device is the GPU numbered ``LOCAL_RANK``; otherwise the CPU.
    """
    if not dist.is_initialized():
        dist.init_process_group(choose_backend(backend, int(os.environ.get("LOCAL_WORLD_SIZE", "1"))))
    device = torch.device("cpu")
    if dist.get_backend() == "nccl":
        device = torch.device("cuda", int(os.environ.get("LOCAL_RANK", "0")))
        torch.cuda.set_device(device)
    return dist.get_rank(), dist.get_world_size(), device


def rebuild_optimizer(optimizer: torch.optim.Optimizer, parameters: Iterable[nn.Parameter]) -> torch.optim.Optimizer:
    """An optimizer of ``optimizer``'s class and settings over ``parameters``: what this rank holds once its strategy
    has split or sharded the model (a pipeline stage, tensor-parallel or FSDP shards)."""
    return type(optimizer)(parameters, **optimizer.defaults)


def leave_process_group() -> None:
    """Collect what still holds the group, then destroy it (avoids gloo's abort at exit in torch 2.13)."""
    gc.collect()
    if dist.is_initialized():
        dist.destroy_process_group()


class ProcessGroupStrategy(Strategy):
    """A strategy whose ranks talk through ``torch.distributed``; subclasses say how they split the work."""

    name = ""
    owns_group = True  # this strategy created the process group, so its teardown destroys it

    def join(self) -> None:
        """Join the process group torchrun describes; with nccl, take the GPU numbered ``LOCAL_RANK``.

        A group that already exists (a caller joined it first to train several runs in one launch) is used and
        left in place for the next run: only the strategy that created a group destroys it."""
        self.owns_group = not dist.is_initialized()
        self.rank, self.world_size, self.device = join_process_group(self.config.backend)

    def reduce(self, tensor: torch.Tensor, op: str = "sum") -> torch.Tensor:
        """``dist.all_reduce`` of a copy of ``tensor``."""
        tensor = tensor.clone()
        dist.all_reduce(tensor, op=OPS[op])
        return tensor

    def barrier(self) -> None:
        """``dist.barrier()``."""
        dist.barrier()

    def release(self) -> None:
        """Drop whatever holds the process group (wrappers, schedules); subclasses add theirs."""

    def teardown(self) -> None:
        """Release what holds the group, then destroy the process group if this strategy created it."""
        self.release()
        if self.owns_group:
            leave_process_group()
        else:
            gc.collect()  # what held the group goes now; the group stays for the next run
