"""DistributedDataParallel done properly (notebook 02).

One process per worker. Each process: joins the process group (gloo on CPU, nccl with one GPU per
rank), reads only its shard of each epoch through ``DistributedSampler`` (``set_epoch`` reshuffles every
epoch, the same way on every rank), trains a DDP-wrapped model with the course's shared loop (gradients
are averaged across ranks during ``backward``; ``no_sync`` skips that for all but the last micro-batch
when accumulating), averages loss and accuracy across ranks, and lets rank 0 alone log and save
checkpoints. ``destroy_process_group`` always runs.

Launch recipes for ``train`` (the per-step batch is ``global_batch`` split over all ranks)::

    # from Python or a notebook (N processes on this machine, backend chosen for you)
    dtutor.ddp.run(nprocs=2, global_batch=64, epochs=1)
    # one machine, 2 processes (use --nproc-per-node=<number of GPUs> on a GPU machine)
    torchrun --standalone --nproc-per-node=2 -m dtutor.launch dtutor.ddp:train global_batch=64 epochs=1
    # two machines with 4 GPUs each: run on both, HOST = the first machine's address
    torchrun --nnodes=2 --nproc-per-node=4 --rdzv-backend=c10d --rdzv-endpoint=HOST:29400 --rdzv-id=job1 \\
        -m dtutor.launch dtutor.ddp:train global_batch=256 backend=nccl
"""

from __future__ import annotations

import gc
import os
import random
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.distributed as dist
from torch.nn.parallel import DistributedDataParallel
from torch.utils.data import DataLoader, DistributedSampler

from dtutor import data, launch, models
from dtutor.train import Metrics, record_epoch, seed_everything
from dtutor.train import train as train_loop

MODELS = {"cnn": models.mnist_cnn, "mlp": models.wide_mlp}


def check_config(world_size: int, global_batch: int, accumulation: int = 1, samples: int = 1024) -> int:
    """Check a data-parallel configuration; return the per-rank micro-batch size.

    Every rank must get the same whole number of samples per micro-batch, and an epoch must hold a whole
    number of optimizer steps, or ranks would disagree on when an epoch ends.
    """
    if world_size < 1:
        raise ValueError(f"world size must be >= 1, got {world_size}")
    if accumulation < 1:
        raise ValueError(f"accumulation must be >= 1, got {accumulation}")
    if global_batch < 1 or global_batch % (world_size * accumulation):
        raise ValueError(
            f"global batch {global_batch} must be a positive multiple of world size x accumulation "
            f"= {world_size} x {accumulation}, so every rank gets the same micro-batch"
        )
    if samples < global_batch or samples % global_batch:
        raise ValueError(f"samples ({samples}) must be a positive multiple of the global batch ({global_batch})")
    return global_batch // (world_size * accumulation)


def make_model(name: str = "cnn", seed: int = 0) -> torch.nn.Module:
    """The model every run starts from: same architecture and weights on every rank (seeded)."""
    if name not in MODELS:
        raise ValueError(f"unknown model {name!r}; choose one of {sorted(MODELS)}")
    return models.seeded(MODELS[name], seed)


def make_optimizer(model: torch.nn.Module, lr: float) -> torch.optim.Optimizer:
    """SGD with momentum: it has state, so checkpoints must carry the optimizer too."""
    return torch.optim.SGD(model.parameters(), lr=lr, momentum=0.9)


def _rng_state() -> dict[str, Any]:
    return {"python": random.getstate(), "numpy": np.random.get_state(), "torch": torch.get_rng_state()}


def _set_rng_state(state: dict[str, Any]) -> None:
    random.setstate(state["python"])
    np.random.set_state(state["numpy"])
    torch.set_rng_state(state["torch"])


def train(
    global_batch: int = 64,
    epochs: int = 1,
    samples: int = 1024,
    accumulation: int = 1,
    lr: float = 0.05,
    seed: int = 0,
    model: str = "cnn",
    backend: str = "gloo",
    checkpoint: str | None = None,
    stop_after_epochs: int | None = None,
    return_parameters: bool = True,
) -> dict[str, Any]:
    """DDP training entry point (launch recipes in the module docstring); returns this rank's results.

    ``checkpoint``: a file rank 0 writes after every epoch (model, optimizer, epoch, RNG states) and every
    rank resumes from if it exists. ``stop_after_epochs`` ends the run early, as an interruption would.
    The result holds the global metrics of each epoch and, with ``return_parameters``, this rank's final
    parameters (equal on every rank: that is what DDP guarantees).
    """
    dist.init_process_group(backend)
    rank, world = dist.get_rank(), dist.get_world_size()
    try:
        micro_batch = check_config(world, global_batch, accumulation, samples)
        device = torch.device("cpu")
        if backend == "nccl":
            device = torch.device("cuda", int(os.environ.get("LOCAL_RANK", "0")))
            torch.cuda.set_device(device)
        log = print if rank == 0 else (lambda *args, **kwargs: None)
        seed_everything(seed)
        dataset = data.torch_dataset(data.load_mnist("train", limit=samples, verbose=rank == 0))
        sampler = DistributedSampler(dataset, num_replicas=world, rank=rank, shuffle=True, seed=seed)
        loader = DataLoader(dataset, batch_size=micro_batch, sampler=sampler)
        net = make_model(model, seed).to(device)
        optimizer = make_optimizer(net, lr)
        first_epoch = 0
        if checkpoint and Path(checkpoint).exists():
            state = torch.load(checkpoint, map_location=device, weights_only=False)
            net.load_state_dict(state["model"])
            optimizer.load_state_dict(state["optimizer"])
            first_epoch = state["epoch"] + 1
            _set_rng_state(state["rng"])
            log(f"resumed from {Path(checkpoint).name} after epoch {state['epoch']}")
        ddp_model = DistributedDataParallel(net, device_ids=[device.index] if device.type == "cuda" else None)

        def sum_across_ranks(tensor: torch.Tensor) -> torch.Tensor:
            tensor = tensor.to(device)
            dist.all_reduce(tensor)
            return tensor.cpu()

        history: list[dict[str, Any]] = []
        last_epoch = epochs if stop_after_epochs is None else min(epochs, stop_after_epochs)
        for epoch in range(first_epoch, last_epoch):
            sampler.set_epoch(epoch)  # a new shuffle each epoch, identical on every rank
            metrics: Metrics = train_loop(
                ddp_model, loader, optimizer, device=device, accumulation=accumulation,
                no_sync=ddp_model.no_sync, reduce=sum_across_ranks, progress=f"epoch {epoch}" if rank == 0 else False,
            )
            slowest = torch.tensor([metrics.seconds], dtype=torch.float64, device=device)
            dist.all_reduce(slowest, op=dist.ReduceOp.MAX)  # throughput is set by the slowest rank
            metrics.seconds = slowest.item()
            record_epoch(history, epoch, metrics, world, log)
            if checkpoint and rank == 0:
                state = {"model": net.state_dict(), "optimizer": optimizer.state_dict(), "epoch": epoch,
                         "rng": _rng_state()}
                torch.save(state, checkpoint + ".tmp")
                os.replace(checkpoint + ".tmp", checkpoint)
            if checkpoint:
                dist.barrier()  # nobody reads the checkpoint before rank 0 has finished writing it
        parameters = {k: v.detach().cpu().clone() for k, v in net.state_dict().items()} if return_parameters else None
        return {"rank": rank, "world_size": world, "micro_batch": micro_batch, "epochs": history,
                "parameters": parameters}
    finally:
        # Drop DDP's communication hooks before the process group goes; without this, torch 2.13 + gloo
        # sometimes aborts at exit ("terminate called without an active exception").
        ddp_model = None  # noqa: F841
        gc.collect()
        dist.destroy_process_group()


def single_process_reference(
    global_batch: int = 64, epochs: int = 1, samples: int = 1024, lr: float = 0.05, seed: int = 0,
    model: str = "cnn",
) -> dict[str, torch.Tensor]:
    """Plain single-process training on the same samples in the same order, one batch of ``global_batch``.

    ``DistributedSampler`` with one replica yields the whole shuffled epoch; the N ranks of a DDP run
    each take every N-th sample of that same order, so one step here sees exactly the samples that one
    step of all ranks together sees.
    """
    check_config(1, global_batch, 1, samples)
    seed_everything(seed)
    dataset = data.torch_dataset(data.load_mnist("train", limit=samples, verbose=False))
    sampler = DistributedSampler(dataset, num_replicas=1, rank=0, shuffle=True, seed=seed)
    loader = DataLoader(dataset, batch_size=global_batch, sampler=sampler)
    net = make_model(model, seed)
    optimizer = make_optimizer(net, lr)
    for epoch in range(epochs):
        sampler.set_epoch(epoch)
        train_loop(net, loader, optimizer, progress=False)
    return {k: v.detach().clone() for k, v in net.state_dict().items()}


def max_difference(a: dict[str, torch.Tensor], b: dict[str, torch.Tensor]) -> float:
    """Largest absolute difference between two parameter sets with the same names."""
    if a.keys() != b.keys():
        raise ValueError("the two parameter sets have different names")
    return max((a[k].float() - b[k].float()).abs().max().item() for k in a)


def run(nprocs: int = 2, *, nnodes: int = 1, timeout: float = 300.0, quiet: bool = False, **options: Any) -> list[dict]:
    """Launch ``train`` on ``nprocs`` local processes (per node) through ``dtutor.launch``; validated first."""
    options.setdefault("global_batch", 64)
    check_config(nprocs * nnodes, options["global_batch"], options.get("accumulation", 1), options.get("samples", 1024))
    return launch.run("dtutor.ddp:train", nprocs, nnodes=nnodes, timeout=timeout, quiet=quiet, **options)
