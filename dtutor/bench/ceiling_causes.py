"""Why one process alone can train slower than each of two side by side: ``python -m dtutor.bench ceiling``.

The **ceiling** (two processes that train alone at once, never communicating, against twice one alone) is what
DDP's scaling is judged against. On the course's shared 2-vCPU virtual machine it came out anywhere from 0.56
to 1.62 across runs. This benchmark measures the candidates, in one launch of 2 processes that stay alive
throughout, so every configuration of a round runs within seconds of the others (``PHASES``):

- one process alone, unpinned, and pinned to core 0, then to core 1 (the other rank waits in a barrier);
- both side by side, unpinned, and each pinned to a core of its own (``os.sched_setaffinity``).

Each fit is timed by the driver (samples/s after its first epoch, as ``bench all``), and around it this
process's CPU seconds (``time.process_time``), the time it was runnable but waited for a core and the times it
moved between cores (the kernel's ``/proc/self/schedstat`` and ``/proc/self/sched``), and the time the
hypervisor took from each vCPU (steal, ``/proc/stat``). The first fit of each process is a warm-up, timed apart
(``cold``). Per round: the ceiling unpinned, C / (2 T1), and pinned, each rank against its own core alone.
"""

from __future__ import annotations

import os
import statistics
import time
from typing import TYPE_CHECKING, Any

from dtutor import TrainConfig, launch
from dtutor.launch.training import quietly

if TYPE_CHECKING:
    import pandas as pd

# (name, the ranks that train, pinned): rank r pinned goes to core r; "alone on core 1" pins rank 0 to core 1
PHASES = [("alone", (0,), False), ("alone on core 0", (0,), True), ("alone on core 1", (0,), True),
          ("side by side", (0, 1), False), ("side by side, pinned", (0, 1), True)]
USER_HZ = os.sysconf("SC_CLK_TCK") if hasattr(os, "sysconf") else 100


def _steal_per_cpu() -> list[float]:
    """Seconds the hypervisor took from each vCPU since boot (``/proc/stat``'s steal column); [] where unknown."""
    try:
        with open("/proc/stat") as file:
            lines = [line.split() for line in file if line.startswith("cpu") and line[3].isdigit()]
        return [int(fields[8]) / USER_HZ for fields in lines]
    except (OSError, IndexError, ValueError):
        return []


def _scheduler() -> dict[str, float]:
    """This process's scheduler counters: seconds waiting for a core while runnable, and migrations between cores."""
    found: dict[str, float] = {}
    try:
        with open("/proc/self/schedstat") as file:
            found["runqueue_wait_s"] = int(file.read().split()[1]) / 1e9
        with open("/proc/self/sched") as file:
            found.update(("migrations", float(line.split(":")[1])) for line in file
                          if line.startswith("se.nr_migrations"))
    except (OSError, IndexError, ValueError):
        pass
    return found


def _pin(core: int | None, cores: list[int]) -> None:
    os.sched_setaffinity(0, {cores[core % len(cores)]} if core is not None else set(cores))


def timed_fit(config: TrainConfig, dataset: Any, core: int | None, cores: list[int]) -> dict[str, Any]:
    """One fit of ``config`` on ``dataset`` (pinned to ``cores[core]``, or free): its rate and what it cost."""
    from dtutor.pytorch import fit

    _pin(core, cores)
    before, steal, wall, cpu = _scheduler(), _steal_per_cpu(), time.perf_counter(), time.process_time()
    with quietly():
        result = fit(config, train_data=dataset)
    wall, cpu = time.perf_counter() - wall, time.process_time() - cpu
    after, stolen = _scheduler(), [b - a for a, b in zip(steal, _steal_per_cpu(), strict=False)]
    _pin(None, cores)
    samples = config.used_samples() * config.epochs
    return {"samples_per_s": result.samples_per_second(), "wall_s_per_sample": wall / samples,
            "cpu_s_per_sample": cpu / samples, "steal_s": stolen,
            **{key: after[key] - before[key] for key in after if key in before}}


def phases(rounds: int = 5, batch: int = 256, samples: int = 1024, epochs: int = 3) -> dict[str, Any]:
    """Entry point (2 ranks): every phase of ``PHASES`` in each of ``rounds`` rounds, in rotated orders, after
    one cold fit (rank 0 alone, the process's first); this rank's measurements and its thread pools."""
    import torch
    import torch.distributed as dist

    from dtutor import data
    from dtutor.pytorch.process_group import join_process_group, leave_process_group

    rank, _, _ = join_process_group("gloo")
    cores = sorted(os.sched_getaffinity(0))
    config = TrainConfig(strategy="single", global_batch=batch, samples=samples, epochs=epochs, test_samples=0,
                         return_parameters=False)
    dataset = data.torch_dataset(data.load_mnist("train", limit=samples, verbose=False))
    found: dict[str, Any] = {"rank": rank, "cores": cores, "intra_op_threads": torch.get_num_threads(),
                             "inter_op_threads": torch.get_num_interop_threads(),
                             "OMP_NUM_THREADS": os.environ.get("OMP_NUM_THREADS"), "runs": []}
    try:
        dist.barrier()
        if rank == 0:
            found["runs"].append({"round": -1, "phase": "cold", **timed_fit(config, dataset, None, cores)})
        for round_ in range(rounds):
            for name, ranks, pinned in PHASES[round_ % len(PHASES):] + PHASES[:round_ % len(PHASES)]:
                dist.barrier()
                if rank in ranks:
                    core = (1 if name.endswith("core 1") else rank) if pinned else None
                    found["runs"].append({"round": round_, "phase": name, **timed_fit(config, dataset, core, cores)})
        dist.barrier()
    finally:
        leave_process_group()
    return found


def measure(rounds: int = 5, batch: int = 256, samples: int = 1024, epochs: int = 3,
            timeout: float = 600.0) -> dict[str, Any]:
    """Launch ``phases`` on 2 ranks of one thread each; every rank's measurements, and the load around them."""
    from dtutor.bench.machine import machine

    where = machine()
    ranks = launch.run("dtutor.bench.ceiling_causes:phases", 2, threads_per_rank=1, quiet=True, timeout=timeout,
                       rounds=rounds, batch=batch, samples=samples, epochs=epochs)
    return {"ranks": ranks, "rounds": rounds, "batch": batch, "samples": samples, "epochs": epochs,
            "machine": where, "load_before": where["load_before"], "load_after": os.getloadavg()[0]}


def _runs(result: dict[str, Any], phase: str) -> dict[int, dict[int, dict[str, Any]]]:
    """``found[round][rank]``: the runs of ``phase``."""
    found: dict[int, dict[int, dict[str, Any]]] = {}
    for rank in result["ranks"]:
        for run in rank["runs"]:
            if run["phase"] == phase:
                found.setdefault(run["round"], {})[rank["rank"]] = run
    return found


def by_round(result: dict[str, Any]) -> list[dict[str, float]]:
    """Per round: the ceiling unpinned (both side by side over twice one alone) and pinned (each rank over its
    own core alone), the CPU seconds per sample alone and side by side, core 1 against core 0, and what the
    lone unpinned run lost to the scheduler (migrations, seconds waiting for a core)."""
    alone, core0, core1 = _runs(result, "alone"), _runs(result, "alone on core 0"), _runs(result, "alone on core 1")
    pair, pinned = _runs(result, "side by side"), _runs(result, "side by side, pinned")
    rows, total = [], result["samples"] * result["epochs"]  # samples per fit
    for r in range(result["rounds"]):
        one, two, both = alone[r][0], pair[r], pinned[r]
        rows.append({"round": r + 1,
                     "ceiling": sum(run["samples_per_s"] for run in two.values()) / (2 * one["samples_per_s"]),
                     "ceiling_pinned": sum(run["samples_per_s"] for run in both.values()) /
                     (core0[r][0]["samples_per_s"] + core1[r][0]["samples_per_s"]),
                     "ceiling_cpu": sum(1 / both[rank]["cpu_s_per_sample"] for rank in both) /
                     (1 / core0[r][0]["cpu_s_per_sample"] + 1 / core1[r][0]["cpu_s_per_sample"]),
                     "wait_share_pair": statistics.mean(run["runqueue_wait_s"] / (run["wall_s_per_sample"] * total)
                                                        for run in [*two.values(), *both.values()]),
                     "cpu_ms_alone": 1e3 * one["cpu_s_per_sample"],
                     "cpu_ms_side_by_side": 1e3 * statistics.mean(run["cpu_s_per_sample"] for run in two.values()),
                     "cpu_ms_pinned": 1e3 * statistics.mean(run["cpu_s_per_sample"] for run in both.values()),
                     "core1_over_core0": core1[r][0]["samples_per_s"] / core0[r][0]["samples_per_s"],
                     "migrations_alone": one.get("migrations"), "wait_ms_alone": 1e3 * one.get("runqueue_wait_s", 0),
                     "steal_s": sum(sum(run["steal_s"]) for runs in (alone, core0, core1, pair, pinned)
                                    for run in runs[r].values()) / 2})  # each vCPU's steal is seen by both ranks
    return rows


def summary(result: dict[str, Any]) -> dict[str, Any]:
    """The figures of ``by_round`` as median, min and max over the rounds; the cold fit against the warm ones."""
    rows = by_round(result)
    cold = _runs(result, "cold").get(-1, {}).get(0)
    warm = statistics.median(run[0]["samples_per_s"] for run in _runs(result, "alone").values())
    spreads = {key: {"median": statistics.median(values), "min": min(values), "max": max(values)}
               for key in rows[0] if key != "round"
               for values in [[row[key] for row in rows if row[key] is not None]] if values}
    threads = {k: result["ranks"][0][k] for k in ("intra_op_threads", "inter_op_threads", "OMP_NUM_THREADS")}
    return {"spreads": spreads, "cold_over_warm": cold["samples_per_s"] / warm if cold else None, "threads": threads}


LABELS = {"ceiling": "ceiling, unpinned: C / (2 T1)", "ceiling_pinned": "ceiling, pinned: each rank / its core alone",
          "ceiling_cpu": "ceiling, pinned, by CPU time (samples per CPU-second)",
          "wait_share_pair": "side by side: share of the wall time waiting for a core",
          "cpu_ms_alone": "CPU ms per sample, alone (unpinned)",
          "cpu_ms_side_by_side": "CPU ms per sample, side by side",
          "cpu_ms_pinned": "CPU ms per sample, side by side pinned", "core1_over_core0": "alone: core 1 / core 0",
          "migrations_alone": "migrations of the lone process per fit",
          "wait_ms_alone": "lone process: ms waiting for a core", "steal_s": "s stolen by the hypervisor per round"}


def table_rounds(result: dict[str, Any]) -> pd.DataFrame:
    """One row per round: the ceiling with and without pinning, and the candidates' measurements."""
    from dtutor.tables import titled

    rows = [{"round": row["round"], "unpinned": round(row["ceiling"], 3), "pinned": round(row["ceiling_pinned"], 3),
             "by CPU time": round(row["ceiling_cpu"], 3), "waiting": f"{row['wait_share_pair']:.0%}",
             "CPU ms/sample alone": round(row["cpu_ms_alone"], 3), "side by side": round(row["cpu_ms_side_by_side"], 3),
             "pinned pair": round(row["cpu_ms_pinned"], 3), "core 1 / core 0": round(row["core1_over_core0"], 3),
             "migrations": row["migrations_alone"], "wait ms": round(row["wait_ms_alone"], 1),
             "steal s": round(row["steal_s"], 2)} for row in by_round(result)]
    date = result.get("machine", {}).get("date", "")[:16]
    return titled(rows, f"The ceiling per round ({result['batch']} samples per step, {result['samples']} samples, "
                        f"{result['epochs']} epochs per fit; measured {date}, load {result['load_before']:.1f} before, "
                        f"{result['load_after']:.1f} after)",
                  ["unpinned, pinned: the ceiling by wall clock; by CPU time: pinned, from samples per CPU-second; "
                   "waiting: share of the pair's wall time spent runnable without a core",
                   "CPU ms/sample: CPU time per sample trained (whole fit); migrations, wait ms: of the lone unpinned "
                   "fit; steal: the hypervisor's, both vCPUs"])


def table_summary(result: dict[str, Any]) -> pd.DataFrame:
    """Each figure's median and range over the rounds, the thread pools, and the cold fit against warm ones."""
    from dtutor.tables import titled

    found = summary(result)
    rows = [{"measure": LABELS[key], "median": round(value["median"], 3),
             "range over rounds": f"{value['min']:.3f} to {value['max']:.3f}"}
            for key, value in found["spreads"].items()]
    if found["cold_over_warm"]:
        rows.append({"measure": "first fit of a process / warm fits alone",
                     "median": round(found["cold_over_warm"], 3), "range over rounds": "one cold fit"})
    threads = ", ".join(f"{k} {v}" for k, v in found["threads"].items())
    return titled(rows, f"Over {result['rounds']} rounds ({threads})")


WAIT_SHARE_NOTICED = 0.05  # a pair that waited longer than this for a core shared the machine with others
CORE_SPEED_NOTICED = 0.05  # core 1 / core 0 further than this from 1 in some round: the vCPUs ran at other speeds


def _spans_more_than(spread: dict[str, float], margin: float) -> bool:
    return spread["min"] < 1 - margin or spread["max"] > 1 + margin


def findings(result: dict[str, Any]) -> list[str]:
    """What the measurement says, in sentences computed from it (each figure a median with its range)."""
    found = summary(result)
    spreads = found["spreads"]

    def figure(key: str, form: str = ".2f") -> str:
        value = spreads[key]
        return f"{value['median']:{form}} ({value['min']:{form}} to {value['max']:{form}})"

    lines = [f"The ceiling by the wall clock over {result['rounds']} rounds: {figure('ceiling')} unpinned, "
             f"{figure('ceiling_pinned')} with each process pinned to a core of its own.",
             f"By CPU time (samples per CPU-second, pinned): {figure('ceiling_cpu')}"
             + (": above 1, the same samples took more CPU time alone, so the vCPU itself ran slower, below what "
                "this system can see." if spreads["ceiling_cpu"]["median"] > 1 else "."),
             f"Side by side, the processes spent {figure('wait_share_pair', '.0%')} of their wall time runnable "
             "but without a core" + (": other processes on this machine had it." if
                                     spreads["wait_share_pair"]["max"] > WAIT_SHARE_NOTICED else "."),
             f"Alone, core 1 ran the same work at {figure('core1_over_core0')} of core 0's speed"
             + (": the two vCPUs differ, and change from round to round." if _spans_more_than(
                 spreads["core1_over_core0"], CORE_SPEED_NOTICED) else "."),
             f"A lone process moved between cores at most {spreads['migrations_alone']['max']:.0f} time(s) per "
             f"fit, every process had {found['threads']['intra_op_threads']} intra-op thread "
             f"(OMP_NUM_THREADS={found['threads']['OMP_NUM_THREADS']}), and the hypervisor reported at most "
             f"{spreads['steal_s']['max']:.2f} s stolen per round."]
    if found["cold_over_warm"]:
        lines.append(f"A process's first fit ran at {found['cold_over_warm']:.2f} of its warm fits' rate (the driver "
                     "already leaves each fit's first epoch out of its rate).")
    return lines
