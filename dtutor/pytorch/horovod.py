"""Horovod for PyTorch as a strategy: the same data parallelism as DDP, through Horovod's API.

What it changes:
- join: ``hvd.init()``; the rank's GPU is ``hvd.local_rank()``;
- wrap: rank 0's parameters and optimizer state are broadcast to every worker, and the optimizer becomes
  ``hvd.DistributedOptimizer``, which averages each gradient across workers as ``backward`` produces it
  (after ``accumulation`` backward passes when accumulating);
- reduce: ``hvd.allreduce``; teardown: ``hvd.shutdown()``.

Learning rate: ``config.lr`` is the learning rate of the global batch, as for every strategy. The Alibaba
Cloud article's ``lr * hvd.size()`` (in its Keras code) is the same rule seen from the other side: it keeps each
worker's batch fixed, so the global batch (and the rate that suits it) grows with the number of workers.

Launch recipes::

    dtutor.launch.train(2, strategy="horovod", global_batch=64)
    horovodrun -np 2 --gloo -H localhost:2 python -m dtutor.launch dtutor.pytorch.driver:train strategy=horovod
    horovodrun -np 8 -H host1:4,host2:4 python -m dtutor.launch dtutor.pytorch.driver:train strategy=horovod
"""

from __future__ import annotations

from typing import Any

import torch
from torch import nn

from dtutor.pytorch.strategy import Strategy


class Horovod(Strategy):
    """Horovod's ``DistributedOptimizer`` with broadcasts from rank 0."""

    name = "horovod"
    optimizer_options: dict[str, Any] = {}  # more arguments for hvd.DistributedOptimizer (e.g. num_groups)

    def join(self) -> None:
        """``hvd.init()``; pin this worker's GPU by its local rank."""
        import horovod.torch as hvd

        self.hvd = hvd
        hvd.init()
        self.rank, self.world_size = hvd.rank(), hvd.size()
        if torch.cuda.is_available():
            self.device = torch.device("cuda", hvd.local_rank())
            torch.cuda.set_device(self.device)

    def wrap(self, model: nn.Module, optimizer: Any) -> tuple[nn.Module, Any]:
        """Broadcast rank 0's start; wrap the optimizer so gradients are averaged across workers."""
        self.hvd.broadcast_parameters(model.state_dict(), root_rank=0)
        self.hvd.broadcast_optimizer_state(optimizer, root_rank=0)
        return model, self.hvd.DistributedOptimizer(
            optimizer, named_parameters=model.named_parameters(), op=self.hvd.Average,
            backward_passes_per_step=self.config.accumulation, **self.optimizer_options)

    def reduce(self, tensor: torch.Tensor, op: str = "sum") -> torch.Tensor:
        """``hvd.allreduce`` with Sum or Max."""
        return self.hvd.allreduce(tensor, op=self.hvd.Sum if op == "sum" else self.hvd.Max)

    def barrier(self) -> None:
        """``hvd.barrier()``."""
        self.hvd.barrier()

    def teardown(self) -> None:
        """``hvd.shutdown()``."""
        if hasattr(self, "hvd"):
            self.hvd.shutdown()
