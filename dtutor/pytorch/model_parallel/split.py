"""The Alibaba Cloud article's model-parallel split in PyTorch: part1 (Conv 32 + MaxPool) on one device,
part2 (the rest) on another.

Two ways, the same split (``split_cnn``):

- ``TwoDeviceCNN``: one process, part1 on ``cuda:0`` and part2 on ``cuda:1``; the activation moves with
  ``.to(device)`` between them (``two_device_demo`` runs it, on the CPU twice when there are no 2 GPUs);
- ``split_demo``: two processes, one per part (gloo on a CPU, where the split only matters when the parts
  have separate hardware). Forward: rank 0 sends part1's activation (N, 32, 13, 13) to rank 1; backward:
  rank 1 sends the activation's gradient, the same shape, back. It is the pipeline of ``gpipe`` with one
  micro-batch, so one rank always waits for the other: ``split_demo`` also returns that step's timeline.

Proof: the split's forward output and its parameters after one SGD step equal the unsplit model's from the
same weights (the same operations in the same order, so the differences are 0 or float32 rounding).

Launch recipe::

    dtutor.launch.run("dtutor.pytorch.model_parallel.split:split_demo", 2)
    torchrun --standalone --nproc-per-node=2 -m dtutor.launch dtutor.pytorch.model_parallel.split:split_demo
"""

from __future__ import annotations

from typing import Any

import torch
import torch.distributed as dist
from torch import nn

from dtutor import models
from dtutor.pytorch.model_parallel import stages as st
from dtutor.pytorch.model_parallel.gpipe import gpipe_actions, run_stage
from dtutor.pytorch.model_parallel.timeline import gather
from dtutor.pytorch.process_group import join_process_group, leave_process_group

ARTICLE_CUT = (1,)  # part1 = the first layer: Conv 32 + ReLU + MaxPool


def split_cnn(model: nn.Sequential) -> tuple[nn.Sequential, nn.Sequential]:
    """The article's split of the course's CNN: part1 = Conv 32 + ReLU + MaxPool, part2 = everything after."""
    part1, part2 = st.stage_modules(model, ARTICLE_CUT)
    return part1, part2


class TwoDeviceCNN(nn.Module):
    """The CNN with part1 on ``first`` and part2 on ``second``; the activation is moved between them."""

    def __init__(self, model: nn.Sequential, first: torch.device | str, second: torch.device | str):
        super().__init__()
        part1, part2 = split_cnn(model)
        self.first, self.second = torch.device(first), torch.device(second)
        self.part1, self.part2 = part1.to(self.first), part2.to(self.second)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """part1 on the first device, then the activation crosses to the second device for part2."""
        return self.part2(self.part1(x.to(self.first)).to(self.second))


def _sgd_step(model: nn.Module, x: torch.Tensor, y: torch.Tensor, lr: float) -> torch.Tensor:
    """One plain SGD step on the mean cross-entropy; returns the outputs before the step."""
    outputs = model(x)
    nn.functional.cross_entropy(outputs, y.to(outputs.device)).backward()
    with torch.no_grad():
        for parameter in model.parameters():
            parameter -= lr * parameter.grad
    return outputs.detach()


def two_device_demo(batch: int = 32, lr: float = 0.05, seed: int = 0) -> dict[str, Any]:
    """In this process: the split on ``cuda:0``/``cuda:1`` (or the CPU twice) against the unsplit model.

    Returns the devices used, the forward and after-one-step differences, and the activation's shape.
    """
    gpus = torch.cuda.device_count()
    devices = ("cuda:0", "cuda:1") if gpus >= 2 else ("cpu", "cpu")
    x, y = st.mnist_batch(batch, torch.device("cpu"))
    split = TwoDeviceCNN(models.seeded(models.mnist_cnn, seed), *devices)
    whole = models.seeded(models.mnist_cnn, seed).to(devices[1])
    forward = float((_sgd_step(split, x, y, lr).cpu() - _sgd_step(whole, x.to(devices[1]), y, lr).cpu()).abs().max())
    step = max(float((a.cpu() - b.cpu()).abs().max())
               for a, b in zip(split.state_dict().values(), whole.state_dict().values(), strict=True))
    return {"devices": devices, "forward_difference": forward, "step_difference": step,
            "activation_shape": tuple(split.part1(x.to(devices[0])).shape)}


def split_demo(batch: int = 32, lr: float = 0.05, seed: int = 0, backend: str = "gloo") -> dict[str, Any]:
    """Entry point for 2 ranks: part1 on rank 0, part2 on rank 1, one SGD step by send/recv (module docs).

    Returns, the same on both ranks: the forward and after-one-step differences from the unsplit model,
    the activation's shape and bytes per crossing, each part's parameter count and the timeline of a second
    step (the first one includes one-time warm-up).
    """
    rank, world, device = join_process_group(backend)
    if world != 2:
        raise ValueError(f"the article's split has 2 parts: run it on 2 ranks, got {world}")
    try:
        model = models.seeded(models.mnist_cnn, seed).to(device)
        parts = split_cnn(model)
        whole = models.seeded(models.mnist_cnn, seed).to(device)
        x, y = st.mnist_batch(batch, device)
        shapes = st.boundary_shapes(parts, x)
        done = run_stage(parts[rank], gpipe_actions(1), stage=rank, stages=2, shapes=shapes, inputs=[x],
                         targets=[y], device=device)
        forward_difference = 0.0
        if rank == 1:  # the split's output is on rank 1: compare with the unsplit forward
            outputs = parts[1](st.recv(shapes[0], 0, device))
            forward_difference = float((outputs - whole(x)).detach().abs().max())
        else:
            st.send(parts[0](x), 1)
        with torch.no_grad():
            for parameter in parts[rank].parameters():
                parameter -= lr * parameter.grad
        _sgd_step(whole, x, y, lr)
        reference = dict(whole.named_parameters())
        step_difference = max(float((p - reference[n]).detach().abs().max()) for n, p in parts[rank].named_parameters())
        for parameter in parts[rank].parameters():
            parameter.grad = None
        timed = run_stage(parts[rank], gpipe_actions(1), stage=rank, stages=2, shapes=shapes, inputs=[x],
                          targets=[y], device=device)  # the first step includes one-time warm-up: time a second
        facts = [None] * world
        dist.all_gather_object(facts, (forward_difference, step_difference, models.count_parameters(parts[rank]),
                                       float(done.losses[0]) if done.losses else None))
        activation = torch.Size(shapes[0])
        return {"forward_difference": max(f[0] for f in facts), "step_difference": max(f[1] for f in facts),
                "activation_shape": tuple(activation), "activation_bytes": activation.numel() * 4,
                "parameters": [f[2] for f in facts], "loss": facts[1][3], "events": gather(timed.events),
                "device": str(device)}
    finally:
        leave_process_group()
