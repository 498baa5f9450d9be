"""DistributedDataParallel as a strategy: one process per rank, gradients all-reduced during ``backward``.

What it changes (joining, collectives and teardown are ``process_group.ProcessGroupStrategy``'s):
- wrap: ``DistributedDataParallel(model)`` broadcasts rank 0's weights and registers hooks that all-reduce
  gradient buckets while ``backward`` still runs;
- no_sync: while accumulating, every micro-batch but the last skips that all-reduce;
- release: the DDP object goes before the process group does.

Launch recipes: see ``dtutor.pytorch.driver`` (``strategy=ddp`` under torchrun).
"""

from __future__ import annotations

import contextlib
from typing import Any

from torch import nn
from torch.nn.parallel import DistributedDataParallel

from dtutor.pytorch.process_group import ProcessGroupStrategy


class DDP(ProcessGroupStrategy):
    """PyTorch's DistributedDataParallel."""

    name = "ddp"
    wrapped: DistributedDataParallel | None = None

    def wrap(self, model: nn.Module, optimizer: Any) -> tuple[nn.Module, Any]:
        """``DistributedDataParallel(model)``; the optimizer is unchanged."""
        device_ids = [self.device.index] if self.device.type == "cuda" else None
        self.wrapped = DistributedDataParallel(model, device_ids=device_ids)
        return self.wrapped, optimizer

    def no_sync(self, model: nn.Module) -> contextlib.AbstractContextManager:
        """DDP's own ``no_sync``: gradients stay local until the group's last micro-batch."""
        return model.no_sync()

    def release(self) -> None:
        """Release DDP's hooks before the process group goes."""
        self.wrapped = None
