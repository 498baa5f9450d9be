"""The pipeline bubble measured against theory, and where the difference comes from.

``bubble_entry`` runs the hand-written schedules (``gpipe.run_stage``) on p stages that are genuinely
equal: every stage is the same ``layers_per_stage`` x (Linear(width, width) + ReLU), the last stage's loss
is a cheap mean of squares, and stage 0's input is given ``requires_grad`` so its backward also computes an
input gradient, as every other stage must (to send it back). Without that, the first layer of stage 0 would
skip its input gradient (the images need none; every later layer still computes one, for the layer before
it), so stage 0's backward would be cheaper and its measured idle time larger than theory.

Per step, each stage's idle fraction is 1 - (its compute time) / (the step's span over all stages); a row
gives the mean over stages of the fastest of ``repeats`` steps (after a warm-up step): the step least
disturbed by other work on a shared machine (``median`` is the median over the steps). GPipe's
``(p - 1) / (m + p - 1)`` assumes equal, constant stage times and free communication, so a row splits its
gap from the theory in two, with ``timeline.replay`` (the same step, its own compute times, free
communication):

- ``uneven``: the replay's idle fraction minus the theory. Compute times vary from micro-batch to
  micro-batch (``compute_cv``: about 10-15% within a step on a shared 2-core virtual machine), and every
  hand-over waits for the slower of two stages; the more micro-batches, the more such waits.
- ``communication``: the measured idle fraction minus the replay's: transfers the step waited for. With
  blocking sends every one of the ``2 m (p - 1)`` boundary crossings is on the critical path (``hop_ms``,
  the one-way time of one activation, measured by ping-pong); overlapped sends hide most of them.

The benchmark (``python -m dtutor.bench pipeline``) also compares overlapped GPipe at p = 2 and m <= 4 with
its target, ``GAP_TARGET`` (``table_bubble(rows, verdict=True)``); a learner's table shows the measurement
and where it comes from, without a verdict. On 2 cores, p = 4 oversubscribes the CPU (4 processes, 2
cores): its numbers show the schedule's shape, not the bubble; measure p = 4 on GPUs.

Launch recipes::

    dtutor.pytorch.model_parallel.bubble.measure_bubble(2)          # from Python: rows of the table
    python -m dtutor.bench pipeline --json bubble.json              # the table and the memory/speed table
    torchrun --standalone --nproc-per-node=2 -m dtutor.launch dtutor.pytorch.model_parallel.bubble:bubble_entry
"""

from __future__ import annotations

import statistics
import time
from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

import torch
import torch.distributed as dist
from torch import nn

from dtutor.pytorch.model_parallel import stages as st
from dtutor.pytorch.model_parallel.gpipe import actions_for, run_stage
from dtutor.pytorch.model_parallel.timeline import Event, gather, idle_fractions, mean_idle, replay, theory_bubble

if TYPE_CHECKING:
    import pandas as pd

GAP_TARGET = 0.10  # overlapped GPipe measured within 10% (relative) of theory for m <= 4
BUBBLE_ENTRY = "dtutor.pytorch.model_parallel.bubble:bubble_entry"
VARIANTS = ("gpipe/blocking", "gpipe/overlapped", "1f1b/overlapped")  # schedule/sends


def parse_variant(variant: str) -> tuple[str, bool]:
    """``"schedule/sends"`` as (schedule, blocking); 1F1B with blocking sends would deadlock, so it is refused."""
    schedule, _, sends = variant.partition("/")
    if schedule not in ("gpipe", "1f1b") or sends not in ("blocking", "overlapped"):
        raise ValueError(f"variants: each is 'gpipe' or '1f1b', '/', then 'blocking' or 'overlapped'; got {variant!r}")
    if variant == "1f1b/blocking":
        raise ValueError("variants: 1f1b/blocking deadlocks (stage 0 sends activation 1 while stage 1 sends "
                         "gradient 0); use 1f1b/overlapped")
    return schedule, sends == "blocking"


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


def compute_variation(events: Sequence[Event]) -> float:
    """How much one micro-batch's compute time varies: the spread of forwards and backwards, each relative to
    its kind's mean, as a coefficient of variation (0.1: a typical micro-batch is 10% off)."""
    relative = []
    for kind in ("forward", "backward"):
        seconds = [e.seconds for e in events if e.kind == kind]
        relative += [s / statistics.fmean(seconds) for s in seconds]
    return statistics.pstdev(relative)


def _one_step(module: nn.Module, schedule: str, blocking: bool, micro_batches: int, rank: int, world: int,
              x: torch.Tensor, device: torch.device) -> tuple[list[Event], int]:
    """One step of ``schedule`` on the balanced stages; every rank's events and this stage's peak held."""
    module.zero_grad()
    dist.barrier()
    done = run_stage(module, actions_for(schedule, rank, world, micro_batches), stage=rank, stages=world,
                     shapes=[x.shape] * world, inputs=[x] * micro_batches, targets=[x] * micro_batches,
                     loss_fn=lambda out, _: out.square().mean(), device=device, blocking=blocking, input_grad=True)
    return gather(done.events), done.peak_held


def _row(schedule: str, sends: str, micro_batches: int, world: int, steps: list[list[Event]], peaks: list[int],
         hop: float) -> dict[str, Any]:
    """One table row from the timed steps: the fastest step's figures (the least disturbed by other work)."""
    spans = [max(e.end for e in events) - min(e.start for e in events) for events in steps]
    best = steps[spans.index(min(spans))]
    replayed = replay(best)
    replay_span = max(e.end for e in replayed) - min(e.start for e in replayed)
    compute_ms = 1e3 * sum(e.seconds for e in best) / (world * micro_batches)
    measured, theory, idle_replayed = mean_idle(best), theory_bubble(world, micro_batches), mean_idle(replayed)
    return {"schedule": schedule, "sends": sends, "stages": world, "micro_batches": micro_batches,
            "measured": measured, "median": statistics.median(mean_idle(events) for events in steps),
            "theory": theory, "gap": measured - theory, "relative_gap": measured / theory - 1,
            "replayed": idle_replayed, "uneven": idle_replayed - theory, "communication": measured - idle_replayed,
            "per_stage": list(idle_fractions(best).values()), "span_ms": 1e3 * min(spans),
            "compute_ms": compute_ms, "communication_ms": 1e3 * (min(spans) - replay_span),
            "compute_cv": compute_variation(best), "hop_ms": hop, "peak_held": peaks, "events": best}


def bubble_entry(micro_batches: Sequence[int] = (1, 2, 4, 8), variants: Sequence[str] = VARIANTS,
                 width: int = 1024, layers_per_stage: int = 4, micro_batch_size: int = 64, repeats: int = 10,
                 seed: int = 0, backend: str = "gloo") -> list[dict[str, Any]]:
    """Entry point (one rank per stage): the bubble table's rows, the same on every rank (module docs).

    ``variants`` are "schedule/sends" (``VARIANTS``); 1F1B rows only where m >= p (the schedule needs one
    micro-batch per stage). ``compute_ms`` is one micro-batch's forward + backward on one stage;
    ``peak_held`` the activations each stage held; ``events`` the fastest step's timeline (for
    ``timeline.plot_timeline``). Rank 0 prints each row's idle fraction as it is measured.
    """
    parsed = [(variant, *parse_variant(variant)) for variant in variants]
    rank, world, device = st.join(backend)
    try:
        torch.manual_seed(seed)
        module = balanced_stage(width, layers_per_stage).to(device)
        x = torch.randn(micro_batch_size, width, device=device)
        hop = hop_ms(x.shape, rank, device) if world > 1 else 0.0
        rows = []
        for variant, schedule, blocking in parsed:
            for m in micro_batches:
                if schedule == "1f1b" and m < world:
                    continue
                runs = [_one_step(module, schedule, blocking, m, rank, world, x, device) for _ in range(repeats + 1)]
                peaks: list[Any] = [None] * world
                dist.all_gather_object(peaks, runs[-1][1])
                rows.append(_row(schedule, variant.partition("/")[2], m, world, [events for events, _ in runs[1:]],
                                 peaks, hop))
                if rank == 0:
                    print(f"{variant}, m = {m}: {rows[-1]['measured']:.1%} idle (theory {rows[-1]['theory']:.1%})",
                          flush=True)
        return rows
    finally:
        st.leave()


def measure_bubble(nprocs: int = 2, timeout: float = 300.0, **options: Any) -> list[dict[str, Any]]:
    """Run ``bubble_entry`` on ``nprocs`` stages, one thread each (``options`` are its arguments)."""
    from dtutor import launch

    for variant in options.get("variants", VARIANTS):
        parse_variant(variant)
    return launch.run(BUBBLE_ENTRY, nprocs, threads_per_rank=1, timeout=timeout, quiet=True, **options)[0]


def _verdict(row: dict[str, Any]) -> str:
    """The benchmark's verdict for overlapped GPipe on p = 2 stages at m <= 4, else nothing."""
    if (row["schedule"], row["sends"], row["stages"]) != ("gpipe", "overlapped", 2) or row["micro_batches"] > 4:
        return ""
    return f"within {GAP_TARGET:.0%}: {'met' if abs(row['relative_gap']) <= GAP_TARGET else 'missed'}"


def _explain(row: dict[str, Any]) -> list[str]:
    """Where one row's gap from the theory comes from, in numbers (lines within 110 characters)."""
    crossings = 2 * row["micro_batches"] * (row["stages"] - 1)
    hops = f"{crossings} crossings at {row['hop_ms']:.2f} ms per hop: {crossings * row['hop_ms']:.1f} ms"
    hidden = "a blocking transfer also waits for its receiver" if row["sends"] == "blocking" else "if none were hidden"
    return [f"at m = {row['micro_batches']}, GPipe {row['sends']}: {row['measured']:.1%} idle, "
            f"theory {row['theory']:.1%}",
            f"  uneven compute {100 * row['uneven']:+.1f} points: with free communication the step idles "
            f"{row['replayed']:.1%}; compute varies by {row['compute_cv']:.0%}",
            f"  communication  {100 * row['communication']:+.1f} points: {row['communication_ms']:.1f} ms waited; "
            f"{hops} ({hidden})"]


def table_bubble(rows: list[dict[str, Any]], verdict: bool = False) -> pd.DataFrame:
    """The bubble table: measured idle fraction, theory, the gap split into uneven compute and communication.

    Its notes explain each GPipe variant's gap at the largest m from its numbers. ``verdict`` (the benchmark's,
    never a learner's table) adds a column comparing the relative gap with ``GAP_TARGET`` for overlapped GPipe
    at p = 2, m <= 4.
    """
    from dtutor.tables import titled

    table = [{"schedule": row["schedule"], "sends": row["sends"], "p": row["stages"], "m": row["micro_batches"],
              "measured %": round(100 * row["measured"], 1), "theory %": round(100 * row["theory"], 1),
              "rel. gap %": round(100 * row["relative_gap"]), "uneven points": round(100 * row["uneven"], 1),
              "comm. points": round(100 * row["communication"], 1),
              "peak activations": "/".join(str(n) for n in row["peak_held"])}
             | ({"target": _verdict(row)} if verdict else {}) for row in rows]
    notes = ["uneven + comm. = measured - theory, in points",
             "uneven: the fastest step replayed with its own compute times and free communication, minus theory"]
    largest = max((r["micro_batches"] for r in rows), default=0)
    notes += [line for r in rows if r["schedule"] == "gpipe" and r["micro_batches"] == largest for line in _explain(r)]
    return titled(table, notes=notes)


def plot_bubble(rows: list[dict[str, Any]]):
    """Idle fraction against micro-batches: GPipe's theory and each variant's measurement."""
    import matplotlib.pyplot as plt

    figure, axes = plt.subplots(figsize=(5.5, 3.4))
    gpipe = [r for r in rows if r["schedule"] == "gpipe" and r["sends"] == "overlapped"] or rows
    ms = sorted({r["micro_batches"] for r in gpipe})
    axes.plot(ms, [theory_bubble(rows[0]["stages"], m) for m in ms], "k--", marker="o", label="theory (p-1)/(m+p-1)")
    for variant in dict.fromkeys((r["schedule"], r["sends"]) for r in rows):
        mine = [r for r in rows if (r["schedule"], r["sends"]) == variant]
        axes.plot([r["micro_batches"] for r in mine], [r["measured"] for r in mine], marker="s",
                  label=f"{variant[0]}, {variant[1]}, measured")
    axes.set_xscale("log", base=2)
    axes.set_xlabel("micro-batches m")
    axes.set_ylabel("idle fraction")
    worst = max(gpipe, key=lambda r: r["micro_batches"])
    axes.set_title(f"p = {rows[0]['stages']} stages: the bubble; at m = {worst['micro_batches']} "
                   f"{worst['measured']:.0%} measured ({worst['schedule']}, {worst['sends']}) vs "
                   f"{worst['theory']:.0%}", fontsize=9)
    axes.legend(fontsize=8)
    figure.tight_layout()
    return figure
