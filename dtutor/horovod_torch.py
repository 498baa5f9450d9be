"""Horovod for PyTorch (notebook 03): the same data parallelism as DDP, through Horovod's API.

Each worker: ``hvd.init()``; pins its GPU by ``hvd.local_rank()``; scales the learning rate by
``hvd.size()`` (each step sees ``size`` times more samples); wraps its optimizer in
``hvd.DistributedOptimizer`` with the model's named parameters (gradients are averaged across workers
as they are produced in ``backward``); broadcasts parameters and optimizer state from rank 0 so every
worker starts equal; reads its own shard of the data; averages metrics with ``hvd.allreduce``; and lets
rank 0 alone log and write checkpoints. The training loop is the course's shared one.

Launch recipes for ``train``::

    # from Python or a notebook
    dtutor.horovod_torch.run(nprocs=2, global_batch=64)
    # this machine, 2 processes (Gloo; add nothing else on a GPU machine: one process per GPU)
    horovodrun -np 2 --gloo -H localhost:2 python -m dtutor.launch dtutor.horovod_torch:train global_batch=64
    # two machines with 4 GPUs each
    horovodrun -np 8 -H host1:4,host2:4 python -m dtutor.launch dtutor.horovod_torch:train global_batch=256
"""

from __future__ import annotations

import os
from typing import Any

import torch
from torch.utils.data import DataLoader, DistributedSampler

from dtutor import data, launch
from dtutor.ddp import check_config, make_model, make_optimizer
from dtutor.train import record_epoch, seed_everything
from dtutor.train import train as train_loop


def train(
    global_batch: int = 64,
    epochs: int = 1,
    samples: int = 1024,
    lr: float = 0.025,
    seed: int = 0,
    model: str = "cnn",
    checkpoint: str | None = None,
    return_parameters: bool = True,
) -> dict[str, Any]:
    """Horovod training entry point (recipes in the module docstring); returns this rank's results.

    ``lr`` is the learning rate for one worker's batch; the optimizer uses ``lr * hvd.size()``.
    """
    import horovod.torch as hvd

    hvd.init()
    rank, size = hvd.rank(), hvd.size()
    micro_batch = check_config(size, global_batch, 1, samples)
    device = torch.device("cpu")
    if torch.cuda.is_available():
        device = torch.device("cuda", hvd.local_rank())
        torch.cuda.set_device(device)
    log = print if rank == 0 else (lambda *args, **kwargs: None)
    seed_everything(seed)
    dataset = data.torch_dataset(data.load_mnist("train", limit=samples, verbose=rank == 0))
    sampler = DistributedSampler(dataset, num_replicas=size, rank=rank, shuffle=True, seed=seed)
    loader = DataLoader(dataset, batch_size=micro_batch, sampler=sampler)
    net = make_model(model, seed + rank).to(device)  # deliberately different start: the broadcast fixes it
    optimizer = make_optimizer(net, lr * size)
    hvd.broadcast_parameters(net.state_dict(), root_rank=0)
    hvd.broadcast_optimizer_state(optimizer, root_rank=0)
    optimizer = hvd.DistributedOptimizer(optimizer, named_parameters=net.named_parameters(), op=hvd.Average)

    def sum_across_ranks(tensor: torch.Tensor) -> torch.Tensor:
        return hvd.allreduce(tensor, op=hvd.Sum, name="metrics")

    history = []
    for epoch in range(epochs):
        sampler.set_epoch(epoch)
        metrics = train_loop(net, loader, optimizer, device=device, reduce=sum_across_ranks,
                             progress=f"epoch {epoch}" if rank == 0 else False)
        slowest = hvd.allreduce(torch.tensor([metrics.seconds]), op=hvd.Max, name="seconds")
        metrics.seconds = slowest.item()
        record_epoch(history, epoch, metrics, size, log)
        if checkpoint and rank == 0:
            torch.save({"model": net.state_dict(), "optimizer": optimizer.state_dict(), "epoch": epoch},
                       checkpoint + ".tmp")
            os.replace(checkpoint + ".tmp", checkpoint)
    parameters = {k: v.detach().cpu().clone() for k, v in net.state_dict().items()} if return_parameters else None
    return {"rank": rank, "world_size": size, "micro_batch": micro_batch, "lr": lr * size, "epochs": history,
            "parameters": parameters}


def allreduce_demo() -> dict[str, list[float]]:
    """Each rank contributes ``[rank + 1, 10 * (rank + 1)]``; returns Horovod's average and sum of them."""
    import horovod.torch as hvd

    hvd.init()
    mine = torch.tensor([hvd.rank() + 1.0, 10.0 * (hvd.rank() + 1)])
    return {"rank": hvd.rank(), "mine": mine.tolist(),
            "average": hvd.allreduce(mine, op=hvd.Average, name="avg").tolist(),
            "sum": hvd.allreduce(mine, op=hvd.Sum, name="sum").tolist()}


def run(nprocs: int = 2, *, hosts: str | None = None, timeout: float = 300.0, quiet: bool = False,
        **options: Any) -> list[dict]:
    """Launch ``train`` with ``horovodrun -np nprocs --gloo``; the configuration is checked first."""
    options.setdefault("global_batch", 64)
    check_config(nprocs, options["global_batch"], 1, options.get("samples", 1024))
    return launch.run_horovod("dtutor.horovod_torch:train", nprocs, framework="torch", hosts=hosts,
                              timeout=timeout, quiet=quiet, **options)
