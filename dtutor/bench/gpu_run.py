"""The real run of ``python -m dtutor.bench gpu`` (``gpu.run``): each part of the plan in its own launch or fresh
process, with its timeout, inside the 8-minute window; a failed part is recorded with its error and the run goes on.

Parts that use one GPU see only GPU 0 (``CUDA_VISIBLE_DEVICES=0``), so DataParallel there is the 1-GPU case;
DataParallel's per-GPU memory and the 2-rank parts see every GPU.
"""

from __future__ import annotations

import contextlib
import importlib.util
import time
from collections.abc import Callable
from typing import Any

from dtutor.bench.gpu import WINDOW_S, Part
from dtutor.launch.commands import environment


def _inventory(part: Part, timeout: float) -> dict[str, Any]:
    from dtutor import launch

    return launch.run_single("dtutor.bench.gpu_parts:device_facts", timeout=timeout)


def _in_process(part: Part, timeout: float) -> dict[str, Any]:
    from dtutor import launch

    return {"rows": launch.run_single("dtutor.bench.gpu_parts:train_in_process", timeout=timeout, runs=part.runs)}


def _train_many(part: Part, timeout: float) -> dict[str, Any]:
    from dtutor import launch
    from dtutor.bench.gpu_parts import summarize

    per_run = launch.train_many(part.nprocs, part.runs, timeout=timeout, quiet=True)
    return {"rows": [summarize(ranks[0]) for ranks in per_run]}  # rank 0's: times are the slowest rank's


def _models(part: Part, timeout: float) -> dict[str, Any]:
    from dtutor import launch

    return launch.run_single("dtutor.bench.gpu_parts:measure_models", timeout=timeout, **part.options)


def _allreduce(part: Part, timeout: float) -> dict[str, Any]:
    from dtutor import launch
    from dtutor.bench.allreduce import summary

    rows = launch.run("dtutor.bench.allreduce:measure", part.nprocs, backend="nccl", timeout=timeout, quiet=True,
                      threads_per_rank=1, **part.options)[0]
    # 1 rank: busbw = algbw x 2(n-1)/n = 0, so no bandwidth summary; the time is NCCL's fixed cost per call
    return {"rows": rows, "ranks": part.nprocs, **(summary(rows) if part.nprocs > 1 else {})}


def _dataparallel_memory(part: Part, timeout: float) -> dict[str, Any]:
    from dtutor import launch

    peaks = launch.run_single("dtutor.pytorch.dataparallel_lessons:peak_memory_per_gpu", timeout=timeout)
    return {"peak_bytes_per_gpu": peaks}


RUNNERS: dict[str, Callable[[Part, float], dict[str, Any]]] = {
    "inventory": _inventory, "in_process": _in_process, "train_many": _train_many, "models": _models,
    "allreduce": _allreduce, "dataparallel_memory": _dataparallel_memory}


def run_part(part: Part, timeout: float) -> dict[str, Any]:
    """Run one part (its runner, GPU 0 only unless it needs more) within ``timeout`` seconds; its result."""
    visible = {} if part.min_gpus > 1 else {"CUDA_VISIBLE_DEVICES": "0"}
    with environment(**visible) if visible else contextlib.nullcontext():
        return RUNNERS[part.kind](part, timeout)


def _name_rows(name: str, outcome: dict[str, Any]) -> None:
    """Each row of ``outcome`` gets its part's name."""
    for row in outcome.get("rows") or []:
        row["part"] = name


def _record_device(result: dict[str, Any], facts: dict[str, Any]) -> None:
    result["device"] = facts["gpus"][0]["name"] if facts.get("gpus") else None
    result["versions"], result["peak"] = facts.get("versions", {}), facts.get("peak")


def why_skipped(part: Part, gpus: int, left: float) -> str | None:
    """Why ``part`` does not start (None: it does): too few GPUs, a package missing, or too little of the window."""
    missing = [name for name in part.requires if importlib.util.find_spec(name) is None]
    if part.min_gpus > gpus:
        return f"needs {part.min_gpus} GPUs, {gpus} here"
    if missing:
        return f"{', '.join(missing)} not installed"
    if left < part.budget_s:
        return f"{left:.0f} s left of the {WINDOW_S:.0f} s window, budget {part.budget_s:.0f} s"
    return None


def run_parts(result: dict[str, Any], parts: list[Part], gpus: int, progress: Callable[[str], Any] = print
              ) -> dict[str, Any]:
    """Fill ``result`` (``gpu.skeleton``) by running ``parts`` in order on ``gpus`` GPUs: a part starts only if its
    budget fits in what is left of ``WINDOW_S`` (else "skipped"), with its timeout cut to that; "ok" or "failed"."""
    started = time.monotonic()
    facts = None
    for part in parts:
        record = result["parts"][part.name]
        left = WINDOW_S - (time.monotonic() - started)
        reason = why_skipped(part, gpus, left)
        if reason:
            record["status"], record["error"] = "skipped", reason
            progress(f"{part.name}: skipped, {record['error']}")
            continue
        begin = time.monotonic()
        try:
            outcome = run_part(part, min(part.timeout_s, left))
            record["status"], record["result"] = "ok", outcome
        except Exception as error:  # noqa: BLE001 - a failed part is a result; the others go on
            record["status"], record["error"] = "failed", f"{type(error).__name__}: {str(error)[:3000]}"
        record["seconds"] = time.monotonic() - begin
        if part.kind == "inventory" and record["status"] == "ok":
            facts = outcome
            _record_device(result, facts)
        if record["status"] == "ok":
            _name_rows(part.name, outcome)
        if part.kind == "dataparallel_memory" and record["status"] == "ok":
            result["dataparallel_memory"] = outcome["peak_bytes_per_gpu"]
        failure = f": {record['error'].splitlines()[0][:100]}" if record["error"] else ""
        progress(f"{part.name}: {record['status']} in {record['seconds']:.0f} s (budget {part.budget_s:.0f} s)"
                 f"{failure}")
    if result["device"] is None and result["machine"]["gpus"]:
        result["device"] = result["machine"]["gpus"][0]
    result["seconds"] = time.monotonic() - started
    return result
