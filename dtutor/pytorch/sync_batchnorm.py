"""BatchNorm under DDP, and a synced BatchNorm built by hand (notebook 02).

In training, BatchNorm normalises each channel with the mean and variance of the batch it sees. Under DDP that
is each rank's micro-batch, not the global batch: the forward pass differs from one device's, and every rank
updates its running statistics from its own share. torch's ``nn.SyncBatchNorm`` computes the statistics over
all ranks, but only for GPU modules (DDP refuses it on CPUs). ``SyncedBatchNorm2d`` does it by hand with one
all-reduce per layer: each rank sums its per-channel values, their squares and its count; the all-reduced sums
give the global batch's mean and (biased) variance, which normalise, and the unbiased variance
``var x n / (n - 1)`` goes into ``running_var``, as torch does. The all-reduce is an autograd ``Function``
whose backward all-reduces the gradient, so the loss of every rank reaches every rank's inputs.

``batchnorm_under_ddp`` (launch it on 2 ranks) trains the course's CNN with BatchNorm three ways from the same
weights and data: DDP with plain BatchNorm, DDP with ``SyncedBatchNorm2d``, and (rank 0) one device with the
whole global batch; ``differences`` measures how far apart they end::

    torchrun --standalone --nproc-per-node=2 -m dtutor.launch dtutor.pytorch.sync_batchnorm:batchnorm_under_ddp steps=16
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.distributed as dist
import torch.nn.functional as F
from torch import nn
from torch.nn.parallel import DistributedDataParallel

from dtutor import models
from dtutor.data import global_batches, rank_share
from dtutor.pytorch.process_group import join_process_group, leave_process_group

Batch = tuple[torch.Tensor, torch.Tensor]
STATISTICS = ("running_mean", "running_var")  # the buffers BatchNorm updates in training
TOLERANCE = 1e-5  # synced BatchNorm on 2 ranks vs one device, parameters and running statistics, after 16 steps


class AllReduceSum(torch.autograd.Function):
    """``dist.all_reduce`` (sum) that gradients flow through.

    Every rank gets ``y = x_0 + ... + x_{N-1}`` and every rank's loss depends on ``y``, so the gradient of the
    sum of the ranks' losses with respect to ``x_r`` is the sum over ranks of their gradients at ``y``: the
    backward is an all-reduce too.
    """

    @staticmethod
    def forward(ctx, tensor: torch.Tensor) -> torch.Tensor:
        """The sum of every rank's ``tensor``, on every rank."""
        total = tensor.clone()
        dist.all_reduce(total)
        return total

    @staticmethod
    def backward(ctx, gradient: torch.Tensor) -> torch.Tensor:
        """The sum of every rank's gradient at the sum: each rank's loss reached every rank's ``tensor``."""
        total = gradient.clone()
        dist.all_reduce(total)
        return total


class SyncedBatchNorm2d(nn.BatchNorm2d):
    """``nn.BatchNorm2d`` whose training statistics are those of the global batch over all ranks (any device).

    Outside training, or without a process group of 2 or more ranks, it is plain ``nn.BatchNorm2d``.
    """

    def forward(self, inputs: torch.Tensor) -> torch.Tensor:
        """Normalise with the global batch's per-channel mean and variance (one all-reduce), update the running
        statistics with the global mean and unbiased variance, then scale and shift."""
        if not (self.training and dist.is_initialized() and dist.get_world_size() > 1):
            return super().forward(inputs)
        channels, dims = inputs.shape[1], [0, *range(2, inputs.dim())]
        count = inputs.new_tensor([inputs.numel() // channels])
        local = torch.cat([inputs.sum(dims), (inputs * inputs).sum(dims), count])
        total = AllReduceSum.apply(local)  # [sums per channel, sums of squares per channel, samples x pixels]
        n = total[-1]
        mean = total[:channels] / n
        variance = total[channels:2 * channels] / n - mean * mean  # biased: what normalises, as in torch
        if self.track_running_stats:
            self._update_running_statistics(mean.detach(), variance.detach() * n / (n - 1))
        shape = (1, channels) + (1,) * (inputs.dim() - 2)
        normalised = (inputs - mean.view(shape)) * torch.rsqrt(variance.view(shape) + self.eps)
        if self.affine:
            normalised = normalised * self.weight.view(shape) + self.bias.view(shape)
        return normalised

    @torch.no_grad()
    def _update_running_statistics(self, mean: torch.Tensor, unbiased_variance: torch.Tensor) -> None:
        self.num_batches_tracked += 1
        momentum = self.momentum if self.momentum is not None else 1.0 / float(self.num_batches_tracked)
        self.running_mean.lerp_(mean, momentum)
        self.running_var.lerp_(unbiased_variance, momentum)


def convert_to_synced(module: nn.Module) -> nn.Module:
    """``module`` with every ``nn.BatchNorm2d`` replaced by a ``SyncedBatchNorm2d`` holding the same weights and
    running statistics (what ``nn.SyncBatchNorm.convert_sync_batchnorm`` does for GPUs)."""
    if isinstance(module, nn.BatchNorm2d) and not isinstance(module, SyncedBatchNorm2d):
        synced = SyncedBatchNorm2d(module.num_features, module.eps, module.momentum, module.affine,
                                   module.track_running_stats)
        synced.load_state_dict(module.state_dict())
        synced.train(module.training)
        return synced
    for name, child in module.named_children():
        setattr(module, name, convert_to_synced(child))
    return module


def train_steps(model: nn.Module, batches: Sequence[Batch], learning_rate: float) -> nn.Module:
    """One SGD step (momentum 0.9, cross-entropy) per batch; returns ``model``."""
    optimizer = torch.optim.SGD(model.parameters(), lr=learning_rate, momentum=0.9)
    model.train()
    for inputs, targets in batches:
        optimizer.zero_grad()
        F.cross_entropy(model(inputs), targets).backward()
        optimizer.step()
    return model


def state(model: nn.Module) -> dict[str, torch.Tensor]:
    """A CPU copy of ``model``'s parameters and buffers, by name."""
    return {name: value.detach().cpu().clone() for name, value in model.state_dict().items()}


def torch_sync_batchnorm_refusal(model: nn.Module) -> str | None:
    """What DDP says when given torch's ``SyncBatchNorm`` on a CPU module (None where it accepts it: GPUs)."""
    try:
        DistributedDataParallel(nn.SyncBatchNorm.convert_sync_batchnorm(model))
    except ValueError as refusal:
        return str(refusal)
    return None


def batchnorm_under_ddp(steps: int = 16, micro_batch: int = 16, learning_rate: float = 0.05,
                        backend: str = "gloo") -> dict:
    """Train the CNN with BatchNorm from the same weights on this rank's share of each global batch: with DDP and
    plain BatchNorm, then with DDP and ``SyncedBatchNorm2d``; rank 0 also trains one device on the whole global
    batches. Returns the final states (``plain``, ``synced``, rank 0's ``one_device``) and torch's refusal."""
    rank, world_size, device = join_process_group(backend)
    try:
        batches = global_batches(steps, micro_batch * world_size)
        own = [(x.to(device), y.to(device)) for x, y in rank_share(batches, world_size, rank)]
        result: dict = {"rank": rank, "world_size": world_size, "steps": steps, "micro_batch": micro_batch}
        for name, prepare in (("plain", lambda m: m), ("synced", convert_to_synced)):
            model = prepare(models.seeded(models.mnist_cnn_batchnorm).to(device))
            result[name] = state(train_steps(DistributedDataParallel(model), own, learning_rate).module)
        result["torch_sync_batchnorm"] = torch_sync_batchnorm_refusal(models.mnist_cnn_batchnorm().to(device))
        if rank == 0:
            whole = [(x.to(device), y.to(device)) for x, y in batches]
            result["one_device"] = state(train_steps(models.seeded(models.mnist_cnn_batchnorm).to(device), whole,
                                                     learning_rate))
        return result
    finally:
        leave_process_group()


def _largest(a: dict[str, torch.Tensor], b: dict[str, torch.Tensor], statistics: bool) -> float:
    """The largest absolute difference over the running statistics (``statistics``) or over the parameters."""
    names = [n for n in a if n.endswith(STATISTICS) == statistics and not n.endswith("num_batches_tracked")]
    return max(float((a[n] - b[n]).abs().max()) for n in names)


def differences(results: Sequence[dict]) -> dict[str, dict[str, float]]:
    """For ``plain`` and ``synced``: the largest difference between the ranks' running statistics, and between
    rank 0's running statistics and parameters and one device's."""
    ranks, reference = results[0], results[0]["one_device"]
    return {
        name: {
            "running stats, rank 0 vs rank 1": max(_largest(ranks[name], other[name], True) for other in results[1:]),
            "running stats vs one device": _largest(ranks[name], reference, True),
            "parameters vs one device": _largest(ranks[name], reference, False),
        }
        for name in ("plain", "synced")
    }
