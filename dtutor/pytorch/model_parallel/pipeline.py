"""Pipelines on ``torch.distributed.pipelining`` as strategies of the driver: ``pipeline_gpipe``, ``pipeline_1f1b``.

Every rank is one stage: a contiguous run of the model's layers (``stages.even_cuts``; for the CNN on 2
ranks: the two conv layers, then the two dense ones). What the strategy changes:

- data: ``data_ranks = 1``: every stage reads the same batches (stage 0 uses the images, the last stage
  the labels), so the driver's global batch is each step's whole batch, cut into ``micro_batches``;
- wrap: the rank's ``PipelineStage``; the other stages' layers are dropped from this rank (moved to the
  ``meta`` device) and the optimizer keeps only this stage's parameters;
- train_step: ``schedule.step()`` (``ScheduleGPipe`` or ``Schedule1F1B``), then ``optimizer.step()``.
  The schedules divide the gradients by the number of micro-batches themselves (``scale_grads=True``),
  so the loss function returns the plain mean of each micro-batch; dividing it again gives gradients m
  times too small (``library_gradients`` measures that ratio). Only the last stage has the loss: the other
  stages report zero totals, so the driver's sum over ranks counts every sample once;
- eval_step: the stages' forwards by hand, each activation sent with its shape (the last test batch is
  smaller, and a schedule's buffers are sized for the training micro-batches);
- full_state_dict: every stage's parameters gathered (``all_gather_object``) under the full model's names.

Launch recipes (``micro_batches`` must divide the global batch; 1F1B needs ``micro_batches >= stages``)::

    dtutor.launch.train(2, strategy="pipeline_gpipe", micro_batches=4, global_batch=64)
    torchrun --standalone --nproc-per-node=2 -m dtutor.launch dtutor.pytorch.driver:train \\
        strategy=pipeline_1f1b micro_batches=4
    dtutor.launch.run("dtutor.pytorch.model_parallel.pipeline:library_gradients", 2, micro_batches=4)

The same schedules written by hand (``gpipe.PipelineByHand``: ``pipeline_by_hand``, ``pipeline_by_hand_1f1b``)
subclass ``Pipeline``: they share its stage cut (``cut``), evaluation and gathered state.
"""

from __future__ import annotations

from typing import Any

import torch
import torch.distributed as dist
from torch import nn
from torch.distributed.pipelining import PipelineStage, Schedule1F1B, ScheduleGPipe

from dtutor import models
from dtutor.layout import PIPELINE
from dtutor.pytorch.model_parallel import stages as st
from dtutor.pytorch.process_group import (
    ProcessGroupStrategy,
    join_process_group,
    leave_process_group,
    rebuild_optimizer,
)
from dtutor.pytorch.strategy import Batch, LossFn, StepTotals, totals_of

SCHEDULES = {"gpipe": ScheduleGPipe, "1f1b": Schedule1F1B}


def zero_totals(device: torch.device) -> StepTotals:
    """The totals of a stage without the loss: nothing, so the sum over the ranks is the last stage's."""
    zero = torch.zeros((), device=device)
    return StepTotals(zero, zero, zero, zero)


class Pipeline(ProcessGroupStrategy):
    """One pipeline stage per rank, stepped by a ``torch.distributed.pipelining`` schedule (module docs)."""

    name = "pipeline"
    layout = PIPELINE
    schedule_name = "gpipe"
    stage: PipelineStage | None = None
    schedule: Any = None

    @property
    def is_last(self) -> bool:
        """Whether this rank is the last stage (the one with the outputs and the loss)."""
        return self.rank == self.world_size - 1

    def cut(self, model: nn.Module) -> list[nn.Sequential]:
        """``model`` cut into one stage per rank; the other ranks' stages moved to ``meta`` (no memory here)."""
        parts = st.stage_modules(model, st.even_cuts(len(models.pipeline_layers(model)), self.world_size))
        for index, part in enumerate(parts):
            if index != self.rank:
                part.to("meta")
        return parts

    def wrap(self, model: nn.Module, optimizer: Any) -> tuple[nn.Module, Any]:
        """This rank's stage of ``model`` and an optimizer of its parameters only."""
        part = self.cut(model)[self.rank]
        self.stage = PipelineStage(part, self.rank, self.world_size, self.device)
        return part, rebuild_optimizer(optimizer, part.parameters())

    def train_step(self, model: nn.Module, optimizer: Any, micro_batches: list[Batch],
                   loss_fn: LossFn) -> StepTotals:
        """One ``schedule.step()`` over the step's batch (cut into ``config.micro_batches``), then the update."""
        if self.schedule is None:  # the loss function arrives with the first step
            self.schedule = SCHEDULES[self.schedule_name](self.stage, self.config.micro_batches, loss_fn=loss_fn)
        (inputs, targets), = micro_batches  # config: accumulation = 1
        args = (inputs,) if self.rank == 0 else ()
        losses: list[torch.Tensor] = []
        extra = {"target": targets, "losses": losses} if self.is_last else {}
        outputs = self.schedule.step(*args, **extra)
        optimizer.step()
        optimizer.zero_grad()
        if not self.is_last:
            return zero_totals(self.device)
        return totals_of(outputs, targets, torch.stack(losses).mean())  # equal micro-batches: mean of means

    @torch.no_grad()
    def eval_step(self, model: nn.Module, batch: Batch, loss_fn: LossFn) -> StepTotals:
        """The stages' forwards in turn, activations sent with their shapes; totals from the last stage."""
        inputs, targets = batch
        x = inputs if self.rank == 0 else st.recv_sized(self.rank - 1, self.device)
        outputs = model(x)
        if not self.is_last:
            st.send_sized(outputs, self.rank + 1)
            return zero_totals(self.device)
        return totals_of(outputs, targets, loss_fn(outputs, targets))

    def full_state_dict(self, model: nn.Module) -> dict[str, torch.Tensor]:
        """Every stage's state, gathered on every rank, under the full model's names."""
        gathered: list[dict | None] = [None] * self.world_size
        dist.all_gather_object(gathered, {k: v.detach().cpu() for k, v in model.state_dict().items()})
        return {name: tensor for state in gathered for name, tensor in (state or {}).items()}

    def release(self) -> None:
        """Release the schedule and stage: they hold the process group."""
        self.schedule = self.stage = None


class PipelineGPipe(Pipeline):
    """``ScheduleGPipe``: all forwards, then all backwards."""

    name = "pipeline_gpipe"
    schedule_name = "gpipe"


class Pipeline1F1B(Pipeline):
    """``Schedule1F1B``: one forward, one backward; at most ``stages - s`` activations held on stage s."""

    name = "pipeline_1f1b"
    schedule_name = "1f1b"


def full_batch_gradients(model: nn.Module, x: torch.Tensor, y: torch.Tensor) -> dict[str, torch.Tensor]:
    """The reference: gradients of the mean cross-entropy over the whole batch on the unsplit model."""
    model.zero_grad()
    nn.functional.cross_entropy(model(x), y).backward()
    gradients = {name: p.grad.clone() for name, p in model.named_parameters()}
    model.zero_grad()
    return gradients


def max_gradient_difference(stage: nn.Module, reference: dict[str, torch.Tensor]) -> float:
    """Largest |difference| between ``stage``'s gradients and the reference's, by parameter name."""
    return max(float((p.grad - reference[name]).abs().max()) for name, p in stage.named_parameters())


def _library_step(schedule_name: str, micro_batches: int, seed: int, batch: int, rank: int, world: int,
                  device: torch.device, loss_fn: LossFn) -> tuple[float, float]:
    """One library step from fresh weights: (max gradient difference, gradient norm ratio) on this stage."""
    model = models.seeded(models.mnist_cnn, seed).to(device)
    x, y = st.mnist_batch(batch, device)
    reference = full_batch_gradients(model, x, y)
    part = st.stage_modules(model, st.even_cuts(len(models.pipeline_layers(model)), world))[rank]
    schedule = SCHEDULES[schedule_name](PipelineStage(part, rank, world, device), micro_batches, loss_fn=loss_fn)
    args = (x,) if rank == 0 else ()
    schedule.step(*args, **({"target": y} if rank == world - 1 else {}))
    norm = torch.sqrt(sum((reference[n] ** 2).sum() for n, _ in part.named_parameters()))
    own = torch.sqrt(sum((p.grad ** 2).sum() for p in part.parameters()))
    return max_gradient_difference(part, reference), float(norm / own)


def library_gradients(micro_batches: int = 4, batch: int = 32, seed: int = 0, backend: str = "gloo",
                      schedules: tuple[str, ...] = ("gpipe", "1f1b")) -> dict[str, Any]:
    """Entry point (one rank per stage): one step of each library schedule against the full batch.

    Returns, the same on every rank: per schedule the largest gradient difference from the unsplit model on
    the whole batch (all stages), and ``pitfall_ratio``: full-batch gradient norm / the norm obtained when the
    loss function divides by the micro-batch count again (about ``micro_batches``: the schedule already did).
    """
    rank, world, device = join_process_group(backend)
    try:
        found = {}
        for name in schedules:
            found[name] = _library_step(name, micro_batches, seed, batch, rank, world, device,
                                        nn.functional.cross_entropy)[0]
        _, ratio = _library_step("gpipe", micro_batches, seed, batch, rank, world, device,
                                 lambda out, y: nn.functional.cross_entropy(out, y) / micro_batches)
        facts: list[Any] = [None] * world
        dist.all_gather_object(facts, (found, ratio))
        return {"micro_batches": micro_batches, "stages": world,
                "gradient_difference": {n: max(f[0][n] for f in facts) for n in schedules},
                "pitfall_ratio": min(f[1] for f in facts)}
    finally:
        leave_process_group()
