"""PyTorch's FSDP2 (``fully_shard``) as a strategy: each rank keeps 1/N of every parameter, gradient and
optimizer state, and gathers a layer's parameters only while it computes with them.

What it changes (joining and collectives are ``process_group.ProcessGroupStrategy``'s):
- wrap: ``fully_shard`` each layer that has parameters, then the whole model, over a one-dimensional
  ``DeviceMesh`` of all ranks; the parameters become ``DTensor`` shards, so the optimizer is built again over
  them (same class, same settings); ``precision="bf16"`` computes in bf16 (``precision_policy``);
- no_sync: while accumulating, gradients are not reduce-scattered until the group's last micro-batch;
- full_state_dict: ``full_tensor()`` gathers every shard;
- save/load_checkpoint: ``torch.distributed.checkpoint``: every rank writes and reads its own shards.

Forward and backward, and hence the driver's ``train_step``, are unchanged: FSDP's hooks all-gather each
layer before it runs and reduce-scatter its gradients (averaged, as DDP's all-reduce) during ``backward``.

Launch recipes::

    dtutor.launch.train(2, strategy="fsdp", optimizer="adam", lr=1e-3)
    dtutor.launch.train(2, strategy="fsdp", optimizer="adam", lr=1e-3, precision="bf16")
    torchrun --standalone --nproc-per-node=2 -m dtutor.launch dtutor.pytorch.driver:train strategy=fsdp
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import torch
import torch.distributed.checkpoint as dcp
from torch import nn
from torch.distributed.checkpoint.state_dict import get_state_dict, set_state_dict
from torch.distributed.device_mesh import init_device_mesh
from torch.distributed.fsdp import MixedPrecisionPolicy, fully_shard
from torch.distributed.tensor import DTensor

from dtutor.pytorch import checkpoint
from dtutor.pytorch.process_group import ProcessGroupStrategy, rebuild_optimizer

EXTRA = "epoch_and_rng.pt"  # written last: its presence means the checkpoint is complete


def precision_policy(precision: str) -> MixedPrecisionPolicy:
    """FSDP2's mixed precision for ``config.precision``: "fp32" casts nothing; "bf16" all-gathers the parameters
    and computes forward and backward in bf16, reduce-scatters the gradients in fp32, and keeps the sharded fp32
    parameters as the optimizer's masters; outputs come back in fp32, so the loss is fp32 (as DeepSpeed's step
    does here)."""
    if precision == "bf16":
        return MixedPrecisionPolicy(param_dtype=torch.bfloat16, reduce_dtype=torch.float32, output_dtype=torch.float32)
    return MixedPrecisionPolicy()


def shard_layers(model: nn.Module, mesh: Any, policy: MixedPrecisionPolicy | None = None) -> nn.Module:
    """``fully_shard`` every direct child that has parameters, then the root (which keeps whatever is left)."""
    policy = policy or MixedPrecisionPolicy()
    for child in model.children():
        if any(True for _ in child.parameters()):
            fully_shard(child, mesh=mesh, mp_policy=policy)
    return fully_shard(model, mesh=mesh, mp_policy=policy)


class FSDP(ProcessGroupStrategy):
    """Fully sharded data parallelism, PyTorch's own (FSDP2)."""

    name = "fsdp"

    def wrap(self, model: nn.Module, optimizer: Any) -> tuple[nn.Module, Any]:
        """Shard the model over all ranks, then rebuild ``optimizer`` over the shards."""
        mesh = init_device_mesh(self.device.type, (self.world_size,))
        sharded = shard_layers(model, mesh, precision_policy(self.config.precision))
        return sharded, rebuild_optimizer(optimizer, sharded.parameters())

    @contextlib.contextmanager
    def no_sync(self, model: nn.Module) -> Iterator[None]:
        """Keep this micro-batch's gradients unreduced (they add up locally until the last one)."""
        model.set_requires_gradient_sync(False)
        try:
            yield
        finally:
            model.set_requires_gradient_sync(True)

    def full_state_dict(self, model: nn.Module) -> dict[str, torch.Tensor]:
        """Every tensor of the model, its shards gathered from all ranks (a collective: every rank calls it)."""
        return {k: v.full_tensor() if isinstance(v, DTensor) else v.detach().clone()
                for k, v in model.state_dict().items()}

    def save_checkpoint(self, path: str, model: nn.Module, optimizer: Any, epoch: int) -> None:
        """Every rank writes its shards into the folder ``path``; rank 0 then the epoch and random generators."""
        model_state, optimizer_state = get_state_dict(model, optimizer)
        dcp.save({"model": model_state, "optimizer": optimizer_state}, checkpoint_id=path)
        if self.is_logger:
            torch.save({"epoch": epoch, "rng": checkpoint.rng_state()}, Path(path) / EXTRA)
        self.barrier()

    def load_checkpoint(self, path: str, model: nn.Module, optimizer: Any) -> int | None:
        """Every rank reads its shards back; None when there is no complete checkpoint in ``path``."""
        if not (Path(path) / EXTRA).exists():
            return None
        model_state, optimizer_state = get_state_dict(model, optimizer)
        state = {"model": model_state, "optimizer": optimizer_state}
        dcp.load(state, checkpoint_id=path)
        set_state_dict(model, optimizer, model_state_dict=state["model"], optim_state_dict=state["optimizer"])
        extra = torch.load(Path(path) / EXTRA, weights_only=False)
        checkpoint.set_rng_state(extra["rng"])
        return extra["epoch"]
