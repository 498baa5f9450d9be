"""ZeRO-1 written out: each rank keeps the optimizer state of its shard of the parameters only (notebook 06).

``ShardedOptimizer(params, optimizer_class, **defaults)`` wraps any ``torch.optim`` optimizer. The parameters are
flattened into one vector, padded with zeros to a multiple of the world size N and cut into N equal shards;
rank r's inner optimizer (e.g. ``torch.optim.Adam``) is built over a copy of shard r only, so its state
(Adam's two moments) is 1/N of DDP's. Every rank still holds the whole model and computes whole gradients, as in
DDP; ``step`` then does with two collectives what DDP's all-reduce does, plus the sharded update:

1. ``dist.reduce_scatter_tensor``: rank r receives the sum over ranks of shard r of the flat gradient (divided by
   N: DDP's average);
2. the inner optimizer steps shard r;
3. ``dist.all_gather_into_tensor``: every rank receives every updated shard, and copies them into its parameters.

Reduce-scatter plus all-gather move as many bytes as one all-reduce (which a ring does as exactly these two
phases), so ZeRO-1 saves (N - 1)/N of the optimizer state at no extra communication.

``prove_zero1`` (an entry point for ``dtutor.launch.run``) trains three twins in one launch: this optimizer, torch's
DDP with the whole Adam, and DeepSpeed's ZeRO stage 1, and returns each rank's parameters and optimizer-state
bytes; ``proof`` compares them.

    dtutor.launch.run("dtutor.pytorch.sharded.zero1_by_hand:prove_zero1", 2, steps=4)
    torchrun --standalone --nproc-per-node=2 -m dtutor.launch dtutor.pytorch.sharded.zero1_by_hand:prove_zero1 steps=4
"""

from __future__ import annotations

import math
from collections.abc import Iterable
from typing import Any

import torch
import torch.distributed as dist
from torch import nn

from dtutor import models
from dtutor.result import identical, max_difference

MODEL = {"width": 15, "depth": 2, "in_features": 20}  # wide_mlp: 715 parameters, odd, so 2 shards need padding


class ShardedOptimizer:
    """ZeRO-1: the parameters flattened and cut into one shard per rank; ``optimizer_class(shard, **defaults)``
    holds the state of this rank's shard only; ``step`` reduce-scatters the gradients, steps the shard and
    all-gathers the parameters (call it after ``backward`` on every rank, as DDP's ranks do)."""

    def __init__(self, params: Iterable[nn.Parameter], optimizer_class: type[torch.optim.Optimizer],
                 **defaults: Any) -> None:
        self.params = [p for p in params if p.requires_grad]
        if not self.params or len({(p.dtype, p.device) for p in self.params}) != 1:
            raise ValueError("ShardedOptimizer: needs parameters, all of one dtype on one device")
        self.rank, self.world_size = dist.get_rank(), dist.get_world_size()
        self.numel = sum(p.numel() for p in self.params)
        self.shard_size = math.ceil(self.numel / self.world_size)  # the last shard ends in padding
        self.padded_size = self.shard_size * self.world_size
        self.start = self.rank * self.shard_size
        whole = self.flatten([p.detach() for p in self.params])
        self.shard = nn.Parameter(whole[self.start:self.start + self.shard_size].clone())  # what this rank steps
        self.optimizer = optimizer_class([self.shard], **defaults)

    def flatten(self, tensors: list[torch.Tensor]) -> torch.Tensor:
        """The tensors (one per parameter, in order) as one flat vector of ``padded_size``, zero-padded."""
        flat = torch.zeros(self.padded_size, dtype=self.params[0].dtype, device=self.params[0].device)
        flat[:self.numel] = torch.cat([t.reshape(-1) for t in tensors])
        return flat

    @torch.no_grad()
    def step(self) -> None:
        """Reduce-scatter the gradients (averaged), step this rank's shard, all-gather the parameters."""
        gradients = self.flatten([p.grad if p.grad is not None else torch.zeros_like(p) for p in self.params])
        self.shard.grad = torch.empty_like(self.shard)
        dist.reduce_scatter_tensor(self.shard.grad, gradients, op=dist.ReduceOp.SUM)  # shard r of the sum
        self.shard.grad /= self.world_size  # the average over ranks, as DDP's
        self.optimizer.step()  # the inner optimizer's state covers this shard only
        gathered = torch.empty_like(gradients)
        dist.all_gather_into_tensor(gathered, self.shard.detach())  # every rank's updated shard, in rank order
        offset = 0
        for p in self.params:
            p.copy_(gathered[offset:offset + p.numel()].view_as(p))
            offset += p.numel()

    def zero_grad(self, set_to_none: bool = True) -> None:
        """Clear the model's gradients and the shard's."""
        for p in self.params:
            if set_to_none:
                p.grad = None
            elif p.grad is not None:
                p.grad.zero_()
        self.optimizer.zero_grad(set_to_none=set_to_none)


def optimizer_state_bytes(optimizer: torch.optim.Optimizer) -> dict[str, int]:
    """Bytes of an optimizer's state tensors: ``per_element`` (shaped like their parameter: Adam's moments) and
    ``scalars`` (the rest: Adam's step counters)."""
    totals = {"per_element": 0, "scalars": 0}
    for parameter, state in optimizer.state.items():
        for value in state.values():
            if isinstance(value, torch.Tensor):
                kind = "per_element" if value.shape == parameter.shape else "scalars"
                totals[kind] += value.numel() * value.element_size()
    return totals


def _batch(seed: int, step: int, rank: int, size: int, device: torch.device) -> tuple[torch.Tensor, torch.Tensor]:
    generator = torch.Generator().manual_seed(seed * 100_000 + step * 1_000 + rank)
    return (torch.randn(size, MODEL["in_features"], generator=generator).to(device),
            torch.randint(0, 10, (size,), generator=generator).to(device))


def _model(seed: int, device: torch.device) -> nn.Module:
    return models.seeded(models.wide_mlp, seed, **MODEL).to(device)


def _numpy(module: nn.Module) -> dict[str, Any]:
    return {name: tensor.detach().cpu().numpy().copy() for name, tensor in module.state_dict().items()}


def _train(model: nn.Module, optimizer: Any, seed: int, steps: int, size: int) -> None:
    """The plain loop the by-hand and DDP twins share, on this rank's batches."""
    device = next(model.parameters()).device
    for step in range(steps):
        inputs, targets = _batch(seed, step, dist.get_rank(), size, device)
        optimizer.zero_grad()
        nn.functional.cross_entropy(model(inputs), targets).backward()
        optimizer.step()


def _train_deepspeed(seed: int, steps: int, size: int, lr: float, backend: str) -> dict[str, Any]:
    from dtutor.config import TrainConfig
    from dtutor.pytorch.sharded.deepspeed_zero import DeepSpeedZeRO

    world = dist.get_world_size()
    config = TrainConfig(strategy="deepspeed", zero_stage=1, optimizer="adam", lr=lr, global_batch=size * world,
                         samples=size * world, test_samples=0, backend=backend)
    strategy = DeepSpeedZeRO(config)
    strategy.join()  # the group this launch already joined, kept for the caller
    model = _model(seed, strategy.device)
    try:
        engine, optimizer = strategy.wrap(model, torch.optim.Adam(model.parameters(), lr=lr))
        for step in range(steps):
            batch = _batch(seed, step, strategy.rank, size, strategy.device)
            strategy.train_step(engine, optimizer, [batch], nn.functional.cross_entropy)
        return {name: tensor.cpu().numpy() for name, tensor in strategy.full_state_dict(engine).items()}
    finally:
        strategy.teardown()


def prove_zero1(steps: int = 4, micro_batch: int = 8, lr: float = 1e-3, seed: int = 0, deepspeed: bool = True,
                backend: str = "auto") -> dict[str, Any]:
    """Entry point (one process per rank): ``steps`` Adam steps of ``wide_mlp(**MODEL)`` on this rank's random
    batches of ``micro_batch``, three times: ``ShardedOptimizer``, torch's DDP, DeepSpeed's ZeRO-1 (``deepspeed``).

    Returns this rank's final parameters of each twin, the initial ones, its shard, its inner optimizer's state
    bytes (measured from the state tensors), and the last step's gradient of its shard: reduce-scattered here, and
    DDP's all-reduced one (without the padding, which has no gradient)."""
    from dtutor.pytorch.process_group import join_process_group, leave_process_group

    rank, world, device = join_process_group(backend)
    try:
        by_hand = _model(seed, device)
        optimizer = ShardedOptimizer(by_hand.parameters(), torch.optim.Adam, lr=lr)
        _train(by_hand, optimizer, seed, steps, micro_batch)
        ddp = nn.parallel.DistributedDataParallel(_model(seed, device),
                                                  device_ids=[device] if device.type == "cuda" else None)
        _train(ddp, torch.optim.Adam(ddp.parameters(), lr=lr), seed, steps, micro_batch)
        ddp_gradient = torch.cat([p.grad.reshape(-1) for p in ddp.parameters()])  # the last step's, averaged
        runs = {"by_hand": _numpy(by_hand), "ddp": _numpy(ddp.module)}
        if deepspeed:
            runs["deepspeed_zero1"] = _train_deepspeed(seed, steps, micro_batch, lr, backend)
        shard = slice(optimizer.start, optimizer.start + optimizer.shard_size)
        return {"rank": rank, "world_size": world, "steps": steps, "parameters": runs,
                "initial": _numpy(_model(seed, device)), "parameter_count": optimizer.numel,
                "shard_size": optimizer.shard_size, "padded_size": optimizer.padded_size,
                "shard_start": optimizer.start, "state_bytes": optimizer_state_bytes(optimizer.optimizer),
                "state_shapes": sorted({tuple(v.shape) for s in optimizer.optimizer.state.values() for v in s.values()
                                        if isinstance(v, torch.Tensor)}),
                "shard_gradient": optimizer.shard.grad.cpu().numpy().copy(),  # reduce-scattered and averaged
                "ddp_gradient": ddp_gradient[shard].cpu().numpy().copy()}
    finally:
        leave_process_group()


def proof(results: list[dict[str, Any]]) -> dict[str, Any]:
    """What every rank's ``prove_zero1`` result says: the by-hand twin's largest parameter difference from each
    library twin (on rank 0), its largest difference from DDP's averaged gradient over every rank's shard (Adam
    would hide a gradient off by a constant factor; this does not), whether all ranks hold bitwise the same
    model, and how far training moved it."""
    first = results[0]["parameters"]
    gradient = max(float(abs(r["shard_gradient"][:len(r["ddp_gradient"])] - r["ddp_gradient"]).max()) for r in results)
    return {"difference": {name: max_difference(first["by_hand"], run) for name, run in first.items()
                           if name != "by_hand"}, "gradient_difference": gradient,
            "ranks_agree": all(identical(r["parameters"]["by_hand"], first["by_hand"]) for r in results),
            "moved": max_difference(first["by_hand"], results[0]["initial"])}
