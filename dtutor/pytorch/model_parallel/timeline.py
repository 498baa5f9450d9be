"""Who computes when: per-stage timestamps, gathered from every rank, drawn as a stage-by-time chart.

Each stage records its forward and backward of every micro-batch with ``time.perf_counter()`` (Linux's
monotonic clock: comparable across processes on one host, and it costs next to nothing, where
``torch.profiler`` adds about 8%). ``gather`` collects every rank's events with ``all_gather_object``.
A stage is idle whenever it is not computing: waiting for a neighbour's activation or gradient, or for
the other stages to finish. GPipe's theory for ``p`` equal stages and ``m`` micro-batches:

    idle fraction (the bubble) = (p - 1) / (m + p - 1)
"""

from __future__ import annotations

import contextlib
import time
from collections.abc import Iterator, Sequence
from dataclasses import dataclass

COLORS = {"forward": "tab:blue", "backward": "tab:orange"}


@dataclass(frozen=True)
class Event:
    """One piece of work of one stage: ``kind`` is "forward" or "backward", times from ``perf_counter``."""

    stage: int
    kind: str
    micro_batch: int
    start: float
    end: float

    @property
    def seconds(self) -> float:
        """How long the work took."""
        return self.end - self.start


class Recorder:
    """Collects one stage's events: ``with recorder.record("forward", i): ...``."""

    def __init__(self, stage: int):
        self.stage = stage
        self.events: list[Event] = []

    @contextlib.contextmanager
    def record(self, kind: str, micro_batch: int) -> Iterator[None]:
        """Time the block as ``kind`` of ``micro_batch`` on this stage."""
        start = time.perf_counter()
        yield
        self.events.append(Event(self.stage, kind, micro_batch, start, time.perf_counter()))

    def clear(self) -> None:
        """Forget the events so far (e.g. a warm-up step's)."""
        self.events = []


def gather(events: Sequence[Event]) -> list[Event]:
    """Every rank's events, sorted by start time (collective: every rank of the group must call it)."""
    import torch.distributed as dist

    everyone: list[list[Event] | None] = [None] * dist.get_world_size()
    dist.all_gather_object(everyone, list(events))
    return sorted((e for rank_events in everyone for e in rank_events or []), key=lambda e: e.start)


def theory_bubble(stages: int, micro_batches: int) -> float:
    """GPipe's idle fraction ``(p - 1) / (m + p - 1)`` for equal stages and no communication cost."""
    return (stages - 1) / (micro_batches + stages - 1)


def idle_fractions(events: Sequence[Event]) -> dict[int, float]:
    """Per stage: the share of the step (first start to last end over all stages) it spent not computing."""
    start, end = min(e.start for e in events), max(e.end for e in events)
    busy: dict[int, float] = {}
    for event in events:
        busy[event.stage] = busy.get(event.stage, 0.0) + event.seconds
    return {stage: 1.0 - seconds / (end - start) for stage, seconds in sorted(busy.items())}


def mean_idle(events: Sequence[Event]) -> float:
    """The idle fraction averaged over the stages."""
    fractions = idle_fractions(events)
    return sum(fractions.values()) / len(fractions)


def replay(events: Sequence[Event]) -> list[Event]:
    """The same step again with free communication: every event keeps its measured duration and order.

    Each stage runs its events back to back in the order it ran them, except that a forward waits for the
    previous stage's forward of the same micro-batch and a backward for the next stage's backward of it;
    a message arrives the moment it is produced. What the replay idles comes from the compute alone (the
    stages' uneven durations); what the measured step idles beyond it is communication.
    """
    stages = sorted({e.stage for e in events})
    queues = {s: sorted((e for e in events if e.stage == s), key=lambda e: e.start) for s in stages}
    ends: dict[tuple[int, str, int], float] = {}
    clock = dict.fromkeys(stages, 0.0)
    replayed: list[Event] = []
    while any(queues.values()):
        progressed = False
        for stage, queue in queues.items():
            while queue:
                event = queue[0]
                needs = (stage - 1 if event.kind == "forward" else stage + 1, event.kind, event.micro_batch)
                if needs[0] in queues and needs not in ends:
                    break
                start = max(clock[stage], ends.get(needs, 0.0))
                clock[stage] = ends[(stage, event.kind, event.micro_batch)] = start + event.seconds
                replayed.append(Event(stage, event.kind, event.micro_batch, start, clock[stage]))
                queue.pop(0)
                progressed = True
        if not progressed:
            raise ValueError("events: the stages wait on each other in a cycle; not one step of a pipeline")
    return sorted(replayed, key=lambda e: e.start)


def describe(events: Sequence[Event]) -> str:
    """Per stage: compute per micro-batch (forward + backward), idle share measured, and idle share with free
    communication (``replay``: the stages' own compute times alone), then GPipe's theory for equal stages."""
    micro_batches = len({e.micro_batch for e in events})
    measured, replayed = idle_fractions(events), idle_fractions(replay(events))
    lines = [f"{'stage':<7}{'compute per micro-batch':>24}{'idle':>7}{'idle with free communication':>31}"]
    for stage, idle in measured.items():
        compute_ms = 1e3 * sum(e.seconds for e in events if e.stage == stage) / micro_batches
        lines.append(f"{stage:<7}{compute_ms:>21.2f} ms{idle:>7.0%}{replayed[stage]:>31.0%}")
    lines.append(f"GPipe's theory for {len(measured)} equal stages and {micro_batches} micro-batch(es): "
                 f"{theory_bubble(len(measured), micro_batches):.0%} idle")
    return "\n".join(lines)


LABEL_POINTS = 7  # font size of the micro-batch numbers on the bars


def plot_timeline(events: Sequence[Event], title: str | None = None):
    """Stage on the y-axis, milliseconds on the x-axis, a bar per forward (blue) and backward (orange).

    A bar carries its micro-batch's number where the number fits inside it. The default title states the
    stages, micro-batches, the measured mean idle fraction and GPipe's theory for equal stages.
    """
    import matplotlib.pyplot as plt
    from matplotlib.patches import Patch

    origin = min(e.start for e in events)
    span_ms = 1e3 * (max(e.end for e in events) - origin)
    stages = sorted({e.stage for e in events})
    micro_batches = len({e.micro_batch for e in events})
    figure, axes = plt.subplots(figsize=(9, 1.4 + 0.8 * len(stages)))
    axes.set_xlim(0, 1.02 * span_ms)
    axes.set_ylim(len(stages) - 0.5, -0.5)  # stage 0 on top
    pixels_per_ms = axes.transData.transform((1.0, 0))[0] - axes.transData.transform((0.0, 0))[0]
    for event in events:
        left, width = 1e3 * (event.start - origin), 1e3 * event.seconds
        axes.barh(event.stage, width, left=left, color=COLORS[event.kind], edgecolor="black", height=0.7)
        label = str(event.micro_batch)
        needed = (0.7 * len(label) + 0.6) * LABEL_POINTS * figure.dpi / 72  # the digits and a margin, in pixels
        if width * pixels_per_ms >= needed:
            axes.text(left + width / 2, event.stage, label, ha="center", va="center", fontsize=LABEL_POINTS)
    axes.set_yticks(stages, [f"stage {s}" for s in stages])
    axes.set_xlabel("time (ms)")
    axes.legend(handles=[Patch(color=c, label=k) for k, c in COLORS.items()], loc="upper left",
                bbox_to_anchor=(1.005, 1.0), fontsize=8)  # beside the bars, never over them
    theory = theory_bubble(len(stages), micro_batches)
    axes.set_title(title or f"{len(stages)} stages, {micro_batches} micro-batch(es): idle "
                            f"{mean_idle(events):.0%} of the step (GPipe theory for equal stages {theory:.0%})")
    figure.tight_layout()
    return figure
