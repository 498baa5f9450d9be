"""What every model-parallel demo shares: cutting a model into stages, moving tensors between them.

- ``cut_layers`` / ``stage_modules``: a ``Sequential`` cut into contiguous stages of whole layers
  (``dtutor.models.pipeline_layers``); every stage keeps the full model's parameter names, so stage
  gradients and parameters compare with the unsplit model's by name;
- ``send`` / ``recv``: point-to-point transfers of activations and gradients (the receiver must know the
  shape: ``boundary_shapes`` computes them once from a dummy micro-batch); ``send_sized`` / ``recv_sized``
  send the shape first, for batches whose size changes (evaluation).
"""

from __future__ import annotations

from collections import OrderedDict
from collections.abc import Sequence

import torch
import torch.distributed as dist
from torch import nn

from dtutor import data, models
from dtutor.pytorch.sharded.storage import Ledger

MAX_DIMS = 8  # a tensor header: its number of dimensions, then up to 8 sizes


def even_cuts(layers: int, stages: int) -> tuple[int, ...]:
    """Where to cut ``layers`` layers into ``stages`` contiguous stages of (nearly) equal counts."""
    if not 1 <= stages <= layers:
        raise ValueError(f"stages: need 1 <= stages <= {layers} layers, got {stages}")
    return tuple(round(s * layers / stages) for s in range(1, stages))


def stage_modules(model: nn.Sequential, cuts: Sequence[int]) -> list[nn.Sequential]:
    """``model`` cut before the layers numbered ``cuts``: one ``Sequential`` per stage, full-model names kept.

    The stages share the model's modules (no copy): training a stage trains those layers of ``model``.
    """
    layers = models.pipeline_layers(model)
    bounds = [0, *cuts, len(layers)]
    if any(a >= b for a, b in zip(bounds, bounds[1:], strict=False)):
        raise ValueError(f"cuts: need increasing cuts in 1..{len(layers) - 1}, got {tuple(cuts)}")
    return [nn.Sequential(OrderedDict(pair for layer in layers[a:b] for pair in layer))
            for a, b in zip(bounds, bounds[1:], strict=False)]


def boundary_shapes(stages: Sequence[nn.Module], example: torch.Tensor) -> list[torch.Size]:
    """The shape each stage outputs for an input like ``example`` (what the next stage must receive)."""
    shapes = []
    with torch.no_grad():
        for stage in stages:
            example = stage(example)
            shapes.append(example.shape)
    return shapes


def parameter_bytes(module: nn.Module) -> int:
    """Bytes of ``module``'s parameters on this rank (a sharded tensor counts its local shard only), counted by
    the course's one model-state counter, ``sharded.storage.Ledger`` (each storage once)."""
    ledger = Ledger()
    for parameter in module.parameters():
        ledger.add("parameters", parameter)
    return ledger.totals()["parameters"]


def send(tensor: torch.Tensor, to: int, blocking: bool = True) -> dist.Work | None:
    """Send ``tensor`` to rank ``to``: ``dist.send`` (blocking), or ``dist.isend`` returning its request."""
    tensor = tensor.detach().contiguous()
    if blocking:
        dist.send(tensor, to)
        return None
    return dist.isend(tensor, to)


def recv(shape: Sequence[int], source: int, device: torch.device, dtype: torch.dtype = torch.float32) -> torch.Tensor:
    """Receive a tensor of ``shape`` from rank ``source`` (blocking)."""
    buffer = torch.empty(tuple(shape), device=device, dtype=dtype)
    dist.recv(buffer, source)
    return buffer


def send_sized(tensor: torch.Tensor, to: int) -> None:
    """Send ``tensor``'s shape, then ``tensor`` (float32): the receiver needs no shape of its own."""
    header = torch.zeros(MAX_DIMS + 1, dtype=torch.int64, device=tensor.device)
    header[0] = tensor.dim()
    header[1:tensor.dim() + 1] = torch.tensor(tensor.shape, dtype=torch.int64)
    dist.send(header, to)
    send(tensor.float(), to)


def recv_sized(source: int, device: torch.device) -> torch.Tensor:
    """Receive what ``send_sized`` sent."""
    header = recv((MAX_DIMS + 1,), source, device, torch.int64)
    return recv(header[1:int(header[0]) + 1].tolist(), source, device)


def mnist_batch(size: int, device: torch.device, offset: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    """``size`` training images (N, 1, 28, 28) and labels, the same on every rank (MNIST or its fallback)."""
    images = data.load_mnist("train", limit=offset + size, verbose=False)
    x = torch.from_numpy(images.images[offset:]).unsqueeze(1).to(device)
    return x, torch.from_numpy(images.labels[offset:]).to(device)
