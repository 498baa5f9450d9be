"""DDP from scratch, in three steps (notebook 02): what ``DistributedDataParallel`` does to the gradients.

1. **naive** (``average_gradients``): after backward, one ``all_reduce`` per parameter's gradient, then divide by N;
2. **bucketed** (``all_reduce_buckets``): the gradients flattened into buckets of about ``bucket_bytes``
   (``plan_buckets``), one ``all_reduce`` per bucket, the result copied back into each ``.grad``;
3. **overlapped** (``OverlappedGradientSync``): the same buckets, each one's ``all_reduce`` started with
   ``async_op=True`` from a gradient hook (``register_post_accumulate_grad_hook``) as soon as its last gradient
   is ready, during backward; ``wait()`` before the optimizer step.

Buckets follow the parameters in reverse order (the order backward produces their gradients), as torch's DDP
first assigns them. ``compare`` (an entry point, every rank) trains the three, torch's DDP and an unsynced
control from the same seed on the same data split, counting each step's all-reduce calls with the course's
``CollectiveCounter``; ``dtutor.bench.ddp_by_hand`` times them with ``train_version``::

    torchrun --standalone --nproc-per-node=2 -m dtutor.launch dtutor.pytorch.ddp_by_hand:compare steps=4
"""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence
from contextlib import nullcontext
from typing import Any

import torch
import torch.distributed as dist
from torch import nn

from dtutor import data, models
from dtutor.bench.probe import CollectiveCounter
from dtutor.pytorch.process_group import join_process_group, leave_process_group

VERSIONS = ("naive", "bucketed", "overlapped", "torch_ddp", "unsynced")  # unsynced: the control that must differ


def average_gradients(model: nn.Module) -> None:
    """The naive gradient sync: ``all_reduce`` (sum) each parameter's ``.grad``, then divide by the world size."""
    world_size = dist.get_world_size()
    for parameter in model.parameters():
        if parameter.grad is not None:
            dist.all_reduce(parameter.grad, op=dist.ReduceOp.SUM)
            parameter.grad /= world_size


def plan_buckets(model: nn.Module, bucket_bytes: int) -> list[list[nn.Parameter]]:
    """The parameters in reverse order, cut into buckets: a bucket is closed once it holds ``bucket_bytes`` or more
    (the parameter that crosses the limit stays in it, as in torch's DDP); the last holds what is left."""
    buckets: list[list[nn.Parameter]] = [[]]
    filled = 0
    for parameter in reversed([p for p in model.parameters() if p.requires_grad]):
        buckets[-1].append(parameter)
        filled += parameter.numel() * parameter.element_size()
        if filled >= bucket_bytes:
            buckets.append([])
            filled = 0
    return [bucket for bucket in buckets if bucket]


def flatten_gradients(bucket: Sequence[nn.Parameter]) -> torch.Tensor:
    """One flat tensor holding the bucket's gradients one after another (a copy)."""
    return torch.cat([parameter.grad.reshape(-1) for parameter in bucket])


def unflatten_gradients(flat: torch.Tensor, bucket: Sequence[nn.Parameter]) -> None:
    """Copy each parameter's slice of ``flat`` back into its ``.grad``."""
    pieces = torch.split(flat, [parameter.numel() for parameter in bucket])
    for parameter, piece in zip(bucket, pieces, strict=True):
        parameter.grad.copy_(piece.view_as(parameter.grad))


def all_reduce_buckets(buckets: Sequence[Sequence[nn.Parameter]]) -> None:
    """The bucketed gradient sync, after backward: per bucket, flatten, one ``all_reduce``, divide by N, unflatten."""
    world_size = dist.get_world_size()
    for bucket in buckets:
        flat = flatten_gradients(bucket)
        dist.all_reduce(flat, op=dist.ReduceOp.SUM)
        flat /= world_size
        unflatten_gradients(flat, bucket)


class OverlappedGradientSync:
    """The overlapped gradient sync: each bucket's ``all_reduce`` starts (``async_op=True``) during backward, from a
    gradient hook, as soon as the bucket's last gradient is accumulated; ``wait()`` finishes them before the step.

    Buckets start in bucket order only (a ready bucket waits for the ones before it), so that every rank calls its
    collectives in the same order, as torch's DDP does."""

    def __init__(self, model: nn.Module, bucket_bytes: int):
        self.buckets = plan_buckets(model, bucket_bytes)
        self.missing = [len(bucket) for bucket in self.buckets]  # gradients each bucket still waits for
        self.in_flight: list[tuple[dist.Work, torch.Tensor]] = []
        self.started_before_wait: list[int] = []  # per step: buckets already started when wait() was called
        self.handles = [parameter.register_post_accumulate_grad_hook(self._hook(index))
                        for index, bucket in enumerate(self.buckets) for parameter in bucket]

    def _hook(self, index: int) -> Callable[[nn.Parameter], None]:
        """The hook of bucket ``index``'s parameters: count the gradient in, start every bucket now ready in order."""
        def gradient_ready(parameter: nn.Parameter) -> None:
            self.missing[index] -= 1
            while len(self.in_flight) < len(self.buckets) and self.missing[len(self.in_flight)] == 0:
                flat = flatten_gradients(self.buckets[len(self.in_flight)])
                self.in_flight.append((dist.all_reduce(flat, op=dist.ReduceOp.SUM, async_op=True), flat))
        return gradient_ready

    def wait(self) -> None:
        """Wait for every bucket's all-reduce, divide by N, copy back into ``.grad``; ready for the next backward."""
        self.started_before_wait.append(len(self.in_flight))
        if len(self.in_flight) != len(self.buckets):
            raise RuntimeError(f"{len(self.in_flight)} of {len(self.buckets)} buckets started: a gradient is missing")
        world_size = dist.get_world_size()
        for (work, flat), bucket in zip(self.in_flight, self.buckets, strict=True):
            work.wait()
            flat /= world_size
            unflatten_gradients(flat, bucket)
        self.in_flight = []
        self.missing = [len(bucket) for bucket in self.buckets]

    def remove(self) -> None:
        """Remove the hooks from the parameters."""
        for handle in self.handles:
            handle.remove()


def prepare(version: str, model: nn.Module, bucket_bytes: int) -> tuple[nn.Module, Callable[[], None], Any]:
    """What ``train_version`` calls for ``version``: the module to run forward through, the sync to call after
    backward, and the object holding hooks or buckets (torch's DDP: ``bucket_cap_mb`` from ``bucket_bytes``)."""
    if version == "naive":
        return model, lambda: average_gradients(model), None
    if version == "bucketed":
        buckets = plan_buckets(model, bucket_bytes)
        return model, lambda: all_reduce_buckets(buckets), buckets
    if version == "overlapped":
        overlapped = OverlappedGradientSync(model, bucket_bytes)
        return model, overlapped.wait, overlapped
    if version == "torch_ddp":
        wrapped = nn.parallel.DistributedDataParallel(model, bucket_cap_mb=bucket_bytes / 2**20)
        return wrapped, lambda: None, wrapped
    if version == "unsynced":
        return model, lambda: None, None
    raise ValueError(f"version must be one of {', '.join(VERSIONS)}, got {version!r}")


def train_version(version: str, model: nn.Module, batches: Sequence[tuple[torch.Tensor, torch.Tensor]], *,
                  bucket_bytes: int, lr: float = 0.05, count_steps: int | None = None) -> dict[str, Any]:
    """Train ``model`` one SGD step (momentum 0.9) per batch, its gradients synced by ``version``.

    Returns ``all_reduce_calls`` (one per step, counted by ``CollectiveCounter`` during the first ``count_steps``
    steps, default all; counting slows a step, so the counted steps are not timed), ``seconds`` (each other step's
    time on this rank) and ``started_before_wait`` (overlapped: buckets already in flight when backward returned).
    """
    module, sync, holder = prepare(version, model, bucket_bytes)
    optimizer = torch.optim.SGD(model.parameters(), lr=lr, momentum=0.9)
    count_steps = len(batches) if count_steps is None else count_steps
    calls, seconds = [], []
    try:
        for step, (images, labels) in enumerate(batches):
            counter = CollectiveCounter(dist.get_world_size())
            dist.barrier()  # the ranks start each step together
            start = time.perf_counter()
            with counter if step < count_steps else nullcontext():
                optimizer.zero_grad(set_to_none=True)
                nn.functional.cross_entropy(module(images), labels).backward()
                sync()
                optimizer.step()
            if step < count_steps:
                calls.append(counter.calls["all_reduce"])
            else:
                seconds.append(time.perf_counter() - start)
    finally:  # the hooks go with the run, also when a step fails
        if isinstance(holder, OverlappedGradientSync):
            holder.remove()
    started = holder.started_before_wait if isinstance(holder, OverlappedGradientSync) else []
    return {"all_reduce_calls": calls, "seconds": seconds, "started_before_wait": started}


def compare(steps: int = 4, global_batch: int = 64, bucket_bytes: int = 64 * 1024, lr: float = 0.05,
            backend: str = "gloo") -> dict[str, Any]:
    """Entry point (every rank): train the course's CNN ``steps`` steps with each of ``VERSIONS`` from the same seed
    on the same split of MNIST; return each version's parameters (NumPy, by name), its all-reduce calls per step,
    and the overlapped version's buckets in flight when backward returned, plus the buckets' parameter names."""
    rank, world_size, _ = join_process_group(backend)
    try:
        batches = data.rank_share(data.global_batches(steps, global_batch), world_size, rank)
        result: dict[str, Any] = {"rank": rank, "parameters": {}, "all_reduce_calls": {}}
        for version in VERSIONS:
            model = models.seeded(models.mnist_cnn, 0)
            trained = train_version(version, model, batches, bucket_bytes=bucket_bytes, lr=lr)
            result["parameters"][version] = {n: p.detach().numpy().copy() for n, p in model.named_parameters()}
            result["all_reduce_calls"][version] = trained["all_reduce_calls"]
            if version == "overlapped":
                result["started_before_wait"] = trained["started_before_wait"]
        names = {p: n for n, p in model.named_parameters()}
        result["buckets"] = [[names[p] for p in bucket] for bucket in plan_buckets(model, bucket_bytes)]
        return result
    finally:
        leave_process_group()
