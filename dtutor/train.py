"""The one training loop every PyTorch strategy in the course uses, with its metrics and seeding.

A strategy decides how the model is wrapped (DataParallel, DDP, Horovod's optimizer, ...) and where the
batches come from; this loop does the rest the same way for all of them: forward, loss, backward,
optional gradient accumulation, optimizer step, metrics, and a ``tqdm.auto`` progress bar.

Strategies plug in through three arguments:
- ``no_sync``: a callable returning a context manager used for every micro-batch but the last of an
  accumulation group (DDP passes ``model.no_sync``), so gradients are communicated once per step;
- ``reduce``: a callable that sums a tensor across workers (``dist.all_reduce``, ``hvd.allreduce``), so
  the reported loss, accuracy and sample counts are global, not per worker;
- ``on_step``: a callback after each optimizer step (checkpoints, logging).
"""

from __future__ import annotations

import contextlib
import os
import random
import time
from collections.abc import Callable, Iterable, Iterator
from dataclasses import asdict, dataclass, field

import numpy as np
import torch
from torch import nn


def seed_everything(seed: int) -> None:
    """Seed Python, NumPy and PyTorch (CPU and every GPU) so runs repeat exactly."""
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)


@dataclass
class Metrics:
    """What a training run reports: global over all workers when a ``reduce`` was given."""

    steps: int = 0
    samples: int = 0
    loss: float = float("nan")  # mean over the samples seen
    accuracy: float = float("nan")
    seconds: float = 0.0
    history: list[float] = field(default_factory=list)  # loss of each optimizer step

    @property
    def samples_per_second(self) -> float:
        return self.samples / self.seconds if self.seconds > 0 else float("nan")

    def as_dict(self) -> dict:
        return {**asdict(self), "samples_per_second": self.samples_per_second}


def _to(batch, device: torch.device | str | None):
    if device is None:
        return batch
    return tuple(t.to(device, non_blocking=True) for t in batch)


def _groups(batches: Iterable, size: int) -> Iterator[list]:
    group: list = []
    for batch in batches:
        group.append(batch)
        if len(group) == size:
            yield group
            group = []
    if group:
        raise ValueError(f"the batches ran out mid accumulation group ({len(group)} of {size} micro-batches)")


def train(
    model: nn.Module,
    batches: Iterable,
    optimizer: torch.optim.Optimizer,
    *,
    loss_fn: Callable = nn.functional.cross_entropy,
    device: torch.device | str | None = None,
    accumulation: int = 1,
    max_steps: int | None = None,
    no_sync: Callable[[], contextlib.AbstractContextManager] | None = None,
    reduce: Callable[[torch.Tensor], torch.Tensor] | None = None,
    on_step: Callable[[int, float], None] | None = None,
    progress: bool | str = True,
) -> Metrics:
    """Train ``model`` on ``batches`` of ``(inputs, targets)``; one optimizer step per ``accumulation`` batches.

    The loss of each micro-batch is divided by ``accumulation`` so that the accumulated gradient equals
    the gradient of the mean loss over the whole group, as if it were one batch. ``progress`` is ``True``
    for a bar, ``False`` for none, or a string used as the bar's label.
    """
    if accumulation < 1:
        raise ValueError(f"accumulation must be >= 1, got {accumulation}")
    model.train()
    bar = None
    if progress:
        from tqdm.auto import tqdm

        label = progress if isinstance(progress, str) else "train"
        bar = tqdm(total=max_steps, desc=label, leave=False, disable=os.environ.get("DTUTOR_NO_TQDM") == "1")
    totals = torch.zeros(3, dtype=torch.float64)  # loss sum, correct, samples (this worker)
    metrics = Metrics()
    start = time.perf_counter()
    for group in _groups(batches, accumulation):
        if max_steps is not None and metrics.steps >= max_steps:
            break
        loss_sum, correct, count = 0.0, 0, 0
        for index, (inputs, targets) in enumerate(group):
            inputs, targets = _to((inputs, targets), device)
            last = index == accumulation - 1
            context = no_sync() if (no_sync is not None and not last) else contextlib.nullcontext()
            with context:
                outputs = model(inputs)
                loss = loss_fn(outputs, targets)
                (loss / accumulation).backward()
            with torch.no_grad():
                loss_sum = loss_sum + loss.detach() * len(targets)  # stays a tensor: no sync per micro-batch
                correct = correct + (outputs.argmax(1) == targets).sum()
                count += len(targets)
        optimizer.step()
        optimizer.zero_grad()  # set_to_none by default; Horovod's optimizer takes no arguments
        metrics.steps += 1
        step_loss = loss_sum.item() / count
        metrics.history.append(step_loss)
        totals += torch.tensor([step_loss * count, float(correct), count], dtype=torch.float64)
        if on_step is not None:
            on_step(metrics.steps, step_loss)
        if bar is not None:
            bar.update(1)
            bar.set_postfix(loss=f"{step_loss:.4f}")
    metrics.seconds = time.perf_counter() - start
    if bar is not None:
        bar.close()
    if reduce is not None:
        totals = reduce(totals)
    if totals[2] > 0:
        metrics.loss = (totals[0] / totals[2]).item()
        metrics.accuracy = (totals[1] / totals[2]).item()
    metrics.samples = int(totals[2].item())
    return metrics


def record_epoch(history: list[dict], epoch: int, metrics: Metrics, world_size: int, log: Callable = print) -> None:
    """Append an epoch's metrics to ``history`` and log one line (strategies pass a rank-0-only ``log``)."""
    history.append({"epoch": epoch, **metrics.as_dict()})
    log(f"epoch {epoch}: loss {metrics.loss:.4f}, accuracy {metrics.accuracy:.3f}, "
        f"{metrics.samples_per_second:.0f} samples/s over {world_size} rank(s)")


@torch.no_grad()
def evaluate(model: nn.Module, batches: Iterable, device: torch.device | str | None = None) -> tuple[float, float]:
    """Mean cross-entropy loss and accuracy of ``model`` on ``batches``."""
    model.eval()
    loss_sum, correct, count = 0.0, 0, 0
    for inputs, targets in batches:
        inputs, targets = _to((inputs, targets), device)
        outputs = model(inputs)
        loss_sum += nn.functional.cross_entropy(outputs, targets, reduction="sum").item()
        correct += (outputs.argmax(1) == targets).sum().item()
        count += len(targets)
    model.train()
    return loss_sum / count, correct / count
