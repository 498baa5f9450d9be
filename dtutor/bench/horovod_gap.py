"""Why Horovod (PyTorch) scales worse than DDP on the course's 2-core CPU, measured: ``python -m dtutor.bench
horovod_gap``.

The candidates, and what measures each:

- **Horovod's background thread competes for the cores.** It wakes every ``HOROVOD_CYCLE_TIME`` (1 ms by
  default) to coordinate with the other ranks, even with nothing to do: ``idle_cpu`` measures the CPU a
  rank burns while idle, and each training run reports the CPU of its threads other than the main one
  (``variant "horovod, cycle 5 ms"`` wakes it less often);
- **the main thread spins while it waits.** ``optimizer.step()`` waits for the all-reduces in Horovod's
  ``WaitAndClear``, a loop of ``std::this_thread::yield()`` (horovod/torch/mpi_ops_v2.cc): it keeps a core
  busy that the background threads need. Each run reports the main thread's CPU per step;
  ``PatientHorovod`` waits instead by polling ``hvd.poll`` with short sleeps;
- **per-tensor negotiation against DDP's one bucket that overlaps backward**: Horovod negotiates and
  all-reduces each gradient as it is ready (fused per cycle); ``num_groups=1`` (one group: one grouped
  all-reduce after backward, like DDP's single bucket for this model) and ``HOROVOD_FUSION_THRESHOLD=0``
  (no fusion) change that. "horovod, all three" combines one group, a 5 ms cycle and the sleeping wait.

Every variant trains the same model and data on 2 ranks (one thread each) in rotated rounds, so load on a
shared machine falls on all alike; each figure is the median over rounds, and "vs DDP" is the median of
each round's ratio to DDP's samples/s in the same round.
"""

from __future__ import annotations

import os
import statistics
import time
from typing import TYPE_CHECKING, Any

from dtutor.pytorch.horovod import Horovod

if TYPE_CHECKING:
    import pandas as pd

POLL_SECONDS = 2e-4

VARIANTS: dict[str, dict[str, Any]] = {
    "ddp": {"strategy": "ddp"},
    "horovod": {"strategy": "horovod"},
    "horovod, sleeping wait": {"strategy": "horovod", "implementation": "dtutor.bench.horovod_gap:PatientHorovod"},
    "horovod, cycle 5 ms": {"strategy": "horovod", "env": {"HOROVOD_CYCLE_TIME": "5"}},
    "horovod, one group": {"strategy": "horovod", "implementation": "dtutor.bench.horovod_gap:GroupedHorovod"},
    "horovod, no fusion": {"strategy": "horovod", "env": {"HOROVOD_FUSION_THRESHOLD": "0"}},
    "horovod, all three": {"strategy": "horovod", "env": {"HOROVOD_CYCLE_TIME": "5"},
                           "implementation": "dtutor.bench.horovod_gap:PatientGroupedHorovod"},
}
IDLE = {"horovod": {}, "horovod, cycle 5 ms": {"HOROVOD_CYCLE_TIME": "5"}}  # plus torch.distributed


class PatientHorovod(Horovod):
    """Horovod whose ``optimizer.step`` first waits for the gradients' all-reduces by polling with short
    sleeps (``hvd.poll``), so the main thread leaves the core to the background threads meanwhile; Horovod's
    own wait then finds them done."""

    def wrap(self, model: Any, optimizer: Any) -> tuple[Any, Any]:
        """Horovod's wrap, then the sleeping wait in front of the optimizer's step."""
        model, optimizer = super().wrap(model, optimizer)
        step, poll = optimizer.step, self.hvd.poll

        def step_after_waiting(*args: Any, **kwargs: Any) -> Any:
            handles = [h for h, _ in optimizer._handles.values() if h is not None and not callable(h)]
            while not all(poll(h) for h in handles):
                time.sleep(POLL_SECONDS)
            return step(*args, **kwargs)

        optimizer.step = step_after_waiting
        return model, optimizer


class GroupedHorovod(Horovod):
    """Horovod with every gradient in one group: one grouped all-reduce once backward has produced them all."""

    optimizer_options = {"num_groups": 1}


class PatientGroupedHorovod(PatientHorovod):
    """Both: one group, and the sleeping wait (with ``HOROVOD_CYCLE_TIME=5``: "all three")."""

    optimizer_options = {"num_groups": 1}


def idle_cpu(seconds: float = 3.0, backend: str = "auto") -> dict[str, float]:
    """Entry point: CPU seconds per second this rank uses while it waits idle for ``seconds`` after joining
    (Horovod under horovodrun, else ``torch.distributed``)."""
    if "HOROVOD_RANK" in os.environ:
        import horovod.torch as hvd

        hvd.init()
        barrier, leave = hvd.barrier, hvd.shutdown
    else:
        import torch.distributed as dist

        from dtutor.pytorch.process_group import join_process_group, leave_process_group

        join_process_group(backend)
        barrier, leave = dist.barrier, leave_process_group
    try:
        barrier()
        cpu, wall = time.process_time(), time.perf_counter()
        time.sleep(seconds)
        return {"cpu_per_second": (time.process_time() - cpu) / (time.perf_counter() - wall)}
    finally:
        leave()


def _case(name: str, variant: dict[str, Any], batch: int, steps: int, epochs: int) -> dict[str, Any]:
    fields = {"strategy": variant["strategy"], "global_batch": 2 * batch, "samples": 2 * batch * steps,
              "epochs": epochs, "test_samples": 0, "return_parameters": False}
    case = {"name": name, "fields": fields}
    if "implementation" in variant:
        case["implementation"] = variant["implementation"]
    return case


def run_variant(name: str, variant: dict[str, Any], batch: int, steps: int, epochs: int,
                timeout: float) -> list[dict[str, Any]]:
    """One launch of one variant on 2 ranks; every rank's measurements (``dtutor.bench.runner``)."""
    from dtutor import launch
    from dtutor.launch.commands import environment

    case = _case(name, variant, batch, steps, epochs)
    options = {"timeout": timeout, "quiet": True, "threads_per_rank": 1, "cases": [case]}
    with environment(**variant.get("env", {})):
        if variant["strategy"] == "ddp":
            ranks = launch.run("dtutor.bench.runner:run_cases", 2, **options)
        else:
            ranks = launch.run_horovod("dtutor.bench.runner:run_cases", 2, framework="torch", **options)
    return [rank[0] for rank in ranks]


def investigate(rounds: int = 3, batch_per_rank: int = 256, steps: int = 2, epochs: int = 6,
                variants: dict[str, dict[str, Any]] | None = None, timeout: float = 600.0,
                progress: Any = print) -> dict[str, Any]:
    """Every variant in ``rounds`` rotated rounds, then the idle CPU of each library; the evidence as a dict."""
    from dtutor import launch
    from dtutor.bench.machine import machine
    from dtutor.bench.suite import rotated
    from dtutor.launch.commands import environment

    variants = variants or VARIANTS
    where = machine()
    load_before = os.getloadavg()[0]
    runs: dict[str, list[list[dict[str, Any]]]] = {name: [] for name in variants}
    for round_ in range(rounds):
        for name in rotated(list(variants), round_):
            runs[name].append(run_variant(name, variants[name], batch_per_rank, steps, epochs, timeout))
            first = runs[name][-1][0]
            progress(f"round {round_ + 1}/{rounds}: {name}: " + (first["error"] if "error" in first else
                     f"{first['samples_per_s']:,.0f} samples/s"))
    idle = {}
    for name, env in IDLE.items():
        with environment(**env):
            idle[name] = launch.run_horovod("dtutor.bench.horovod_gap:idle_cpu", 2, quiet=True, timeout=timeout)
    idle["torch.distributed"] = launch.run("dtutor.bench.horovod_gap:idle_cpu", 2, quiet=True, timeout=timeout)
    return {"machine": where, "rounds": rounds, "batch_per_rank": batch_per_rank, "load_before": load_before,
            "load_after": os.getloadavg()[0], "rows": summarize(runs),
            "idle_cpu_per_second": {k: statistics.mean(r["cpu_per_second"] for r in v) for k, v in idle.items()}}


def summarize(runs: dict[str, list[list[dict[str, Any]]]]) -> list[dict[str, Any]]:
    """Per variant: medians over rounds of samples/s, the ratio to DDP's same round, and per-step times."""
    reference = runs.get("ddp", [])
    rows = []
    for name, rounds in runs.items():
        good = [ranks for ranks in rounds if all("error" not in r for r in ranks)]

        def per_step(key: str, good: list = good) -> float | None:
            values = [statistics.mean(r[key] for r in ranks) for ranks in good if key in ranks[0]]
            return statistics.median(values) if values else None

        ratios = [ranks[0]["samples_per_s"] / ddp[0]["samples_per_s"] for ranks, ddp in zip(rounds, reference,
                  strict=False) if "error" not in ranks[0] and "error" not in ddp[0]]
        main, cpu = per_step("main_thread_cpu_per_step"), per_step("cpu_per_step")
        rows.append({"variant": name, "samples_per_s": statistics.median(r[0]["samples_per_s"] for r in good)
                     if good else None, "vs_ddp": statistics.median(ratios) if ratios else None,
                     "wall_per_step": per_step("wall_per_step"), "main_thread_cpu_per_step": main,
                     "other_threads_cpu_per_step": cpu - main if cpu is not None and main is not None else None,
                     "errors": sorted({r["error"] for ranks in rounds for r in ranks if "error" in r})})
    return rows


def _ms(value: float | None) -> str:
    return "-" if value is None else f"{value * 1e3:.1f}"


def _rounded_ms(value: float | None) -> float | None:
    return None if value is None else round(value * 1e3, 1)


def table_gap(result: dict[str, Any]) -> pd.DataFrame:
    """The variants' table; its notes say what it shows, every sentence computed from the numbers."""
    from dtutor.tables import titled, whole

    rows = [{"variant": row["variant"], "samples/s": whole(row["samples_per_s"]),
             "vs DDP": None if row["vs_ddp"] is None else round(row["vs_ddp"], 2),
             "ms/step (wall)": _rounded_ms(row["wall_per_step"]),
             "main CPU ms/step": _rounded_ms(row["main_thread_cpu_per_step"]),
             "other CPU ms/step": _rounded_ms(row["other_threads_cpu_per_step"])} for row in result["rows"]]
    idle = result["idle_cpu_per_second"]
    notes = ["idle, per rank: " + ", ".join(f"{k} {v:.1%} of a core" for k, v in idle.items()), *conclusions(result)]
    return titled(rows, notes=notes, integers=["samples/s"])


def conclusions(result: dict[str, Any]) -> list[str]:
    """What the numbers say about each candidate, and whether a variant closes the gap (within 5%)."""
    rows = {row["variant"]: row for row in result["rows"]}
    ddp, hvd = rows.get("ddp"), rows.get("horovod")
    if not (ddp and hvd and hvd["vs_ddp"] and ddp["main_thread_cpu_per_step"] and hvd["main_thread_cpu_per_step"]):
        return ["(not enough runs to compare)"]
    found = [f"Horovod runs at {hvd['vs_ddp']:.2f} of DDP's samples/s; its main thread uses "
             f"{_ms(hvd['main_thread_cpu_per_step'])} ms of CPU per step against DDP's "
             f"{_ms(ddp['main_thread_cpu_per_step'])}, its other threads {_ms(hvd['other_threads_cpu_per_step'])} "
             f"against {_ms(ddp['other_threads_cpu_per_step'])}."]
    idle = result.get("idle_cpu_per_second", {})
    if "horovod" in idle and "torch.distributed" in idle:
        found.append(f"With nothing to do, Horovod's background thread uses {idle['horovod']:.1%} of a core per "
                     f"rank (torch.distributed: {idle['torch.distributed']:.1%}): with one core per rank, that "
                     "time is taken from the computation.")
    patient = rows.get("horovod, sleeping wait")
    if patient and patient["main_thread_cpu_per_step"]:
        found.append(f"Waiting with sleeps instead of Horovod's spinning wait takes the main thread from "
                     f"{_ms(hvd['main_thread_cpu_per_step'])} to {_ms(patient['main_thread_cpu_per_step'])} ms "
                     f"of CPU per step (DDP: {_ms(ddp['main_thread_cpu_per_step'])}).")
    tried = [row for name, row in rows.items() if name not in ("ddp", "horovod") and row["vs_ddp"]]
    if tried:
        best = max(tried, key=lambda row: row["vs_ddp"])
        verdict = "closes the gap (within 5% of DDP)" if best["vs_ddp"] >= 0.95 else "does not close the gap"
        found.append(f"Best variant: {best['variant']}, at {best['vs_ddp']:.2f} of DDP: {verdict}.")
    return found
