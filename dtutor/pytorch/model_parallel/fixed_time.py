"""The pipeline schedules against theory, free of compute noise: stages whose work takes a fixed, known time.

A real stage's compute varies from micro-batch to micro-batch (8-15% on a shared 2-core machine), so a
measured bubble mixes the schedule with that noise (``bubble``). Here each stage is one ``FixedTimeStage``:
its forward sleeps ``forward_s`` and its backward ``backward_s`` (a calibrated sleep, ``sleep_for``), and it
records when it did (``timeline.Event``, one per forward and backward of each micro-batch). A sleep uses no
core, so p = 4 stages fit on 2 cores. Everything else is the course's own: the hand-written GPipe and 1F1B
(``gpipe.run_stage`` through ``pipeline_by_hand``/``pipeline_by_hand_1f1b``, sends overlapped) and the
library's ``pipeline_gpipe``/``pipeline_1f1b``, trained by the driver (``recorded_fixed_time``). Only the
work per micro-batch is replaced.

With equal stages of fixed durations, GPipe and 1F1B both take ``m + p - 1`` slots of ``forward_s +
backward_s`` per step, of which each stage works m: the bubble is exactly ``(p - 1) / (m + p - 1)``
(``ideal_timeline`` builds that step from the schedule's actions). What a measured step adds is
communication: each hop's latency on the critical path. ``bubble.bubble_row`` splits it off with
``timeline.replay`` (the same step with free communication), exactly as for real compute.

``nominal`` re-times recorded events with the nominal durations: its bubble is the schedule's alone, so a
recorded run's order can be proven equal to the theory's without any timing.

Launch recipe (p = 4 processes, each sleeping most of the time)::

    rows = fixed_time.measure_fixed_time(4, micro_batches=(4, 8))   # bubble.bubble_row rows
"""

from __future__ import annotations

import statistics
import time
from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

import torch
from torch import nn

from dtutor.pytorch.model_parallel.bubble import balanced_data, bubble_row, compute_variation, parse_variant, timelines
from dtutor.pytorch.model_parallel.gpipe import actions_for
from dtutor.pytorch.model_parallel.timeline import Event, mean_idle, replay
from dtutor.result import RunResult

if TYPE_CHECKING:
    import pandas as pd

ENTRY = "dtutor.pytorch.model_parallel.fixed_time:recorded_fixed_time"
FORWARD_S, BACKWARD_S = 0.03, 0.06  # a backward costs about two forwards (two matrix products per one)
VARIANTS = ("pipeline_by_hand/overlapped", "pipeline_by_hand_1f1b/overlapped", "pipeline_gpipe", "pipeline_1f1b")
WIDTH = 8  # features per sample: a message is micro-batch x 8 floats, latency only
SPIN_S = 2e-3  # the end of each sleep is waited out awake: time.sleep wakes 0.05-2 ms late (later under load)

_recorded: dict[str, Any] = {"events": [], "forwards": 0, "warm_up": False}  # this process's, in the order they ran


def sleep_for(seconds: float) -> None:
    """Sleep ``seconds``, calibrated: ``time.sleep`` until ``SPIN_S`` before the deadline, then wait it out awake
    (a late wake-up of the sleep is absorbed; only the scheduler's delay of the last wake-up remains)."""
    deadline = time.perf_counter() + seconds
    if seconds > SPIN_S:
        time.sleep(seconds - SPIN_S)
    while time.perf_counter() < deadline:
        pass


class FixedTimeStep(torch.autograd.Function):
    """``x * weight``, whose forward takes ``forward_s`` and backward ``backward_s``, each recorded as an Event.

    The k-th forward of a training step is micro-batch k (``recorded_fixed_time`` starts each step's count);
    its backward records the same number, so the backwards' order is what the schedule ran. Meta tensors
    (shape inference) run instantly and record nothing.
    """

    @staticmethod
    def forward(ctx: Any, x: torch.Tensor, weight: torch.Tensor, stage: int, forward_s: float,
                backward_s: float) -> torch.Tensor:
        """``x * weight`` after ``forward_s`` seconds of fixed work (none in a warm-up step), recorded."""
        ctx.save_for_backward(x, weight)
        ctx.stage, ctx.backward_s, ctx.micro_batch = stage, backward_s, _recorded["forwards"]
        if x.is_meta:
            return x * weight
        start = time.perf_counter()
        _recorded["forwards"] += 1
        sleep_for(0.0 if _recorded["warm_up"] else forward_s)
        _recorded["events"].append(Event(stage, "forward", ctx.micro_batch, start, time.perf_counter()))
        return x * weight

    @staticmethod
    def backward(ctx: Any, gradient: torch.Tensor) -> tuple[torch.Tensor | None, torch.Tensor, None, None, None]:
        """The gradients of ``x * weight`` after ``backward_s`` seconds of fixed work (none in a warm-up), recorded."""
        x, weight = ctx.saved_tensors
        if not gradient.is_meta:
            start = time.perf_counter()
            sleep_for(0.0 if _recorded["warm_up"] else ctx.backward_s)
            _recorded["events"].append(Event(ctx.stage, "backward", ctx.micro_batch, start, time.perf_counter()))
        input_gradient = gradient * weight if ctx.needs_input_grad[0] else None
        return input_gradient, (gradient * x).sum(), None, None, None


class FixedTimeStage(nn.Module):
    """One pipeline stage whose forward takes ``forward_s`` and backward ``backward_s`` (``FixedTimeStep``)."""

    def __init__(self, stage: int, forward_s: float = FORWARD_S, backward_s: float = BACKWARD_S):
        super().__init__()
        self.stage, self.forward_s, self.backward_s = stage, forward_s, backward_s
        self.weight = nn.Parameter(torch.ones(()))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """``x * weight``, taking ``forward_s`` (and ``backward_s`` for its backward)."""
        return FixedTimeStep.apply(x, self.weight, self.stage, self.forward_s, self.backward_s)


def fixed_time_model(stages: int, forward_s: float = FORWARD_S, backward_s: float = BACKWARD_S) -> nn.Sequential:
    """``stages`` fixed-time stages in a row: the pipelines' even cut gives each rank one."""
    return nn.Sequential(*(FixedTimeStage(stage, forward_s, backward_s) for stage in range(stages)))


def held_at_most(events: Sequence[Event]) -> int:
    """The most micro-batches whose forward ran and whose backward had not yet, at any point of ``events``."""
    held = most = 0
    for event in events:
        held += 1 if event.kind == "forward" else -1
        most = max(most, held)
    return most


def recorded_fixed_time(runs: Sequence[dict[str, Any]], forward_s: float = FORWARD_S, backward_s: float = BACKWARD_S,
                        backend: str = "gloo") -> list[RunResult]:
    """Entry point: ``fit`` each run (``TrainConfig`` fields, plus ``sends`` for a hand-written pipeline) in turn on
    ``fixed_time_model`` (one stage per rank) and random data of ``WIDTH`` features.

    Each result's ``details["stage_steps"]``: per step, this stage's events and the activations it held at most
    (as ``bubble.recorded_training`` returns them, for ``bubble.bubble_row``). The first step is a warm-up,
    kept empty: the library's schedules run each stage once more in it, with real tensors, to infer shapes.
    """
    import torch.distributed as dist

    from dtutor import strategies
    from dtutor.config import TrainConfig
    from dtutor.launch.training import fit_in_turn
    from dtutor.pytorch.driver import fit
    from dtutor.pytorch.model_parallel.gpipe import PipelineByHand

    def fit_recorded(run: dict[str, Any]) -> RunResult:
        fields = {"backend": backend, **run}
        sends = fields.pop("sends", "overlapped")
        config = TrainConfig.from_kwargs(**fields)
        strategy = strategies.load(config.strategy)(config)
        if isinstance(strategy, PipelineByHand):
            strategy.blocking = sends == "blocking"
        steps: list[list[Event]] = []
        step = strategy.train_step

        def recorded_step(*args: Any, **kwargs: Any) -> Any:
            _recorded.update(events=[], forwards=0, warm_up=not steps)
            totals = step(*args, **kwargs)
            steps.append(list(_recorded["events"]) if steps else [])  # the first: a warm-up, not kept
            return totals

        strategy.train_step = recorded_step
        stages = dist.get_world_size()
        result = fit(config, strategy=strategy, model=lambda: fixed_time_model(stages, forward_s, backward_s),
                     train_data=balanced_data(config.samples, WIDTH, config.seed))
        result.details["stage_steps"] = [(events, held_at_most(events)) for events in steps]
        return result

    return fit_in_turn(runs, fit_recorded, group_backend=backend)


def measure_fixed_time(stages: int, micro_batches: Sequence[int] = (1, 2, 4, 8), variants: Sequence[str] = VARIANTS,
                       forward_s: float = FORWARD_S, backward_s: float = BACKWARD_S, micro_batch_size: int = 4,
                       repeats: int = 2, timeout: float = 300.0,
                       return_parameters: bool = False) -> list[dict[str, Any]]:
    """Each variant (``bubble.VARIANTS``' names) at each micro-batch count on ``stages`` fixed-time stages, in one
    launch: ``repeats`` timed steps after a warm-up, one step per epoch; 1F1B only where m >= p.

    Rows as ``bubble.bubble_row``'s, plus ``forward_ms`` and ``backward_ms`` (the nominal durations); the bubble,
    its split into uneven and communication, the span and the time waited are medians over the timed steps
    (``events``: the fastest step, for ``timeline.plot_timeline``).
    """
    from dtutor import launch, strategies
    from dtutor.launch.training import prepare

    parsed = [parse_variant(variant) for variant in variants]
    cells = [(strategy, sends, m) for strategy, sends in parsed for m in micro_batches
             if strategies.STRATEGIES[strategy].schedule != "1f1b" or m >= stages]
    runs = []
    for strategy, sends, m in cells:
        fields = {"strategy": strategy, "micro_batches": m, "global_batch": m * micro_batch_size,
                  "samples": m * micro_batch_size, "epochs": repeats + 1, "test_samples": 0,
                  "return_parameters": return_parameters, "backend": "gloo"}
        runs.append({**prepare(stages, 1, fields).as_arguments(), "sends": sends})
    per_rank = launch.run(ENTRY, stages, threads_per_rank=1, timeout=timeout, quiet=True, runs=runs,
                          forward_s=forward_s, backward_s=backward_s)
    nominal_ms = {"forward_ms": 1e3 * forward_s, "backward_ms": 1e3 * backward_s}
    rows = []
    for index, (strategy, sends, m) in enumerate(cells):
        results = [results[index] for results in per_rank]
        row = bubble_row(strategy, sends, m, results)
        rows.append(row | _medians(timelines(results)[1:], row["theory"]) | nominal_ms)
    return rows


def _medians(steps: list[list[Event]], theory: float) -> dict[str, Any]:
    """A row's figures as medians over its timed steps: one step disturbed by other work moves none of them."""
    def span(events: list[Event]) -> float:
        return max(e.end for e in events) - min(e.start for e in events)

    replays = [replay(events) for events in steps]
    measured = statistics.median(mean_idle(events) for events in steps)
    replayed = statistics.median(mean_idle(events) for events in replays)
    return {"measured": measured, "replayed": replayed, "communication": measured - replayed,
            "gap": measured - theory, "relative_gap": measured / theory - 1, "uneven": replayed - theory,
            "span_ms": 1e3 * statistics.median(map(span, steps)),
            "communication_ms": 1e3 * statistics.median(span(a) - span(b) for a, b in zip(steps, replays, strict=True)),
            "compute_cv": max(map(compute_variation, steps))}


def nominal(events: Sequence[Event], forward_s: float, backward_s: float) -> list[Event]:
    """``events`` re-timed: each stage runs its events in their recorded order, each forward taking ``forward_s``
    and each backward ``backward_s``, a message arriving the moment it is produced (``timeline.replay``)."""
    durations = {"forward": forward_s, "backward": backward_s}
    ordered = sorted(events, key=lambda e: (e.stage, e.start))
    return replay([Event(e.stage, e.kind, e.micro_batch, float(k), k + durations[e.kind])
                   for k, e in enumerate(ordered)])


def ideal_timeline(schedule: str, stages: int, micro_batches: int, forward_s: float = 1.0,
                   backward_s: float = 2.0) -> list[Event]:
    """The step the theory describes: ``schedule``'s actions (``gpipe.actions_for``) on equal stages of fixed
    durations, free communication."""
    kinds = {"F": "forward", "B": "backward"}
    events = [Event(stage, kinds[kind], i, 0.0, 0.0) for stage in range(stages)
              for kind, i in actions_for(schedule, stage, stages, micro_batches)]
    return nominal(events, forward_s, backward_s)


def _cells(row: dict[str, Any], target: float | None) -> dict[str, Any]:
    """One row of ``table_fixed_time``: times, the measured idle, its communication and the schedule's idle."""
    slots = row["micro_batches"] + row["stages"] - 1
    schedule_error = row["replayed"] / row["theory"] - 1
    cells = {"strategy": row["strategy"], "p": row["stages"], "m": row["micro_batches"],
             "ideal step ms": round(slots * (row["forward_ms"] + row["backward_ms"])),
             "step ms": round(row["span_ms"]), "measured %": round(100 * row["measured"], 2),
             "comm. points": round(100 * row["communication"], 2), "schedule %": round(100 * row["replayed"], 2),
             "theory %": round(100 * row["theory"], 2), "schedule vs theory %": round(100 * schedule_error, 2)}
    if target is not None:
        cells["target"] = f"within {target:.0%}: {'met' if abs(schedule_error) <= target else 'missed'}"
    return cells


def table_fixed_time(rows: list[dict[str, Any]], target: float | None = None) -> pd.DataFrame:
    """The fixed-time bubble table: per schedule, p and m, the measured idle fraction split into communication
    and the schedule's own idle (the fastest step replayed with its durations and order, free communication),
    against ``(p - 1) / (m + p - 1)``. ``target`` (the benchmark's, never a learner's): a column judging the
    schedule's idle within that relative distance of the theory."""
    from dtutor.tables import titled

    first = rows[0]
    waited = [r["communication_ms"] for r in rows]
    notes = [f"every stage: forward {first['forward_ms']:g} ms, backward {first['backward_ms']:g} ms per micro-batch "
             f"(calibrated sleeps; their spread at most {max(r['compute_cv'] for r in rows):.2%})",
             "measured = comm. + schedule. comm.: what the step waited between the pieces of work (a message's "
             f"latency, each send's, receive's and autograd call's overhead): {min(waited):.1f} to "
             f"{max(waited):.1f} ms per step here;",
             "schedule: the same step replayed without those waits (its own durations and order, timeline.replay);",
             "each figure: the median over the timed steps"]
    return titled([_cells(row, target) for row in rows], notes=notes)
