"""The pipeline benchmark (``python -m dtutor.bench pipeline``): the schedules on stages of fixed durations
against theory, then with real compute, and the memory and speed of the CNN's splits.

Target: on stages of fixed durations (``model_parallel.fixed_time``), every schedule's idle fraction within 3%
(relative) of (p - 1) / (m + p - 1), its communication reported beside it.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    import pandas as pd

FIXED_TIME_TARGET = 0.03  # fixed-time stages: the schedule's idle fraction within 3% (relative) of (p-1)/(m+p-1)


def bench_pipeline(repeats: int = 10, speed: bool = True, fixed_repeats: int = 3) -> dict[str, Any]:
    """The schedules free of compute noise first (``fixed_time.measure_fixed_time``: GPipe and 1F1B by hand and the
    library's, p = 2 and 4 stages of fixed durations, m = 1, 2, 4, 8, the fastest of ``fixed_repeats`` steps; about
    70 s); then with real compute (``bubble.measure_bubble``: p = 2 balanced stages, ``repeats`` steps), the
    memory (and with ``speed`` samples/s) of the CNN's splits, and the machine (``machine.machine``)."""
    from dtutor.bench.machine import machine
    from dtutor.pytorch.model_parallel import bubble, fixed_time, memory_and_speed

    where, kept = machine(), lambda row: {k: v for k, v in row.items() if k not in ("events", "result")}
    fixed = [kept(row) for p in (2, 4) for row in fixed_time.measure_fixed_time(p, repeats=fixed_repeats)]
    return {"fixed_time": fixed, "bubble": [kept(row) for row in bubble.measure_bubble(2, repeats=repeats)],
            "memory": memory_and_speed.measured_table("cnn", speed=speed), "machine": where}


def table_pipeline(result: dict[str, Any], verdict: bool = False) -> tuple[pd.DataFrame, ...]:
    """The tables of ``python -m dtutor.bench pipeline``: the fixed-time bubble (``verdict``: the benchmark's
    target column, ``FIXED_TIME_TARGET``), the bubble with real compute, the memory and speed of the CNN's splits."""
    from dtutor.pytorch.model_parallel import bubble, fixed_time, memory_and_speed

    fixed = fixed_time.table_fixed_time(result["fixed_time"], FIXED_TIME_TARGET if verdict else None)
    return fixed, bubble.table_bubble(result["bubble"]), memory_and_speed.table_memory(result["memory"])
