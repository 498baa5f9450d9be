"""Reading ``python -m dtutor.bench gpu``'s files back: the newest ``results/gpu/*.json`` and its tables.

    from dtutor.bench import gpu_report
    recorded = gpu_report.newest()          # None while no GPU run is recorded
    if recorded:
        show(*gpu_report.tables(recorded))  # device and versions, parts, training rows, models (MFU), all-reduce
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import TYPE_CHECKING, Any

from dtutor.bench.report import RESULTS

if TYPE_CHECKING:
    import pandas as pd

MIB = 1024 * 1024


def recorded(folder: str | Path | None = None) -> list[dict[str, Any]]:
    """Every ``bench gpu`` result under ``folder`` (default ``results/gpu/``), oldest first by its date, then by
    file name; each with its ``file`` (other JSON there, such as a ``bench all`` result, is left out)."""
    found = []
    for path in sorted(Path(folder or RESULTS / "gpu").glob("*.json")):
        data = json.loads(path.read_text())
        if isinstance(data, dict) and data.get("kind") == "bench gpu":
            found.append({**data, "file": f"{path.parent.name}/{path.name}"})
    return sorted(found, key=lambda data: data["date"])


def newest(folder: str | Path | None = None) -> dict[str, Any] | None:
    """The newest ``bench gpu`` result under ``folder`` (default ``results/gpu/``), None when there is none."""
    found = recorded(folder)
    return found[-1] if found else None



def _rows(result: dict[str, Any], kind: str) -> list[dict[str, Any]]:
    """The rows of every part of ``kind`` that ran ("ok")."""
    return [row for part in result["parts"].values() if part["kind"] == kind and part["status"] == "ok"
            for row in part["result"].get("rows", [])]


def table_device(result: dict[str, Any]) -> pd.DataFrame:
    """One row per GPU: its name, memory and compute capability; the title names the versions and the date."""
    from dtutor.tables import titled

    facts = (result["parts"].get("inventory") or {}).get("result") or {}
    rows = [{"GPU": gpu["index"], "name": gpu["name"], "memory GiB": round(gpu["memory_bytes"] / 2**30, 1),
             "capability": gpu["capability"]} for gpu in facts.get("gpus", [])]
    versions = ", ".join(f"{name} {value}" for name, value in result["versions"].items() if value)
    peak = result["peak"]
    notes = [f"dense bf16 peak {peak['bf16_tflops']:g} TFLOP/s ({peak['gpu']}, {peak['source']})"] if peak else \
        ["no dense bf16 peak known for this GPU (gpu_parts.PEAKS): no MFU"]
    return titled(rows, f"{result.get('file', 'bench gpu')}: {result['device']}, {result['date']}; {versions}", notes)


def table_parts(result: dict[str, Any]) -> pd.DataFrame:
    """Each part: what it measures, its status, its time against its budget and timeout, its error if it failed."""
    from dtutor.tables import titled

    rows = [{"part": name, "measures": part["summary"], "status": part["status"],
             "seconds": None if part["seconds"] is None else round(part["seconds"]), "budget s": part["budget_s"],
             "timeout s": part["timeout_s"],
             "error": (part["error"] or "").splitlines()[0][:60] if part["error"] else ""}
            for name, part in result["parts"].items()]
    total = "-" if result["seconds"] is None else f"{result['seconds']:.0f} s"
    return titled(rows, f"parts: {total} in all, budgets {result['budget_s']:.0f} s of {result['window_s']:.0f} s")


def table_training(result: dict[str, Any]) -> pd.DataFrame:
    """Every training row: strategy and its fields, ranks, samples/s, time per step, memory."""
    from dtutor.tables import milliseconds, titled, whole

    shown = {"zero_stage": 0, "offload": False, "precision": "fp32"}  # the fields that tell the rows apart, by default
    rows = [{"part": row["part"], "strategy": row["strategy"],
             "fields": " ".join(f"{k}={row['fields'][k]}" for k, default in shown.items()
                               if row["fields"].get(k, default) != default), "ranks": row["ranks"],
             "samples/s": whole(row["samples_per_s"]), "step ms": milliseconds(row["step_s"], 3),
             "peak MiB": None if row["peak_memory_bytes"] is None else round(row["peak_memory_bytes"] / MIB)}
            for kind in ("in_process", "train_many") for row in _rows(result, kind)]
    return titled(rows, "training (the course's CNN, the driver): after a warm-up epoch; peak: CUDA max allocated",
                  integers=["samples/s", "peak MiB"])


def table_models(result: dict[str, Any]) -> pd.DataFrame:
    """The CNN and the small transformer in fp32 and bf16 autocast: time per step, counted FLOPs, TFLOP/s, MFU."""
    from dtutor.tables import milliseconds, titled

    rows = [{"model": row["model"], "precision": row["precision"], "parameters": row["parameters"],
             "step ms": milliseconds(row["step_s"], 3), "GFLOP/step": round(row["flops_per_step"] / 1e9, 2),
             "TFLOP/s": round(row["tflops"], 3), "MFU": None if row["mfu"] is None else round(row["mfu"], 3)}
            for row in _rows(result, "models")]
    return titled(rows, "one training step (AdamW): FLOPs counted by FlopCounterMode; MFU = FLOP/s / dense bf16 peak",
                  integers=["parameters"])


def table_allreduce(result: dict[str, Any]) -> pd.DataFrame:
    """The all-reduce sweeps (NCCL): size, ranks, time per call, algbw and busbw."""
    from dtutor.tables import titled

    rows = [{"ranks": row["ranks"], "KiB": row["bytes"] // 1024, "time us": round(row["seconds"] * 1e6, 1),
             "algbw GB/s": round(row["algbw"] / 1e9, 2), "busbw GB/s": round(row["busbw"] / 1e9, 2)}
            for row in _rows(result, "allreduce")]
    return titled(rows, "all-reduce, float32 (busbw = algbw x 2(n-1)/n: 0 on 1 rank)")


def tables(result: dict[str, Any]) -> list[pd.DataFrame]:
    """Every table of one result, in order: device, parts, training, models, all-reduce (a table with no rows,
    from a part that did not run, is left out)."""
    found = [table_device(result), table_parts(result), table_training(result), table_models(result),
             table_allreduce(result)]
    return [found[1]] if result.get("dry_run") else [frame for frame in found if len(frame)]
