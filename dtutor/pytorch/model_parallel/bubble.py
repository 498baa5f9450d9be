"""The pipeline bubble measured against theory, from the pipeline strategies' own training.

``record`` trains a pipeline strategy through ``fit`` (``recorded_training`` on every rank, one launch) and
returns each rank's ``RunResult``; a hand-written one (``gpipe.PipelineByHand``) keeps what its stage did in
every step (``details["stage_steps"]``: its events and the activations it held), and ``timelines`` merges the
ranks' events step by step. ``measure_bubble`` records every variant at each micro-batch count on p stages
that are genuinely equal (``balanced_model``: each stage the same ``layers_per_stage`` x (Linear(width,
width) + ReLU), random data). Stage 0's input is given ``requires_grad`` (``input_grad``) so its backward also
computes an input gradient, as every other stage must (to send it back); without it, stage 0's backward
would be cheaper and its measured idle time larger than theory.

Per step, each stage's idle fraction is 1 - (its compute time) / (the step's span over all stages); a row
gives the mean over stages of the fastest step after the first (the first includes one-time warm-up): the
step least disturbed by other work on a shared machine (``median`` is the median over the steps). GPipe's
``(p - 1) / (m + p - 1)`` assumes equal, constant stage times and free communication, so a row splits its
gap from the theory in two, with ``timeline.replay`` (the same step, its own compute times, free
communication):

- ``uneven``: the replay's idle fraction minus the theory. Compute times vary from micro-batch to
  micro-batch (``compute_cv``: about 10-15% within a step on a shared 2-core virtual machine), and every
  hand-over waits for the slower of two stages; the more micro-batches, the more such waits.
- ``communication``: the measured idle fraction minus the replay's: transfers the step waited for. With
  blocking sends every one of the ``2 m (p - 1)`` boundary crossings is on the critical path (``hop_ms``:
  the time from stage 0 finishing its first forward to stage 1 starting it); overlapped sends hide most.

The library's schedules (``pipeline_gpipe``, ``pipeline_1f1b``) train the same model in the same table: their
samples/s, beside the hand-written ones' (they keep no timeline). On 2 cores, p = 4 oversubscribes the CPU
(4 processes, 2 cores). The schedules themselves are measured against the theory, free of this noise, on
stages of fixed durations (``fixed_time``; the benchmark ``python -m dtutor.bench pipeline`` judges those).

Launch recipes::

    dtutor.pytorch.model_parallel.bubble.measure_bubble(2)          # from Python: rows of the table
    dtutor.pytorch.model_parallel.bubble.record(2, {"strategy": "pipeline_by_hand", "micro_batches": 4})
    python -m dtutor.bench pipeline --json bubble.json              # the table and the memory/speed table
"""

from __future__ import annotations

import statistics
from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

import torch
from torch import nn
from torch.utils.data import TensorDataset

from dtutor import strategies
from dtutor.config import TrainConfig
from dtutor.pytorch.model_parallel.gpipe import PipelineByHand
from dtutor.pytorch.model_parallel.timeline import Event, idle_fractions, mean_idle, replay, theory_bubble
from dtutor.result import RunResult

if TYPE_CHECKING:
    import pandas as pd

RECORD_ENTRY = "dtutor.pytorch.model_parallel.bubble:recorded_training"
HAND_WRITTEN = ("pipeline_by_hand", "pipeline_by_hand_1f1b")
LIBRARY = ("pipeline_gpipe", "pipeline_1f1b")
VARIANTS = ("pipeline_by_hand/blocking", "pipeline_by_hand/overlapped", "pipeline_by_hand_1f1b/overlapped",
            *LIBRARY)  # strategy/sends (the library's schedules choose their own sends)
TIMELINE_KEYS = ("measured", "median", "gap", "relative_gap", "replayed", "uneven", "communication", "per_stage",
                 "span_ms", "compute_ms", "communication_ms", "compute_cv", "hop_ms", "peak_held", "events")


def parse_variant(variant: str) -> tuple[str, str]:
    """``"strategy/sends"`` (hand-written) or a library strategy's name, as (strategy, sends)."""
    strategy, _, sends = variant.partition("/")
    if variant in LIBRARY:
        return variant, "library"
    if strategy not in HAND_WRITTEN or sends not in ("blocking", "overlapped"):
        raise ValueError(f"variants: each is {' or '.join(LIBRARY)}, or {' or '.join(HAND_WRITTEN)}, '/', then "
                         f"'blocking' or 'overlapped'; got {variant!r}")
    if variant == "pipeline_by_hand_1f1b/blocking":
        raise ValueError("variants: 1F1B with blocking sends deadlocks (stage 0 sends activation 1 while stage 1 "
                         "sends gradient 0); use pipeline_by_hand_1f1b/overlapped")
    return strategy, sends


def balanced_model(layers: int, width: int) -> nn.Sequential:
    """``layers`` x (Linear(width, width), ReLU): cut evenly, every stage does the same work."""
    return nn.Sequential(*(module for _ in range(layers) for module in (nn.Linear(width, width), nn.ReLU())))


def balanced_data(samples: int, width: int, seed: int) -> TensorDataset:
    """``samples`` random inputs of ``width`` with random labels below ``width``, the same on every rank."""
    generator = torch.Generator().manual_seed(seed)
    return TensorDataset(torch.randn(samples, width, generator=generator),
                         torch.randint(0, width, (samples,), generator=generator))


def recorded_training(runs: Sequence[dict[str, Any]], width: int = 0, layers: int = 0,
                      backend: str = "auto") -> list[RunResult]:
    """Entry point: ``fit`` once per run of ``runs`` (``TrainConfig`` fields; a hand-written pipeline's ``sends``
    and ``input_grad`` too), in turn in one process group (``launch.training.fit_in_turn``), so a whole table
    takes one launch.

    ``width`` > 0 trains ``balanced_model(layers, width)`` on ``balanced_data`` instead of the course's CNN on
    MNIST. Each result's ``details["stage_steps"]``: per step, this stage's events and peak activations held
    (none for the library's schedules).
    """
    from dtutor.launch.training import fit_in_turn
    from dtutor.pytorch.driver import fit

    def fit_recorded(run: dict[str, Any]) -> RunResult:
        fields = {"backend": backend, **run}
        sends, input_grad = fields.pop("sends", "blocking"), fields.pop("input_grad", False)
        config = TrainConfig.from_kwargs(**fields)
        strategy = strategies.load(config.strategy)(config)
        if isinstance(strategy, PipelineByHand):
            strategy.blocking, strategy.input_grad = sends == "blocking", input_grad
        task = {"model": lambda: balanced_model(layers, width),
                "train_data": balanced_data(config.samples, width, config.seed)} if width else {}
        result = fit(config, strategy=strategy, **task)
        result.details["stage_steps"] = [(step.events, step.peak_held) for step in getattr(strategy, "steps", [])]
        return result

    return fit_in_turn(runs, fit_recorded, group_backend=next(iter(runs), {}).get("backend", backend))


def record(nprocs: int, *runs: dict[str, Any], width: int = 0, layers_per_stage: int = 1,
           timeout: float = 300.0) -> list[list[RunResult]]:
    """Per run (``TrainConfig`` fields, each checked here first as ``launch.train`` does, plus ``sends`` and
    ``input_grad``), every rank's ``RunResult``: ``recorded_training`` on ``nprocs`` stages, one thread each."""
    from dtutor import launch
    from dtutor.launch.training import prepare

    checked = []
    for run in runs:
        options = {key: run[key] for key in ("sends", "input_grad") if key in run}
        fields = {key: value for key, value in run.items() if key not in options}
        checked.append({**prepare(nprocs, 1, fields).as_arguments(), **options})
    balanced = {"width": width, "layers": nprocs * layers_per_stage} if width else {}
    per_rank = launch.run(RECORD_ENTRY, nprocs, threads_per_rank=1, timeout=timeout, quiet=True, runs=checked,
                          **balanced)
    return [[results[index] for results in per_rank] for index in range(len(runs))]


def timelines(results: Sequence[RunResult]) -> list[list[Event]]:
    """Per step, every stage's events (each rank's ``stage_steps``), sorted by start time."""
    per_rank = [result.details["stage_steps"] for result in results]
    return [sorted((e for steps in per_rank for e in steps[k][0]), key=lambda e: e.start)
            for k in range(len(per_rank[0]))]


def peak_held(results: Sequence[RunResult]) -> list[int]:
    """Per stage, the most micro-batches' activations it held at once in any step."""
    return [max(held for _, held in result.details["stage_steps"]) for result in results]


def hop_ms(events: Sequence[Event]) -> float:
    """From stage 0 ending its first forward to stage 1 starting it (ms): one activation's crossing."""
    first = {e.stage: e for e in events if e.kind == "forward" and e.micro_batch == 0}
    return 1e3 * (first[1].start - first[0].end) if 1 in first else 0.0


def compute_variation(events: Sequence[Event]) -> float:
    """How much one micro-batch's compute time varies: the spread of forwards and backwards, each relative to
    its kind's mean, as a coefficient of variation (0.1: a typical micro-batch is 10% off)."""
    relative = []
    for kind in ("forward", "backward"):
        seconds = [e.seconds for e in events if e.kind == kind]
        relative += [s / statistics.fmean(seconds) for s in seconds]
    return statistics.pstdev(relative)


def _timeline_figures(steps: list[list[Event]], world: int, micro_batches: int) -> dict[str, Any]:
    """A row's bubble figures from the timed steps: the fastest step's (the least disturbed by other work)."""
    spans = [max(e.end for e in events) - min(e.start for e in events) for events in steps]
    best = steps[spans.index(min(spans))]
    replayed = replay(best)
    replay_span = max(e.end for e in replayed) - min(e.start for e in replayed)
    measured, theory, idle_replayed = mean_idle(best), theory_bubble(world, micro_batches), mean_idle(replayed)
    return {"measured": measured, "median": statistics.median(mean_idle(events) for events in steps),
            "gap": measured - theory, "relative_gap": measured / theory - 1, "replayed": idle_replayed,
            "uneven": idle_replayed - theory, "communication": measured - idle_replayed,
            "per_stage": list(idle_fractions(best).values()), "span_ms": 1e3 * min(spans),
            "compute_ms": 1e3 * sum(e.seconds for e in best) / (world * micro_batches),
            "communication_ms": 1e3 * (min(spans) - replay_span), "compute_cv": compute_variation(best),
            "hop_ms": statistics.median(hop_ms(events) for events in steps), "events": best}


def bubble_row(strategy: str, sends: str, micro_batches: int, results: Sequence[RunResult]) -> dict[str, Any]:
    """One table row from a recorded run: samples/s after the first epoch; for a hand-written pipeline, the
    bubble of its steps after the first (``TIMELINE_KEYS``; None for the library's schedules)."""
    world = len(results)
    row = {"strategy": strategy, "schedule": strategies.STRATEGIES[strategy].schedule, "sends": sends,
           "stages": world, "micro_batches": micro_batches, "theory": theory_bubble(world, micro_batches),
           "samples_per_s": results[0].samples_per_second(), "result": results[0]}
    steps = timelines(results)[1:] if results[0].details["stage_steps"] else []
    if not steps:
        return row | dict.fromkeys(TIMELINE_KEYS)
    return row | _timeline_figures(steps, world, micro_batches) | {"peak_held": peak_held(results)}


def measure_bubble(nprocs: int = 2, micro_batches: Sequence[int] = (1, 2, 4, 8), variants: Sequence[str] = VARIANTS,
                   width: int = 1024, layers_per_stage: int = 4, micro_batch_size: int = 64, repeats: int = 10,
                   seed: int = 0, timeout: float = 900.0, return_parameters: bool = False) -> list[dict[str, Any]]:
    """The bubble table's rows: each variant (``VARIANTS``) trained at each micro-batch count on ``nprocs``
    balanced stages (one launch for all), ``repeats`` timed steps after a warm-up, one step per epoch; 1F1B
    only where m >= p.

    Each row: samples/s, GPipe's theory, and for the hand-written pipelines the bubble (module docs),
    ``peak_held`` (activations held per stage) and ``events`` (the fastest step, for ``timeline.plot_timeline``).
    """
    parsed = [parse_variant(variant) for variant in variants]
    cells = [(strategy, sends, m) for strategy, sends in parsed for m in micro_batches
             if strategies.STRATEGIES[strategy].schedule != "1f1b" or m >= nprocs]
    runs = [{"strategy": strategy, "sends": sends, "input_grad": True, "micro_batches": m,
             "global_batch": m * micro_batch_size, "samples": m * micro_batch_size, "epochs": repeats + 1,
             "test_samples": 0, "seed": seed, "return_parameters": return_parameters} for strategy, sends, m in cells]
    recorded = record(nprocs, *runs, width=width, layers_per_stage=layers_per_stage, timeout=timeout)
    return [bubble_row(strategy, sends, m, results) for (strategy, sends, m), results in zip(cells, recorded,
                                                                                              strict=True)]


def _explain(row: dict[str, Any]) -> list[str]:
    """Where one row's gap from the theory comes from, in numbers (lines within 120 characters)."""
    crossings = 2 * row["micro_batches"] * (row["stages"] - 1)
    hops = f"{crossings} crossings at {row['hop_ms']:.2f} ms per hop: {crossings * row['hop_ms']:.1f} ms"
    hidden = "a blocking transfer also waits for its receiver" if row["sends"] == "blocking" else "if none were hidden"
    return [f"at m = {row['micro_batches']}, GPipe by hand, {row['sends']}: {row['measured']:.1%} idle, "
            f"theory {row['theory']:.1%}",
            f"  uneven compute {100 * row['uneven']:+.1f} points: with free communication the step idles "
            f"{row['replayed']:.1%}; compute varies by {row['compute_cv']:.0%}",
            f"  communication  {100 * row['communication']:+.1f} points: {row['communication_ms']:.1f} ms waited; "
            f"{hops} ({hidden})"]


def table_bubble(rows: list[dict[str, Any]]) -> pd.DataFrame:
    """The bubble table: samples/s, measured idle fraction, theory, the gap split into uneven compute and
    communication (hand-written pipelines; the library's schedules keep no timeline: missing).

    The notes explain each GPipe-by-hand variant's gap at the largest m from its numbers.
    """
    from dtutor.tables import titled, whole

    def cells(row: dict[str, Any]) -> dict[str, Any]:
        timed = row["measured"] is not None
        return {"strategy": row["strategy"], "sends": row["sends"], "p": row["stages"], "m": row["micro_batches"],
                "samples/s": whole(row["samples_per_s"]),
                "measured %": round(100 * row["measured"], 1) if timed else None,
                "theory %": round(100 * row["theory"], 1),
                "rel. gap %": whole(100 * row["relative_gap"]) if timed else None,
                "uneven points": round(100 * row["uneven"], 1) if timed else None,
                "comm. points": round(100 * row["communication"], 1) if timed else None,
                "peak activations": "/".join(map(str, row["peak_held"])) if timed else None}

    notes = ["uneven + comm. = measured - theory, in points; uneven: the fastest step replayed with its own "
             "compute times and free communication, minus theory"]
    gpipe = [r for r in rows if r["strategy"] == "pipeline_by_hand" and r["measured"] is not None]
    largest = max((r["micro_batches"] for r in gpipe), default=0)
    notes += [line for r in gpipe if r["micro_batches"] == largest for line in _explain(r)]
    return titled([cells(row) for row in rows], notes=notes, integers=["samples/s", "rel. gap %"])


def plot_bubble(rows: list[dict[str, Any]]):
    """Idle fraction against micro-batches: GPipe's theory and each hand-written variant's measurement."""
    import matplotlib.pyplot as plt

    figure, axes = plt.subplots(figsize=(5.5, 3.4))
    timed = [r for r in rows if r["measured"] is not None]
    gpipe = [r for r in timed if r["strategy"] == "pipeline_by_hand" and r["sends"] == "overlapped"] or timed
    ms = sorted({r["micro_batches"] for r in gpipe})
    axes.plot(ms, [theory_bubble(rows[0]["stages"], m) for m in ms], "k--", marker="o", label="theory (p-1)/(m+p-1)")
    for variant in dict.fromkeys((r["strategy"], r["sends"]) for r in timed):
        mine = [r for r in timed if (r["strategy"], r["sends"]) == variant]
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
