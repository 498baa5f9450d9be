"""``python -m dtutor.bench all``: every strategy in the registry on the same model and data, 1 and 2 workers.

The rows come from ``dtutor.strategies.STRATEGIES`` (DeepSpeed once per ZeRO stage), never from a list
written here. Each row is trained at 1 and 2 workers with the same batch per worker, through its own
launcher; runs that share a launcher and a worker count share one launch (``runner.run_cases`` trains them in
turn in the same processes; MultiWorkerMirroredStrategy's get one launch each), which keeps a quick run to a
few launches. Those runs are timed and nothing else (no counting slows them). Each row also gets a short
**proof run** (``proof_fields``: its tests' set-up, 4 steps of 64 samples, with 2 workers where it can): its
parameters are compared with the reference within the tests' tolerance (longer runs drift apart by float
rounding), and in its last 2 steps the bytes it sends and the model state it holds are counted. References:
``single`` and its TensorFlow twin with the proof set-up, and the **ceiling**: ``single`` on each of 2 ranks
at once, which never communicate: what 2 workers can reach on this machine with no communication at all.

``repeats`` rounds run every launch again, in a rotated order (launches and the cases inside them), so a
busy moment of a shared machine falls on every strategy alike; rates are medians over rounds and the
efficiency is the median of each round's T2 / (2 T1). ``rows.build_rows`` turns the runs into the table.
"""

from __future__ import annotations

import importlib.util
import os
import time
from dataclasses import dataclass, field
from typing import Any

from dtutor.bench.machine import machine
from dtutor.config import gpu_count
from dtutor.launch.commands import environment
from dtutor.strategies import STRATEGIES


@dataclass(frozen=True)
class Mode:
    """How much each run trains: ``steps`` per epoch, the first epoch a warm-up; ``repeats`` rounds.

    A 2-worker epoch uses ``2 x batch_per_worker x steps`` samples: at most 1,500 where MNIST is not
    downloaded (the offline fallback's training images).
    """

    batch_per_worker: int
    steps: int
    epochs: int
    repeats: int
    micro_batches: int = 4
    timeout: float = 900.0


MODES = {"quick": Mode(64, 4, 3, 1), "full": Mode(256, 2, 10, 3), "tiny": Mode(8, 2, 2, 1, timeout=600.0)}


@dataclass(frozen=True)
class Row:
    """One row of the table: a registry entry (with its extra fields: DeepSpeed's ZeRO stage)."""

    key: str
    strategy: str
    label: str
    framework: str
    launcher: str
    parallelism: str  # the layout's kind: "data", "pipeline", "tensor" (a 2-D grid: "data x tensor")
    extra: dict[str, Any] = field(default_factory=dict)


def registry_rows() -> list[Row]:
    """One row per registered strategy, in registry order; DeepSpeed once per ZeRO stage (1-3)."""
    rows = []
    for name, info in STRATEGIES.items():
        variants = [(f"{name}_zero{s}", f"deepspeed ZeRO-{s}", {"zero_stage": s}) for s in (1, 2, 3)] \
            if name == "deepspeed" else [(name, name, {})]
        rows += [Row(key, name, label, info.framework, info.launcher, info.layout.kind, extra)
                 for key, label, extra in variants]
    return rows


def unavailable(row: Row, workers: int, gpus: int) -> str | None:
    """Why ``row`` cannot run with ``workers`` workers on this machine (None: it can)."""
    from dtutor.devices import horovod_frameworks

    if row.framework == "tensorflow" and importlib.util.find_spec("tensorflow") is None:
        return "TensorFlow is not installed"
    if row.strategy == "deepspeed" and importlib.util.find_spec("deepspeed") is None:
        return "DeepSpeed is not installed"
    if row.launcher == "horovodrun" and row.framework not in (horovod_frameworks() or []):
        return f"Horovod built for {row.framework} is not installed"
    if " x " in row.parallelism:
        return f"a 2-D grid ({row.parallelism}) needs 4 workers; its test trains it on 4"
    if row.strategy == "single" and workers > 1:
        return "one device by definition (the ceiling row runs 2 of it at once)"
    if row.strategy == "dataparallel" and workers > 1 and gpus < workers:
        return f"nn.DataParallel splits a batch over GPUs in one process; {gpus} GPU(s) here"
    return None


def run_fields(row: Row, workers: int, mode: Mode) -> dict[str, Any]:
    """The ``TrainConfig`` fields of ``row`` at ``workers`` workers: the same batch per worker everywhere."""
    batch = mode.batch_per_worker * workers
    fields = {"strategy": row.strategy, "global_batch": batch, "samples": batch * mode.steps,
              "epochs": mode.epochs, "test_samples": 0, **row.extra}
    if row.parallelism == "pipeline":
        fields["micro_batches"] = mode.micro_batches
    return fields


TWO_GPUS = "one process, 2 GPUs"  # DataParallel at 2 workers: its own launch, which sees GPUs 0 and 1


PROOF = {"global_batch": 64, "samples": 256, "epochs": 1, "test_samples": 0}  # the tests' set-up: 4 steps
PROOF_MICRO_BATCHES = 4


def proof_fields(row: Row) -> dict[str, Any]:
    """The fields of ``row``'s proof run: the strategy tests' set-up (4 steps of 64 samples), where the
    parameters are compared with the reference within the tests' tolerances, and bytes and model state are
    counted (in the last 2 steps)."""
    fields = {"strategy": row.strategy, **PROOF, **row.extra}
    if row.parallelism == "pipeline":
        fields["micro_batches"] = PROOF_MICRO_BATCHES
    return fields


def launch_key(row: Row, workers: int) -> tuple[str, int]:
    """Which launch a run goes to: (launcher, processes). PyTorch's in-process strategies ride in torchrun's
    1-process launch (which sees one GPU), except DataParallel on 2 GPUs; TensorFlow's in-process one gets a
    process of its own, whatever its replicas."""
    if row.strategy == "dataparallel" and workers > 1:
        return TWO_GPUS, 1
    if row.framework == "torch" and row.launcher in ("torchrun", "inprocess"):
        return "torchrun", 1 if row.launcher == "inprocess" else workers
    if row.launcher == "inprocess":
        return "tf_process", 1
    return f"{row.launcher}:{row.framework}", workers


def plan(mode: Mode, rows: list[Row] | None = None, gpus: int | None = None) -> dict[str, Any]:
    """The launches of one round and the runs inside them, with what cannot run and why (no process starts).

    Every run's fields are checked here (``dtutor.launch.training.prepare``): bad input is refused before
    anything starts.
    """
    from dtutor.launch.training import prepare

    rows = registry_rows() if rows is None else rows
    gpus = gpu_count() if gpus is None else gpus
    launches: dict[tuple[str, int], list[dict[str, Any]]] = {}
    skipped: dict[str, dict[int, str]] = {}
    by_key = {row.key: row for row in rows}

    def add(name: str, row: Row, workers: int, fields: dict[str, Any], probe: bool = False) -> None:
        in_process = STRATEGIES[fields["strategy"]].launcher == "inprocess"
        tf_replicas = row.framework == "tensorflow" and in_process
        config = prepare((workers if tf_replicas else 1) if in_process else workers, 1, fields)
        case = {"name": name, "row": row.key, "workers": workers, "global_batch": config.global_batch,
                "fields": config.as_arguments()}
        if tf_replicas:
            case["replicas"] = workers
        if probe:
            case["probe"] = True
        launches.setdefault(launch_key(row, workers), []).append(case)

    for row in rows:
        for workers in (1, 2):
            reason = unavailable(row, workers, gpus)
            if reason:
                skipped.setdefault(row.key, {})[workers] = reason
            else:
                add(f"{row.key}@{workers}", row, workers, run_fields(row, workers, mode))
        most = max((w for w in (1, 2) if w not in skipped.get(row.key, {})), default=None)
        if most and row.strategy != "single":  # single's proof run is the reference below
            add(f"proof:{row.key}", row, most, proof_fields(row), probe=True)
    if "single" in by_key and 1 not in skipped.get("single", {}):
        single = by_key["single"]
        add("proof:reference", single, 1, proof_fields(single), probe=True)
        ceiling = Row("ceiling", "single", "ceiling", "torch", "torchrun", "data")
        add("ceiling", ceiling, 2, run_fields(single, 1, mode))
    if any(r.framework == "tensorflow" and 1 not in skipped.get(r.key, {}) for r in rows):
        mirrored = Row("tf_reference", "mirrored", "TensorFlow, one replica", "tensorflow", "inprocess", "data")
        add("proof:tf_reference", mirrored, 1, proof_fields(mirrored), probe=True)
    return {"launches": launches, "skipped": skipped, "rows": rows}


def start(key: tuple[str, int], cases: list[dict[str, Any]], timeout: float) -> list[list[dict[str, Any]]]:
    """One launch: its cases in turn in the same processes; every rank's measurements, in rank order."""
    from dtutor import launch
    from dtutor.launch.commands import TF_WORKER_ENV

    launcher, nprocs = key
    options = {"timeout": timeout, "quiet": True, "threads_per_rank": 1}
    if launcher in ("torchrun", TWO_GPUS):
        visible = {"CUDA_VISIBLE_DEVICES": "0,1" if launcher == TWO_GPUS else "0"} if gpu_count() else {}
        with environment(**visible):  # 1 worker: 1 GPU, whatever the strategy
            return launch.run("dtutor.bench.runner:run_cases", nprocs, cases=cases, **options)
    if launcher.startswith("horovodrun"):
        framework = launcher.partition(":")[2]
        entry = "dtutor.bench.runner:run_cases" if framework == "torch" else "dtutor.bench.tf_runner:run_tf_cases"
        return launch.run_horovod(entry, nprocs, framework=framework, cases=cases, **options)
    if launcher.startswith("tf_workers"):
        # one launch per case: a second MultiWorkerMirroredStrategy in a process raced the first's teardown
        each = [launch.run_tf_workers("dtutor.bench.tf_runner:run_tf_cases", nprocs, cases=[case], **options)
                for case in cases]
        return [[ranks[rank][0] for ranks in each] for rank in range(nprocs)]
    return [launch.run_single("dtutor.bench.tf_runner:run_tf_cases", cases=cases, env=dict(TF_WORKER_ENV),
                              threads=1, timeout=timeout)]


def rotated(items: list, by: int) -> list:
    """``items`` rotated left by ``by`` places (round r starts at the r-th)."""
    by %= len(items) or 1
    return items[by:] + items[:by]


def run_rounds(mode: Mode, planned: dict[str, Any], progress: Any = print) -> list[dict[str, Any]]:
    """Every launch of the plan, ``mode.repeats`` times in rotated orders; one record per run and round."""
    records = []
    keys = list(planned["launches"])
    for round_ in range(mode.repeats):
        for key in rotated(keys, round_):
            cases = rotated(planned["launches"][key], round_)
            started = time.monotonic()
            try:
                ranks = start(key, cases, mode.timeout)
                failure = None
            except Exception as error:  # noqa: BLE001 - a failed launch is a row's result, not the end
                ranks, failure = [], f"{type(error).__name__}: {str(error).splitlines()[0][:300]}"
            progress(f"round {round_ + 1}/{mode.repeats}: {key[0]} x{key[1]} ({len(cases)} runs) "
                     f"{time.monotonic() - started:.0f} s" + (f" FAILED {failure}" if failure else ""))
            for index, case in enumerate(cases):
                per_rank = [rank[index] for rank in ranks] if ranks else [{"name": case["name"], "error": failure}]
                records.append({"round": round_, "case": case, "ranks": per_rank})
    return records


def dataparallel_memory(gpus: int, timeout: float) -> list[int] | None:
    """Notebook 01's measurement, where there are 2 GPUs or more: DataParallel's peak memory on each GPU
    (``dataparallel_lessons.peak_memory_per_gpu``, in a fresh process); None otherwise."""
    if gpus < 2:
        return None
    from dtutor import launch

    return launch.run_single("dtutor.pytorch.dataparallel_lessons:peak_memory_per_gpu", timeout=timeout)


def strip(records: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """The records without the parameters (for JSON: they are only needed for the proofs)."""
    return [{**record, "ranks": [{k: v for k, v in rank.items() if k != "parameters"} for rank in record["ranks"]]}
            for record in records]


def bench_all(mode: str = "quick", progress: Any = print, rows: list[Row] | None = None) -> dict[str, Any]:
    """Run the whole table (see the module docstring); a JSON-ready result that ``report`` formats."""
    from dtutor.bench.rows import build_rows

    if mode not in MODES:
        raise ValueError(f"mode: must be one of {', '.join(MODES)}, got {mode!r}")
    settings = MODES[mode]
    where = machine()
    planned = plan(settings, rows)
    started = time.monotonic()
    records = run_rounds(settings, planned, progress)
    where["load_after"] = os.getloadavg()[0]
    table = build_rows(planned, records)
    table["dataparallel_memory"] = dataparallel_memory(len(where["gpus"]), settings.timeout)
    return {"mode": mode, "batch_per_worker": settings.batch_per_worker, "steps": settings.steps, "proof_setup": PROOF,
            "epochs": settings.epochs, "repeats": settings.repeats, "seconds": time.monotonic() - started,
            "machine": where, **table, "records": strip(records)}
