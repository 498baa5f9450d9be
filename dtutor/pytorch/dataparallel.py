"""``torch.nn.DataParallel`` as a strategy: one process, the batch scattered over every visible GPU.

What it changes: the model is wrapped in ``nn.DataParallel`` on the first GPU, which scatters each batch,
replicates the module, runs the replicas in threads and gathers the outputs there (notebook 01 takes
those four phases apart: ``dtutor.pytorch.dataparallel_lessons``). One process, so no rank, no reduce, no
process group: the world size is 1 and the whole global batch goes through it. Without GPUs DataParallel
simply calls the module.

Launch recipe (one process, every visible GPU)::

    dtutor.launch.train(1, strategy="dataparallel", global_batch=256)
"""

from __future__ import annotations

from typing import Any

import torch
from torch import nn

from dtutor.pytorch.strategy import Strategy


def gpu_ids() -> list[int]:
    """Indices of the visible CUDA GPUs (empty without CUDA)."""
    return list(range(torch.cuda.device_count())) if torch.cuda.is_available() else []


class DataParallel(Strategy):
    """``nn.DataParallel`` over every visible GPU (the CPU without one)."""

    name = "dataparallel"

    def join(self) -> None:
        """One process; its device is the first GPU, where DataParallel keeps the real weights."""
        self.device_ids = gpu_ids()
        if self.device_ids:
            self.device = torch.device("cuda", self.device_ids[0])

    def wrap(self, model: nn.Module, optimizer: Any) -> tuple[nn.Module, Any]:
        """``nn.DataParallel(model)``; the optimizer is unchanged (it updates the one real copy)."""
        return nn.DataParallel(model, device_ids=self.device_ids or None), optimizer
