"""DistributedDataParallel as a strategy: one process per rank, gradients all-reduced during ``backward``.

What it changes:
- join: ``init_process_group`` (gloo on CPUs, nccl with one GPU per rank); the rank's GPU is ``LOCAL_RANK``;
- wrap: ``DistributedDataParallel(model)`` broadcasts rank 0's weights and registers hooks that all-reduce
  gradient buckets while ``backward`` still runs;
- no_sync: while accumulating, every micro-batch but the last skips that all-reduce;
- reduce: ``dist.all_reduce``; teardown: the DDP object is released and the process group destroyed
  (torch 2.13 + gloo can otherwise abort at exit: "terminate called without an active exception").

Launch recipes: see ``dtutor.pytorch.driver`` (``strategy=ddp`` under torchrun).
"""

from __future__ import annotations

import contextlib
import gc
import os
from typing import Any

import torch
import torch.distributed as dist
from torch import nn
from torch.nn.parallel import DistributedDataParallel

from dtutor.launch import choose_backend
from dtutor.pytorch.strategy import Strategy

OPS = {"sum": dist.ReduceOp.SUM, "max": dist.ReduceOp.MAX}


class DDP(Strategy):
    """PyTorch's DistributedDataParallel."""

    name = "ddp"
    wrapped: DistributedDataParallel | None = None

    def join(self) -> None:
        """Join the process group torchrun describes; with nccl, take the GPU numbered ``LOCAL_RANK``."""
        backend = choose_backend(self.config.backend, int(os.environ.get("LOCAL_WORLD_SIZE", "1")))
        dist.init_process_group(backend)
        self.rank, self.world_size = dist.get_rank(), dist.get_world_size()
        if backend == "nccl":
            self.device = torch.device("cuda", int(os.environ.get("LOCAL_RANK", "0")))
            torch.cuda.set_device(self.device)

    def wrap(self, model: nn.Module, optimizer: Any) -> tuple[nn.Module, Any]:
        """``DistributedDataParallel(model)``; the optimizer is unchanged."""
        device_ids = [self.device.index] if self.device.type == "cuda" else None
        self.wrapped = DistributedDataParallel(model, device_ids=device_ids)
        return self.wrapped, optimizer

    def no_sync(self, model: nn.Module) -> contextlib.AbstractContextManager:
        """DDP's own ``no_sync``: gradients stay local until the group's last micro-batch."""
        return model.no_sync()

    def reduce(self, tensor: torch.Tensor, op: str = "sum") -> torch.Tensor:
        """``dist.all_reduce`` of a copy of ``tensor``."""
        tensor = tensor.clone()
        dist.all_reduce(tensor, op=OPS[op])
        return tensor

    def barrier(self) -> None:
        """``dist.barrier()``."""
        dist.barrier()

    def teardown(self) -> None:
        """Release DDP's hooks, then destroy the process group (avoids torch 2.13 + gloo's exit abort)."""
        self.wrapped = None
        gc.collect()
        if dist.is_initialized():
            dist.destroy_process_group()
