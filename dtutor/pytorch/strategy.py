"""The PyTorch strategy interface: what a way of distributing training may change, and the defaults.

The driver (``dtutor.pytorch.driver``) owns everything that is the same for every strategy: validation,
seeding, data and sharding, epochs, timing, metrics, logging, evaluation, checkpoints and the result. A
strategy is a small class that overrides only what it changes:

==========================  ====================================  ==========================================
hook                        default (one device)                  e.g.
==========================  ====================================  ==========================================
``join``                    rank 0 of 1, GPU 0 if there is one    DDP: ``init_process_group``, its own GPU
``layout``                  data parallelism on every rank        a pipeline: ``PIPELINE``, one stage per rank
``wrap``                    model and optimizer unchanged         DDP: ``DistributedDataParallel(model)``
``no_sync``                 nothing                               DDP: skip the all-reduce while accumulating
``sync_gradients``          nothing                               data x tensor: average over the replicas
``train_step``              forward, backward, ``step``           DeepSpeed: ``engine.backward``/``step``
``eval_step``               forward without gradients             a pipeline: the schedule's forward
``reduce``                  nothing to reduce                     ``dist.all_reduce``, ``hvd.allreduce``
``full_state_dict``         ``state_dict()`` of the module        FSDP: gather every shard
``save/load_checkpoint``    rank 0 writes one file, all read it   DeepSpeed: ``engine.save_checkpoint``
``teardown``                nothing                               release the wrapper, destroy the group
==========================  ====================================  ==========================================
"""

from __future__ import annotations

import contextlib
import contextvars
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch import nn

from dtutor.config import TrainConfig
from dtutor.layout import DATA, Coordinates, Layout, Mesh
from dtutor.pytorch import checkpoint

LossFn = Callable[[torch.Tensor, torch.Tensor], torch.Tensor]
CountCorrect = Callable[[torch.Tensor, torch.Tensor], "torch.Tensor | float | None"]
Batch = tuple[torch.Tensor, torch.Tensor]


def class_correct(outputs: torch.Tensor, targets: torch.Tensor) -> torch.Tensor | None:
    """Correct predictions when ``outputs`` are class scores (2-D, several columns) for integer ``targets``;
    None for any other task (a regression's one output, float targets): it has no accuracy."""
    if outputs.ndim == 2 and outputs.shape[1] > 1 and targets.ndim == 1 and not targets.is_floating_point():
        return (outputs.argmax(1) == targets).sum()
    return None


COUNT_CORRECT: contextvars.ContextVar[CountCorrect] = contextvars.ContextVar("count_correct", default=class_correct)


@dataclass
class StepTotals:
    """What one optimizer step contributes to the metrics, as tensors on the device (no host sync)."""

    loss_sum: torch.Tensor  # sum over this rank's samples of the per-sample loss
    correct: torch.Tensor  # number of correct predictions among the ``judged`` samples
    judged: torch.Tensor  # samples whose predictions were judged (0 when the task has no accuracy)
    count: torch.Tensor  # number of samples

    def stacked(self) -> torch.Tensor:
        """The four as one float64 vector (one row of the epoch's table)."""
        return torch.stack([t.detach().to(torch.float64) for t in (self.loss_sum, self.correct, self.judged,
                                                                    self.count)])


@contextlib.contextmanager
def judged_by(count_correct: CountCorrect | None) -> Iterator[None]:
    """Inside, ``totals_of`` judges predictions with ``count_correct`` (None: ``class_correct``); ``fit`` uses
    it, so every strategy's step counts a learner's "correct" without passing the function along."""
    token = COUNT_CORRECT.set(count_correct or class_correct)
    try:
        yield
    finally:
        COUNT_CORRECT.reset(token)


def totals_of(outputs: torch.Tensor, targets: torch.Tensor, loss: torch.Tensor) -> StepTotals:
    """Metrics of one micro-batch whose mean loss is ``loss``, its predictions judged as ``judged_by`` says."""
    with torch.no_grad():
        count = torch.tensor(len(targets), device=targets.device)
        correct = COUNT_CORRECT.get()(outputs, targets)
        if correct is None:
            return StepTotals(loss.detach() * len(targets), torch.zeros_like(count), torch.zeros_like(count), count)
        return StepTotals(loss.detach() * len(targets), torch.as_tensor(correct, device=count.device), count, count)


def add(a: StepTotals | None, b: StepTotals) -> StepTotals:
    """The sum of two ``StepTotals`` (``a`` may be None: the first micro-batch)."""
    if a is None:
        return b
    return StepTotals(a.loss_sum + b.loss_sum, a.correct + b.correct, a.judged + b.judged, a.count + b.count)


class Strategy:
    """One device, no communication: the defaults every strategy starts from (see the module docstring)."""

    name = "single"
    layout: Layout = DATA  # what the ranks split (``dtutor.layout``); a subclass inherits its parent's

    def __init__(self, config: TrainConfig):
        self.config = config
        self.rank = 0
        self.world_size = 1
        self.device = torch.device("cpu")

    # -- joining -------------------------------------------------------------------------------------------
    def join(self) -> None:
        """Join the job: set ``rank``, ``world_size`` and ``device``."""
        if torch.cuda.is_available():
            self.device = torch.device("cuda", 0)
            torch.cuda.set_device(self.device)

    @property
    def mesh(self) -> Mesh:
        """The sizes of the layout's dimensions for this job's world size."""
        return self.layout.mesh(self.world_size)

    @property
    def coordinates(self) -> Coordinates:
        """This rank's pipeline stage, data replica and tensor shard."""
        return self.mesh.coordinates(self.rank)

    @property
    def data_ranks(self) -> int:
        """How many ranks split the data (the batch arithmetic divides the global batch by this).

        The layout's data dimension: every rank for data parallelism, one for a pipeline or tensor
        parallelism (their ranks all read the same batches), the replicas of a 2-D grid.
        """
        return self.mesh.data

    @property
    def data_rank(self) -> int:
        """Which shard of the data this rank reads: its data replica (0 when the ranks do not split the data)."""
        return self.coordinates.data

    @property
    def is_logger(self) -> bool:
        """The one rank that logs, shows progress and writes files."""
        return self.rank == 0

    # -- wrapping and stepping -----------------------------------------------------------------------------
    def wrap(self, model: nn.Module, optimizer: torch.optim.Optimizer) -> tuple[nn.Module, Any]:
        """The model and optimizer the steps use (defaults: unchanged)."""
        return model, optimizer

    def unwrap(self, model: nn.Module) -> nn.Module:
        """The plain module inside what ``wrap`` returned."""
        return getattr(model, "module", model)

    def no_sync(self, model: nn.Module) -> contextlib.AbstractContextManager:
        """Context for every micro-batch but the last of an accumulation group (default: nothing to skip)."""
        return contextlib.nullcontext()

    def train_step(self, model: nn.Module, optimizer: Any, micro_batches: Sequence[Batch],
                   loss_fn: LossFn) -> StepTotals:
        """One optimizer step over ``micro_batches`` (already on the device), gradients accumulated.

        Each micro-batch's mean loss is divided by their number, so the accumulated gradient is that of the
        mean over the whole group, as if it were one batch.
        """
        totals = None
        last = len(micro_batches) - 1
        for index, (inputs, targets) in enumerate(micro_batches):
            with self.no_sync(model) if index < last else contextlib.nullcontext():
                outputs = model(inputs)
                loss = loss_fn(outputs, targets)
                (loss / len(micro_batches)).backward()
            totals = add(totals, totals_of(outputs, targets, loss))
        self.sync_gradients(model)
        optimizer.step()
        optimizer.zero_grad()  # set_to_none by default; Horovod's optimizer takes no arguments
        return totals

    def sync_gradients(self, model: nn.Module) -> None:
        """Make the gradients the same on every rank that holds the same parameters (default: one rank)."""

    @torch.no_grad()
    def eval_step(self, model: nn.Module, batch: Batch, loss_fn: LossFn) -> StepTotals:
        """Metrics of ``model`` on one test batch (no gradients)."""
        inputs, targets = batch
        outputs = self.unwrap(model)(inputs)  # the plain module: no collective a rank could miss
        return totals_of(outputs, targets, loss_fn(outputs, targets))

    # -- communication -------------------------------------------------------------------------------------
    def reduce(self, tensor: torch.Tensor, op: str = "sum") -> torch.Tensor:
        """``tensor`` combined over all ranks with ``op`` ("sum" or "max"); one rank has nothing to combine."""
        return tensor

    def barrier(self) -> None:
        """Wait until every rank gets here."""

    # -- state ---------------------------------------------------------------------------------------------
    def full_state_dict(self, model: nn.Module) -> dict[str, torch.Tensor]:
        """The whole model's state, gathered if sharded, on every rank."""
        return self.unwrap(model).state_dict()

    def save_checkpoint(self, path: str, model: nn.Module, optimizer: Any, epoch: int) -> None:
        """Save what resuming needs after ``epoch`` (default: the logging rank writes one file)."""
        if self.is_logger:
            checkpoint.save(path, self.full_state_dict(model), optimizer.state_dict(), epoch)
        self.barrier()  # nobody reads the checkpoint before it is complete

    def load_checkpoint(self, path: str, model: nn.Module, optimizer: Any) -> int | None:
        """Restore from ``path`` if it exists; return the epoch it was saved after (None: nothing to resume)."""
        if not Path(path).exists():
            return None
        state = checkpoint.load(path)
        self.unwrap(model).load_state_dict(state["model"])
        optimizer.load_state_dict(state["optimizer"])
        return state["epoch"]

    def teardown(self) -> None:
        """Leave the job (default: nothing to leave)."""
