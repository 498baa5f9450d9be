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

Launch recipe (2 ranks; on a machine with 2 GPUs ``backend=nccl``)::

    dtutor.launch.run("dtutor.pytorch.model_parallel.gpipe:gpipe_by_hand", 2, micro_batches=4)  # both schedules
    torchrun --standalone --nproc-per-node=2 -m dtutor.launch \\
        dtutor.pytorch.model_parallel.gpipe:gpipe_by_hand micro_batches=4
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

import torch
import torch.distributed as dist
from torch import nn

from dtutor import models
from dtutor.pytorch.model_parallel import stages as st
from dtutor.pytorch.model_parallel.timeline import Event, Recorder, gather

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
    """What one stage did in one step: the losses (last stage), peak activations held, its events."""

    losses: list[torch.Tensor] = field(default_factory=list)
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


def gpipe_by_hand(micro_batches: int = 4, schedules: Sequence[str] = ("gpipe", "1f1b"), batch: int = 32,
                  seed: int = 0, backend: str = "gloo", blocking_gpipe: bool = True) -> dict[str, Any]:
    """Entry point (one rank per stage): one step of each hand-written schedule on the course's CNN.

    GPipe communicates blocking unless ``blocking_gpipe`` is False; 1F1B always overlaps (module docs).

    Returns, the same on every rank, per schedule: the largest gradient difference from the full batch on
    the unsplit model (over all stages), each stage's peak activations held, and every stage's events of a
    second, timed step (the first one includes one-time warm-up).
    """
    rank, world, device = st.join(backend)
    try:
        found: dict[str, dict[str, Any]] = {"gradient_difference": {}, "peak_held": {}, "events": {}}
        for schedule in schedules:
            model = models.seeded(models.mnist_cnn, seed).to(device)
            stage = st.stage_modules(model, st.even_cuts(len(models.pipeline_layers(model)), world))
            x, y = st.mnist_batch(batch, device)
            reference = full_batch_gradients(model, x, y)
            options = {"stage": rank, "stages": world, "inputs": split_batch(x, micro_batches),
                       "shapes": st.boundary_shapes(stage, split_batch(x, micro_batches)[0]),
                       "targets": split_batch(y, micro_batches), "device": device,
                       "blocking": blocking_gpipe and schedule == "gpipe"}
            done = run_stage(stage[rank], actions_for(schedule, rank, world, micro_batches), **options)
            facts: list[Any] = [None] * world
            dist.all_gather_object(facts, (max_gradient_difference(stage[rank], reference), done.peak_held))
            found["gradient_difference"][schedule] = max(f[0] for f in facts)
            found["peak_held"][schedule] = [f[1] for f in facts]
            stage[rank].zero_grad()  # time a second step: the first includes one-time warm-up
            timed = run_stage(stage[rank], actions_for(schedule, rank, world, micro_batches), **options)
            found["events"][schedule] = gather(timed.events)
        return {"stages": world, "micro_batches": micro_batches, **found}
    finally:
        st.leave()
