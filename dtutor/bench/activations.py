"""``python -m dtutor.bench activations``: activation memory against its formula, and what checkpointing costs.

The bytes and the FLOPs are exact counts (``dtutor.pytorch.activation_memory``); only the wall time of a training
step with every transformer layer checkpointed, over the same step without, is a measurement: it is reported
per round, as a median with its spread (min-max over rounds), beside the FLOP ratio it should approach.

    python -m dtutor.bench activations                # batch 32, 5 rounds
    python -m dtutor.bench activations --mode quick   # batch 8, 3 rounds (the notebook's and the test's sizes)
"""

from __future__ import annotations

import statistics
import time
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    import pandas as pd

MB = 1e6


def table_activations(rows: list[dict[str, Any]]) -> pd.DataFrame:
    """One row per model: bytes saved for backward (hooks), alive after forward, the formula, measured / formula."""
    from dtutor.tables import titled

    return titled([{"model": row["model"], "saved for backward MB": round(row["saved"] / MB, 3),
                    "alive after forward MB": round(row["alive"] / MB, 3), "formula MB": round(row["formula"] / MB, 3),
                    "saved / formula": round(row["ratio"], 4)} for row in rows],
                  title="Activation memory of one micro-batch, fp32",
                  notes=["saved: unique storages packed by saved_tensors_hooks, parameters left out; alive: storages "
                         "created in forward and alive at its end",
                         "CNN and MLP: their forward and loss, counted by hand; transformer: its layers only, "
                         "formula s·b·h·(16p + 2) + a·s²·b·(2p + 1), p = 4 bytes"])


def table_recomputation(result: dict[str, Any]) -> pd.DataFrame:
    """Plain against checkpointed: bytes saved for backward, FLOPs of a training step, and the difference."""
    from dtutor.tables import titled

    plain, checkpointed = result["plain"], result["checkpointed"]
    shape = result["shape"]
    rows = [{"run": name, "saved for backward MB": round(run["saved"] / MB, 3),
             "step GFLOP": round(run["step_flops"] / 1e9, 4), "forward GFLOP": round(run["forward_flops"] / 1e9, 4)}
            for name, run in (("plain", plain), ("every layer checkpointed", checkpointed))]
    extra = checkpointed["step_flops"] - plain["step_flops"]
    notes = [f"checkpointing keeps {checkpointed['saved'] / plain['saved']:.1%} of the bytes; the step runs "
             f"{extra:,} more FLOPs = one more forward of the layers ({result['layers_forward_flops']:,}): "
             f"x{checkpointed['step_flops'] / plain['step_flops']:.3f}",
             f"tiny transformer: batch {shape['batch']}, seq {shape['seq']}, hidden {shape['hidden']}, "
             f"{shape['heads']} heads, {shape['layers']} layers; FLOPs from FlopCounterMode (matrix products)"]
    if "time_ratios" in result:
        ratios = result["time_ratios"]
        notes.append(f"wall time, checkpointed / plain, per round: median {statistics.median(ratios):.3f}, "
                     f"min {min(ratios):.3f}, max {max(ratios):.3f} ({len(ratios)} rounds)")
    return titled(rows, title="Activation checkpointing: memory saved, compute added", notes=notes)


def time_ratios(batch: int, rounds: int, steps: int = 3) -> list[float]:
    """Per round, the median time of ``steps`` checkpointed training steps over that of ``steps`` plain ones
    (the two alternate within a round, after one warm-up step each)."""
    import torch
    import torch.nn.functional as F

    from dtutor.pytorch.activation_memory import TinyTransformer

    model = TinyTransformer()
    tokens = torch.randint(0, 256, (batch, 64))

    def step_time(checkpointing: bool) -> float:
        model.checkpointing = checkpointing
        start = time.perf_counter()
        F.cross_entropy(model(tokens).flatten(0, 1), tokens.flatten()).backward()
        return time.perf_counter() - start

    step_time(False), step_time(True)
    ratios = []
    for _ in range(rounds):
        times = {flag: [] for flag in (False, True)}
        for _ in range(steps):
            for flag in (False, True):
                times[flag].append(step_time(flag))
        ratios.append(statistics.median(times[True]) / statistics.median(times[False]))
    return ratios


def bench_activations(quick: bool = False) -> dict[str, Any]:
    """The memory rows, the recomputation counts and the measured wall-time ratios (``quick``: smaller, fewer)."""
    from dtutor.pytorch import activation_memory

    batch, rounds = (8, 3) if quick else (32, 5)
    result = activation_memory.recomputation(batch=batch)
    result["time_ratios"] = time_ratios(batch, rounds)
    return {"models": activation_memory.measure_models(batch=batch), "recomputation": result}
