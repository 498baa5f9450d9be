"""Tensor parallelism (Megatron-style): each linear pair split across the ranks, as the strategy ``tensor_parallel``.

``parallelize_module`` on a ``DeviceMesh`` over all ranks, with a plan that pairs the model's linear layers:

- the first of a pair is ``ColwiseParallel``: each rank keeps ``out_features / ranks`` rows of the weight
  (output columns) and computes its slice of the output; nothing is communicated in the forward;
- the second is ``RowwiseParallel``: each rank keeps ``in_features / ranks`` columns of the weight, multiplies
  its slice of the activation, and the partial outputs are summed by one all-reduce;
- a last unpaired linear layer (the MLP's classifier) and everything else stay whole on every rank.

So each rank communicates, per linear pair, one all-reduce of the pair's output (batch x out_features) in
the forward, and one of the pair's input gradient (batch x in_features) in the backward when that input
needs a gradient. A pipeline instead sends each activation once, point to point, to the next stage only.

As a strategy: every rank reads the same batches (``data_ranks = 1``); rank 0 alone reports the metrics
(the others would repeat them); the optimizer is rebuilt over the sharded parameters (``DTensor``);
``full_state_dict`` returns ``full_tensor()`` of each. Launch recipes::

    dtutor.launch.train(2, strategy="tensor_parallel", model="mlp", global_batch=64)
    torchrun --standalone --nproc-per-node=2 -m dtutor.launch dtutor.pytorch.driver:train strategy=tensor_parallel
    dtutor.launch.run("dtutor.pytorch.model_parallel.tensor_parallel:tensor_parallel_demo", 2)
"""

from __future__ import annotations

from typing import Any

import torch
import torch.distributed as dist
from torch import nn
from torch.distributed.device_mesh import DeviceMesh, init_device_mesh
from torch.distributed.tensor import DTensor
from torch.distributed.tensor.debug import CommDebugMode
from torch.distributed.tensor.parallel import ColwiseParallel, ParallelStyle, RowwiseParallel, parallelize_module

from dtutor.layout import DATA_X_TENSOR, TENSOR
from dtutor.pytorch.model_parallel import stages as st
from dtutor.pytorch.model_parallel.pipeline import zero_totals
from dtutor.pytorch.process_group import (
    ProcessGroupStrategy,
    join_process_group,
    leave_process_group,
    rebuild_optimizer,
)
from dtutor.pytorch.strategy import Batch, LossFn, StepTotals


def tensor_parallel_plan(model: nn.Module) -> dict[str, ParallelStyle]:
    """Column-wise, then row-wise, for each pair of consecutive linear layers (by name in ``model``)."""
    linears = [name for name, module in model.named_modules() if isinstance(module, nn.Linear)]
    plan: dict[str, ParallelStyle] = {}
    for first, second in zip(linears[0::2], linears[1::2], strict=False):
        plan[first], plan[second] = ColwiseParallel(), RowwiseParallel()
    return plan


def full_tensor(tensor: torch.Tensor) -> torch.Tensor:
    """The whole tensor: gathered from the ranks if it is sharded."""
    return tensor.full_tensor() if isinstance(tensor, DTensor) else tensor


def local_shapes(model: nn.Module) -> dict[str, tuple[tuple[int, ...], tuple[int, ...]]]:
    """Per parameter: (the shard this rank holds, the full shape)."""
    return {name: (tuple(p.to_local().shape) if isinstance(p, DTensor) else tuple(p.shape), tuple(p.shape))
            for name, p in model.named_parameters()}


class TensorParallel(ProcessGroupStrategy):
    """Every linear pair split over all ranks (module docs)."""

    name = "tensor_parallel"
    layout = TENSOR
    device_mesh: DeviceMesh | None = None

    def wrap(self, model: nn.Module, optimizer: Any) -> tuple[nn.Module, Any]:
        """``parallelize_module`` over the tensor dimension; the optimizer rebuilt over the shards."""
        mesh = self.mesh
        self.device_mesh = init_device_mesh(self.device.type, (mesh.data, mesh.tensor),
                                            mesh_dim_names=("data", "tensor"))
        parallelize_module(model, self.device_mesh["tensor"], tensor_parallel_plan(model))
        return model, rebuild_optimizer(optimizer, model.parameters())

    def _reported(self, totals: StepTotals) -> StepTotals:
        """The first shard of each replica reports (its tensor group computed the same outputs)."""
        return totals if self.coordinates.tensor == 0 else zero_totals(self.device)

    def train_step(self, model: nn.Module, optimizer: Any, micro_batches: list[Batch],
                   loss_fn: LossFn) -> StepTotals:
        """The default step; one rank of each tensor group reports the totals."""
        return self._reported(super().train_step(model, optimizer, micro_batches, loss_fn))

    def eval_step(self, model: nn.Module, batch: Batch, loss_fn: LossFn) -> StepTotals:
        """The default evaluation (every rank takes part in the all-reduces); one rank per group reports."""
        return self._reported(super().eval_step(model, batch, loss_fn))

    def full_state_dict(self, model: nn.Module) -> dict[str, torch.Tensor]:
        """Every parameter whole (``full_tensor()`` gathers the shards), on every rank."""
        return {name: full_tensor(value).detach() for name, value in model.state_dict().items()}

    def release(self) -> None:
        """Release the device mesh: it holds the process groups."""
        self.device_mesh = None


class DataTensorParallel(TensorParallel):
    """A 2-D grid: tensor-parallel pairs of ranks, each pair a data-parallel replica reading its own shard.

    On 4 ranks: ranks (0, 1) and (2, 3) each split every linear pair; ranks 0 and 2 hold the same shards, so
    after backward each gradient shard is averaged over the replicas (``dist.all_reduce`` over the mesh's
    data dimension, as DDP does for whole gradients) before the optimizer steps.
    """

    name = "data_tensor"
    layout = DATA_X_TENSOR

    def sync_gradients(self, model: nn.Module) -> None:
        """Average each gradient shard over the data replicas that hold the same shard."""
        group = self.device_mesh["data"].get_group()
        for parameter in model.parameters():
            if parameter.grad is not None:
                local = parameter.grad.to_local() if isinstance(parameter.grad, DTensor) else parameter.grad
                dist.all_reduce(local, group=group)
                local /= self.mesh.data


def mlp_block(width: int = 64, hidden: int = 256) -> nn.Sequential:
    """A transformer-style MLP block: Linear(width, hidden), ReLU, Linear(hidden, width)."""
    return nn.Sequential(nn.Linear(width, hidden), nn.ReLU(), nn.Linear(hidden, width))


def _collectives(mode: CommDebugMode) -> dict[str, int]:
    return {str(op).split(".")[-1]: count for op, count in mode.get_comm_counts().items()}


def tensor_parallel_demo(width: int = 64, hidden: int = 256, batch: int = 8, seed: int = 0,
                         backend: str = "gloo") -> dict[str, Any]:
    """Entry point (2 ranks or more): an MLP block split column- then row-wise, against the unsplit block.

    Returns, the same on every rank: the output and gradient differences (parameter gradients read with
    ``p.grad.full_tensor()``, and the input's gradient), each parameter's local shard and full shape, the
    collectives counted in the forward and in the backward (``CommDebugMode``) with the bytes each
    all-reduces (measured: ``dtutor.bench.probe.CollectiveCounter`` sums the tensors the all-reduces were given),
    and this rank's parameter bytes against the unsplit block's.
    """
    from dtutor.bench.probe import CollectiveCounter

    rank, world, device = join_process_group(backend)
    if hidden % world:
        raise ValueError(f"hidden: {hidden} must divide by the {world} ranks")
    try:
        torch.manual_seed(seed)
        reference = mlp_block(width, hidden).to(device)
        sharded = mlp_block(width, hidden).to(device)
        sharded.load_state_dict(reference.state_dict())
        parallelize_module(sharded, init_device_mesh(device.type, (world,)), tensor_parallel_plan(sharded))
        x = torch.randn(batch, width, generator=torch.Generator().manual_seed(seed + 1)).to(device)
        x_reference = x.clone().requires_grad_()  # as inside a network: the block's input needs a gradient
        x.requires_grad_()
        expected = reference(x_reference)
        expected.square().mean().backward()
        with CommDebugMode() as forward_comms, CollectiveCounter(world) as forward_bytes:
            outputs = sharded(x)
        with CommDebugMode() as backward_comms, CollectiveCounter(world) as backward_bytes:
            outputs.square().mean().backward()
        grads = {name: p.grad for name, p in reference.named_parameters()}
        gradient = max(float((full_tensor(p.grad) - grads[n]).abs().max()) for n, p in sharded.named_parameters())
        gradient = max(gradient, float((x.grad - x_reference.grad).abs().max()))
        shards: list[Any] = [None] * world
        dist.all_gather_object(shards, local_shapes(sharded))
        return {"ranks": world, "output_difference": float((outputs - expected).detach().abs().max()),
                "gradient_difference": gradient, "local_shapes": shards,
                "forward_collectives": _collectives(forward_comms),
                "backward_collectives": _collectives(backward_comms),
                "forward_all_reduce_bytes": int(forward_bytes.bytes["all_reduce"]),
                "backward_all_reduce_bytes": int(backward_bytes.bytes["all_reduce"]),
                "parameter_bytes": st.parameter_bytes(sharded),
                "unsplit_parameter_bytes": st.parameter_bytes(reference)}
    finally:
        leave_process_group()
