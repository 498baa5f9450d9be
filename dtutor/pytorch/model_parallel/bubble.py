"""The pipeline bubble measured against theory, 1F1B against GPipe, and the memory and speed of each split.

``bubble_entry`` runs the hand-written schedules (``gpipe.run_stage``) on p stages that are genuinely
equal: every stage is the same ``layers_per_stage`` x (Linear(width, width) + ReLU), the last stage's loss
is a cheap mean of squares, and stage 0's input is given ``requires_grad`` so its backward also computes an
input gradient, as every other stage must (to send it back). Without that, stage 0's backward skips one of
its two matrix products per layer, is cheaper, and the measured bubble of stage 0 is larger than theory.

Per step, each stage's idle fraction is 1 - (its compute time) / (the step's span over all stages); the
table gives the mean over stages of the fastest of ``repeats`` steps (after a warm-up step: the step least
disturbed by other work on a shared machine; ``median`` is the median over the steps), beside GPipe's
``(p - 1) / (m + p - 1)``. The theory counts no communication, but here the sends are blocking
(``dist.send``) and each micro-batch crosses a stage boundary twice (activation forward, gradient
backward); on gloo a hop costs about a millisecond or two (``hop_ms``, measured by ping-pong), so the step
is longer than ``(m + p - 1)`` x (forward + backward) by up to ``2 m`` hops: an idle time that grows with m
while the theory's bubble shrinks. The default stages are heavy (4 layers of 1024 x 1024 on 64 samples,
about 0.1 s of forward + backward per micro-batch on one CPU core) to keep that small at m <= 4. ``excess_ms`` in each
row is that difference, measured. On 2 cores, p = 4 oversubscribes the CPU (4 processes, 2 cores): its
numbers show the schedule's shape, not the bubble; measure p = 4 on GPUs.

Launch recipes::

    dtutor.pytorch.model_parallel.bubble.measure_bubble(2)          # from Python: rows of the table
    python -m dtutor.bench pipeline --json bubble.json              # the table and the memory/speed table
    torchrun --standalone --nproc-per-node=2 -m dtutor.launch dtutor.pytorch.model_parallel.bubble:bubble_entry
"""

from __future__ import annotations

import statistics
import time
from collections.abc import Sequence
from typing import Any

import torch
import torch.distributed as dist
from torch import nn

from dtutor.pytorch.model_parallel import stages as st
from dtutor.pytorch.model_parallel.gpipe import actions_for, run_stage
from dtutor.pytorch.model_parallel.timeline import Event, gather, idle_fractions, theory_bubble

GAP_TARGET = 0.10  # measured within 10% (relative) of theory for m <= 4
BUBBLE_ENTRY = "dtutor.pytorch.model_parallel.bubble:bubble_entry"


def balanced_stage(width: int, layers: int) -> nn.Sequential:
    """One of p equal stages: ``layers`` x (Linear(width, width), ReLU)."""
    return nn.Sequential(*(module for _ in range(layers) for module in (nn.Linear(width, width), nn.ReLU())))


def hop_ms(shape: Sequence[int], rank: int, device: torch.device, repeats: int = 20) -> float:
    """One-way time of a tensor of ``shape`` between ranks 0 and 1: half the median ping-pong (ms)."""
    tensor, times = torch.zeros(tuple(shape), device=device), []
    for _ in range(repeats):
        dist.barrier()
        start = time.perf_counter()
        if rank == 0:
            st.send(tensor, 1)
            st.recv(shape, 1, device)
        elif rank == 1:
            st.recv(shape, 0, device)
            st.send(tensor, 0)
        times.append(time.perf_counter() - start)
    return 1e3 * statistics.median(times) / 2


def _one_step(module: nn.Module, schedule: str, micro_batches: int, rank: int, world: int,
              x: torch.Tensor, device: torch.device) -> tuple[list[Event], int]:
    """One step of ``schedule`` on the balanced stages; every rank's events and this stage's peak held."""
    module.zero_grad()
    dist.barrier()
    done = run_stage(module, actions_for(schedule, rank, world, micro_batches), stage=rank, stages=world,
                     shapes=[x.shape] * world, inputs=[x] * micro_batches, targets=[x] * micro_batches,
                     loss_fn=lambda out, _: out.square().mean(), device=device,
                     blocking=schedule == "gpipe", input_grad=True)
    return gather(done.events), done.peak_held


def _row(schedule: str, micro_batches: int, world: int, steps: list[list[Event]], peaks: list[int],
         hop: float) -> dict[str, Any]:
    """One table row from the timed steps: the fastest step's figures (the least disturbed by other work)."""
    spans = [max(e.end for e in events) - min(e.start for e in events) for events in steps]
    idle = [idle_fractions(events) for events in steps]
    best = spans.index(min(spans))
    compute_ms = 1e3 * sum(e.seconds for e in steps[best]) / (world * micro_batches)
    measured, theory = sum(idle[best].values()) / world, theory_bubble(world, micro_batches)
    return {"schedule": schedule, "stages": world, "micro_batches": micro_batches, "measured": measured,
            "median": statistics.median(sum(f.values()) / world for f in idle), "theory": theory,
            "gap": measured - theory, "relative_gap": measured / theory - 1,
            "per_stage": [idle[best][s] for s in range(world)], "span_ms": 1e3 * spans[best],
            "compute_ms": compute_ms, "excess_ms": 1e3 * spans[best] - (micro_batches + world - 1) * compute_ms,
            "hop_ms": hop, "peak_held": peaks, "events": steps[best]}


def bubble_entry(micro_batches: Sequence[int] = (1, 2, 4, 8), schedules: Sequence[str] = ("gpipe", "1f1b"),
                 width: int = 1024, layers_per_stage: int = 4, micro_batch_size: int = 64, repeats: int = 5,
                 seed: int = 0, backend: str = "gloo") -> list[dict[str, Any]]:
    """Entry point (one rank per stage): the bubble table's rows, the same on every rank (module docs).

    1F1B rows are measured only where m >= p (the schedule needs one micro-batch per stage). ``compute_ms``
    is one micro-batch's forward + backward on one stage; ``peak_held`` the activations each stage held;
    ``events`` the last timed step's timeline (for ``timeline.plot_timeline``).
    """
    rank, world, device = st.join(backend)
    try:
        torch.manual_seed(seed)
        module = balanced_stage(width, layers_per_stage).to(device)
        x = torch.randn(micro_batch_size, width, device=device)
        hop = hop_ms(x.shape, rank, device) if world > 1 else 0.0
        rows = []
        for schedule in schedules:
            for m in micro_batches:
                if schedule == "1f1b" and m < world:
                    continue
                runs = [_one_step(module, schedule, m, rank, world, x, device) for _ in range(repeats + 1)]
                peaks: list[Any] = [None] * world
                dist.all_gather_object(peaks, runs[-1][1])
                rows.append(_row(schedule, m, world, [events for events, _ in runs[1:]], peaks, hop))
        return rows
    finally:
        st.leave()


def measure_bubble(nprocs: int = 2, timeout: float = 300.0, **options: Any) -> list[dict[str, Any]]:
    """Run ``bubble_entry`` on ``nprocs`` stages, one thread each (``options`` are its arguments)."""
    from dtutor import launch

    return launch.run(BUBBLE_ENTRY, nprocs, threads_per_rank=1, timeout=timeout, quiet=True, **options)[0]


def format_bubble(rows: list[dict[str, Any]]) -> str:
    """The bubble table: measured idle fraction, theory, gap, the excess over the ideal step, activations held.

    The verdict compares the relative gap with ``GAP_TARGET`` for GPipe rows with m <= 4 (the target);
    the last line explains the largest m's gap with the measured hop time.
    """
    head = (f"{'schedule':<9}{'p':>3}{'m':>4}{'measured':>10}{'theory':>8}{'gap':>8}{'rel. gap':>10}"
            f"{'excess ms':>11}{'peak activations':>18}  target")
    lines = [head]
    for row in rows:
        verdict = ""
        if row["schedule"] == "gpipe" and row["micro_batches"] <= 4:
            met = abs(row["relative_gap"]) <= GAP_TARGET
            verdict = f"within {GAP_TARGET:.0%}: {'met' if met else 'missed'}"
        held = "/".join(str(n) for n in row["peak_held"])
        lines.append(f"{row['schedule']:<9}{row['stages']:>3}{row['micro_batches']:>4}{row['measured']:>10.1%}"
                     f"{row['theory']:>8.1%}{row['gap']:>+8.1%}{row['relative_gap']:>+10.0%}"
                     f"{row['excess_ms']:>11.1f}{held:>18}  {verdict}")
    last = max((r for r in rows if r["schedule"] == "gpipe"), key=lambda r: r["micro_batches"], default=None)
    if last is not None:
        m, excess = last["micro_batches"], last["excess_ms"]
        sends = 2 * m * (last["stages"] - 1) * last["hop_ms"]
        lines.append(f"at m = {m}: the step is {excess:.1f} ms longer than (m + p - 1) x {last['compute_ms']:.1f} ms "
                     f"of compute; {2 * m * (last['stages'] - 1)} boundary crossings x {last['hop_ms']:.2f} ms per "
                     f"hop = {sends:.1f} ms of it is send/recv latency, the theory counts none; the other "
                     f"{excess - sends:.1f} ms is stages waiting on uneven compute")
    return "\n".join(lines)


def plot_bubble(rows: list[dict[str, Any]]):
    """Idle fraction against micro-batches: GPipe's theory and each schedule's measurement."""
    import matplotlib.pyplot as plt

    figure, axes = plt.subplots(figsize=(5, 3.2))
    gpipe = [r for r in rows if r["schedule"] == "gpipe"]
    axes.plot([r["micro_batches"] for r in gpipe], [r["theory"] for r in gpipe], "k--", marker="o",
              label="theory (p-1)/(m+p-1)")
    for schedule in dict.fromkeys(r["schedule"] for r in rows):
        mine = [r for r in rows if r["schedule"] == schedule]
        axes.plot([r["micro_batches"] for r in mine], [r["measured"] for r in mine], marker="s",
                  label=f"{schedule}, measured")
    axes.set_xscale("log", base=2)
    axes.set_xlabel("micro-batches m")
    axes.set_ylabel("idle fraction")
    worst = max(gpipe, key=lambda r: r["micro_batches"]) if gpipe else None
    title = f"p = {rows[0]['stages']} stages: the bubble"
    if worst is not None:
        title += f"; at m = {worst['micro_batches']} {worst['measured']:.0%} measured vs {worst['theory']:.0%}"
    axes.set_title(title, fontsize=10)
    axes.legend(fontsize=8)
    figure.tight_layout()
    return figure
