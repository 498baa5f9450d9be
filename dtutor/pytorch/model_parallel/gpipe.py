"""Pipelining by hand: GPipe and 1F1B written out with ``dist.send``/``dist.recv``, so the schedule is visible.

A schedule is a list of actions per stage, ``("F", i)`` (forward micro-batch i) or ``("B", i)`` (its
backward); ``run_stage`` carries them out on one stage. For p stages and m micro-batches:

- GPipe: every forward, then every backward. Each stage holds all m micro-batches' activations at once.
- 1F1B: stage s runs ``p - s - 1`` forwards, then alternates one forward and one backward, then finishes
  the backwards. The same bubble as GPipe, but stage s holds at most ``p - s`` activations (needs m >= p).

Forward: stage s receives its input from s - 1 (stage 0 reads the batch), runs its layers, sends the output
to s + 1; the last stage computes the loss (divided by m: the gradient of the mean over the whole batch).
Backward: stage s receives the gradient of its output from s + 1, back-propagates, and sends the gradient
of its input to s - 1. Two ways to communicate (``blocking``):

- blocking ``dist.send``/``dist.recv``, one transfer at a time: the schedule at its plainest. Each transfer
  waits for the other side (gloo hands the data over when the receiver asks for it), so every hop's latency
  lands on the step's critical path.
- overlapped: every receive of the step is posted up front with ``dist.irecv`` (one buffer per micro-batch,
  as ``torch.distributed.pipelining`` allocates them) and every send starts with ``dist.isend``, waited for
  at the end of the step. A message then arrives while its receiver is still computing, the way pipeline
  engines hide communication behind compute. 1F1B needs it: with blocking sends at p = 2, stage 0 would wait
  to send activation 1 while stage 1 waits to send gradient 0, a deadlock.

The strategies ``pipeline_by_hand`` (GPipe, blocking sends unless ``blocking`` is False) and
``pipeline_by_hand_1f1b`` (overlapped) train with ``run_stage`` through the driver, like the library's
``pipeline_gpipe``/``pipeline_1f1b`` (``pipeline.Pipeline``, whose stage cut, evaluation and state they share).
Each keeps what every step did on its stage (``steps``: events and activations held): the timeline and the
bubble come from training itself (``bubble.record``).

Launch recipes (2 ranks; on a machine with 2 GPUs ``backend=nccl``)::

    dtutor.launch.train(2, strategy="pipeline_by_hand", micro_batches=4, global_batch=64)
    torchrun --standalone --nproc-per-node=2 -m dtutor.launch dtutor.pytorch.driver:train \\
        strategy=pipeline_by_hand_1f1b micro_batches=4
    dtutor.pytorch.model_parallel.bubble.record(2, {"strategy": "pipeline_by_hand", "micro_batches": 4})  # + timelines
"""

from __future__ import annotations

import copy
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

import torch
import torch.distributed as dist
from torch import nn

from dtutor.layout import PIPELINE
from dtutor.pytorch.model_parallel import stages as st
from dtutor.pytorch.model_parallel.pipeline import Pipeline, zero_totals
from dtutor.pytorch.model_parallel.timeline import Event, Recorder
from dtutor.pytorch.process_group import rebuild_optimizer
from dtutor.pytorch.strategy import Batch, LossFn, StepTotals, totals_of

Action = tuple[str, int]
CPU = torch.device("cpu")


def gpipe_actions(micro_batches: int) -> list[Action]:
    """GPipe on any stage: all forwards, then all backwards."""
    return [("F", i) for i in range(micro_batches)] + [("B", i) for i in range(micro_batches)]


def one_f_one_b_actions(stage: int, stages: int, micro_batches: int) -> list[Action]:
    """1F1B on ``stage``: ``stages - stage - 1`` warm-up forwards, forward/backward pairs, remaining backwards."""
    if micro_batches < stages:
        raise ValueError(f"micro_batches: 1F1B needs micro_batches >= {stages} stages, got {micro_batches}")
    warmup = stages - stage - 1
    actions: list[Action] = [("F", i) for i in range(warmup)]
    for i in range(micro_batches - warmup):
        actions += [("F", warmup + i), ("B", i)]
    return actions + [("B", i) for i in range(micro_batches - warmup, micro_batches)]


def actions_for(schedule: str, stage: int, stages: int, micro_batches: int) -> list[Action]:
    """The actions of ``schedule`` ("gpipe" or "1f1b") on ``stage``."""
    if schedule == "gpipe":
        return gpipe_actions(micro_batches)
    if schedule == "1f1b":
        return one_f_one_b_actions(stage, stages, micro_batches)
    raise ValueError(f"schedule: must be 'gpipe' or '1f1b', got {schedule!r}")


@dataclass
class StageStep:
    """What one stage did in one step: the losses and outputs (last stage), peak activations held, its events."""

    losses: list[torch.Tensor] = field(default_factory=list)
    outputs: list[torch.Tensor] = field(default_factory=list)
    peak_held: int = 0
    events: list[Event] = field(default_factory=list)


class Inbox:
    """The tensors one stage receives from one neighbour, micro-batch by micro-batch.

    Blocking: ``take(i)`` receives then and there. Overlapped: the constructor posts an ``irecv`` for every
    micro-batch at once (messages from one sender arrive in order), and ``take(i)`` waits for the i-th.
    """

    def __init__(self, source: int, shape: torch.Size, micro_batches: int, device: torch.device, blocking: bool):
        self.source, self.shape, self.device, self.blocking = source, shape, device, blocking
        self.posted: list[tuple[torch.Tensor, dist.Work]] = []
        for _ in range(0 if blocking else micro_batches):
            buffer = torch.empty(tuple(shape), device=device)
            self.posted.append((buffer, dist.irecv(buffer, source)))

    def take(self, i: int) -> torch.Tensor:
        """Micro-batch ``i``'s tensor (they are taken in order)."""
        if self.blocking:
            return st.recv(self.shape, self.source, self.device)
        buffer, request = self.posted[i]
        request.wait()
        return buffer


def run_stage(module: nn.Module, actions: Sequence[Action], *, stage: int, stages: int,
              shapes: Sequence[torch.Size], inputs: Sequence[torch.Tensor] | None = None,
              targets: Sequence[torch.Tensor] | None = None,
              loss_fn: Callable[[torch.Tensor, torch.Tensor], torch.Tensor] = nn.functional.cross_entropy,
              device: torch.device = CPU, blocking: bool = True,
              input_grad: bool = False, recorder: Recorder | None = None) -> StageStep:
    """Carry out ``actions`` on ``stage``: gradients accumulate in ``module``'s parameters (see module docs).

    ``shapes[s]`` is what stage s outputs for one micro-batch; ``inputs`` (stage 0) and ``targets`` (last
    stage) are the micro-batches. ``blocking`` picks blocking or overlapped communication (module docs).
    ``input_grad`` makes stage 0 compute its input's gradient too, so its backward costs what the other
    stages' do (they must, to send it back).
    """
    first, last = stage == 0, stage == stages - 1
    micro_batches = sum(kind == "F" for kind, _ in actions)
    recorder = recorder or Recorder(stage)
    activations = None if first else Inbox(stage - 1, shapes[stage - 1], micro_batches, device, blocking)
    gradients = None if last else Inbox(stage + 1, shapes[stage], micro_batches, device, blocking)
    held: dict[int, tuple[torch.Tensor, torch.Tensor]] = {}
    step, pending = StageStep(), []
    for kind, i in actions:
        if kind == "F":
            x = inputs[i] if activations is None else activations.take(i)
            x = x.detach().requires_grad_(not first or input_grad)
            with recorder.record("forward", i):
                y = module(x)
                if last:
                    loss = loss_fn(y, targets[i])
                    step.losses.append(loss.detach())
                    step.outputs.append(y.detach())
                    y = loss / micro_batches
            if not last:
                pending.append(st.send(y, stage + 1, blocking))
            held[i] = (x, y)
            step.peak_held = max(step.peak_held, len(held))
        else:
            x, y = held.pop(i)
            gradient = None if gradients is None else gradients.take(i)
            with recorder.record("backward", i):
                y.backward(gradient)
            if not first:
                pending.append(st.send(x.grad, stage - 1, blocking))
    for request in pending:
        if request is not None:
            request.wait()
    step.events = list(recorder.events)
    return step


def split_batch(tensor: torch.Tensor, micro_batches: int) -> list[torch.Tensor]:
    """``tensor`` cut into ``micro_batches`` equal pieces along the batch dimension."""
    if len(tensor) % micro_batches:
        raise ValueError(f"micro_batches: {micro_batches} must divide the batch of {len(tensor)}")
    return list(torch.chunk(tensor, micro_batches))


class PipelineByHand(Pipeline):
    """One stage per rank, stepped by ``run_stage``: GPipe by hand (module docs), every step's work kept.

    ``blocking``: GPipe's sends (1F1B always overlaps: blocking, it would deadlock). ``input_grad``: stage 0
    also computes its input's gradient, so its backward costs what the other stages' do (``bubble``).
    """

    name = "pipeline_by_hand"
    layout = PIPELINE  # one stage per rank, every stage reads the same batches
    schedule_name = "gpipe"
    blocking = True
    input_grad = False

    def __init__(self, config):
        super().__init__(config)
        self.steps: list[StageStep] = []  # this stage's events and activations held, step by step
        self.shapes: dict[torch.Size, list[torch.Size]] = {}  # per micro-batch input shape: every stage's output

    def wrap(self, model: nn.Module, optimizer: Any) -> tuple[nn.Module, Any]:
        """This rank's stage of ``model`` and an optimizer of its parameters (no library stage)."""
        self.parts = self.cut(model)
        return self.parts[self.rank], rebuild_optimizer(optimizer, self.parts[self.rank].parameters())

    def boundary_shapes(self, example: torch.Tensor) -> list[torch.Size]:
        """What each stage outputs for a micro-batch like ``example``: computed on the ``meta`` device."""
        if example.shape not in self.shapes:
            on_meta = [copy.deepcopy(part).to("meta") for part in self.parts]
            self.shapes[example.shape] = st.boundary_shapes(on_meta, example.to("meta"))
        return self.shapes[example.shape]

    def train_step(self, model: nn.Module, optimizer: Any, micro_batches: list[Batch],
                   loss_fn: LossFn) -> StepTotals:
        """``run_stage`` over the step's batch cut into ``config.micro_batches``, then the update."""
        (inputs, targets), = micro_batches  # config: accumulation = 1
        count = self.config.micro_batches
        pieces, labels = split_batch(inputs, count), split_batch(targets, count)
        done = run_stage(model, actions_for(self.schedule_name, self.rank, self.world_size, count),
                         stage=self.rank, stages=self.world_size, shapes=self.boundary_shapes(pieces[0]),
                         inputs=pieces, targets=labels, loss_fn=loss_fn, device=self.device,
                         blocking=self.blocking and self.schedule_name == "gpipe", input_grad=self.input_grad)
        self.steps.append(StageStep(peak_held=done.peak_held, events=done.events))
        optimizer.step()
        optimizer.zero_grad()
        if not self.is_last:
            return zero_totals(self.device)
        return totals_of(torch.cat(done.outputs), targets, torch.stack(done.losses).mean())


class PipelineByHand1F1B(PipelineByHand):
    """1F1B by hand (overlapped sends): at most ``stages - s`` activations held on stage s."""

    name = "pipeline_by_hand_1f1b"
    schedule_name = "1f1b"
