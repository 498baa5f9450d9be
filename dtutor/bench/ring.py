"""Ring all-reduce by hand against gloo's own, 4 KiB to 64 MiB: the time of each and the α-β model fitted to each.

On N ranks a ring all-reduce of S bytes takes 2(N-1) steps, each paying a latency α, and every rank sends
2(N-1)/N x S bytes at a bandwidth β::

    t = 2(N-1)·α + 2(N-1)/N · S/β

``fit_alpha_beta`` fits α and β to the measured times by least squares on the relative error (every size weighs
the same, so the small messages pin α and the large ones β). gloo's own all-reduce chooses its algorithm by size
and runs in C++, so its fit says what the same model makes of it. The timing is ``bench.allreduce``'s (the
slowest rank, median of loops, after untimed warm-ups); quick mode stops at ``QUICK_LARGEST`` with shorter loops.
Launch recipe (what ``bench_ring`` starts)::

    torchrun --standalone --nproc-per-node=4 -m dtutor.launch dtutor.bench.ring:measure
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from dtutor.bench.allreduce import MIB, SIZES, WARMUP, time_collective
from dtutor.bench.theory import BYTES_FP32

if TYPE_CHECKING:
    import pandas as pd

QUICK_LARGEST = 1 * MIB  # quick mode: 4 KiB to 1 MiB
IMPLEMENTATIONS = ("ring_all_reduce", "dist.all_reduce")  # by hand (dtutor.pytorch.ring), gloo's own


def _operations() -> dict[str, Any]:
    import torch.distributed as dist

    from dtutor.pytorch.ring import ring_all_reduce

    return {"ring_all_reduce": ring_all_reduce, "dist.all_reduce": dist.all_reduce}


def measure(sizes: list[int] | None = None, budget: float = 0.3, loops: int = 3, backend: str = "auto",
            max_iterations: int = 100) -> list[dict[str, Any]]:
    """Entry point (every rank): per size, the seconds per call of each implementation on the same float32 zeros
    (sums of zeros stay zeros, however many times they run), both timed the way ``bench.allreduce`` times."""
    import torch
    import torch.distributed as dist

    from dtutor.pytorch.process_group import join_process_group, leave_process_group

    rank, world, device = join_process_group(backend)

    def synchronize() -> None:
        if device.type == "cuda":
            torch.cuda.synchronize(device)

    try:
        operations = _operations()
        tensors = [torch.zeros(max(1, size // BYTES_FP32), dtype=torch.float32, device=device)
                   for size in sizes or SIZES]
        for tensor in tensors:  # connections, buffers, first-touch pages: paid here, never timed
            for operation in operations.values():
                for _ in range(WARMUP):
                    operation(tensor)
        rows = []
        for tensor in tensors:
            row = {"bytes": tensor.numel() * BYTES_FP32, "ranks": world, "backend": dist.get_backend()}
            for name, operation in operations.items():
                row[name] = time_collective(tensor, synchronize, budget, loops, max_iterations, operation)[0]
            rows.append(row)
        return rows
    finally:
        leave_process_group()


def model_seconds(alpha: float, beta: float, size: float, ranks: int) -> float:
    """The α-β model's time of a ring all-reduce: 2(N-1)·α + 2(N-1)/N · S/β."""
    return 2 * (ranks - 1) * alpha + 2 * (ranks - 1) / ranks * size / beta


def fit_alpha_beta(sizes: list[float], seconds: list[float], ranks: int) -> dict[str, float]:
    """α (seconds per step) and β (bytes per second) that fit ``seconds`` at ``sizes`` best, by least squares on
    the relative error; and the largest relative error left. β is infinite when the times do not grow with S."""
    import numpy as np

    steps, wire = 2 * (ranks - 1), 2 * (ranks - 1) / ranks
    times = np.asarray(seconds, dtype=float)
    design = np.column_stack([np.full(len(times), steps), wire * np.asarray(sizes, dtype=float)]) / times[:, None]
    (alpha, inverse_beta), *_ = np.linalg.lstsq(design, np.ones(len(times)), rcond=None)
    beta = 1 / inverse_beta if inverse_beta > 0 else float("inf")
    fitted = np.array([model_seconds(alpha, beta, size, ranks) for size in sizes])
    return {"alpha_s": float(alpha), "beta_bytes_per_s": float(beta),
            "worst_relative_error": float(np.max(np.abs(fitted / times - 1)))}


def bench_ring(nprocs: int = 4, quick: bool = True, sizes: list[int] | None = None,
               timeout: float = 600.0) -> dict[str, Any]:
    """Measure both implementations on ``nprocs`` ranks (one thread each) and fit the α-β model to each; quick:
    up to ``QUICK_LARGEST``, about 0.05 s per size and loop (else 0.3 s)."""
    from dtutor import launch

    chosen = sizes or [size for size in SIZES if not quick or size <= QUICK_LARGEST]
    rows = launch.run("dtutor.bench.ring:measure", nprocs, quiet=True, timeout=timeout, threads_per_rank=1,
                      sizes=chosen, budget=0.05 if quick else 0.3)[0]
    byte_sizes = [row["bytes"] for row in rows]
    fits = {name: fit_alpha_beta(byte_sizes, [row[name] for row in rows], nprocs) for name in IMPLEMENTATIONS}
    return {"rows": rows, "ranks": nprocs, "backend": rows[0]["backend"], "fits": fits}


def _label(size: int) -> str:
    return f"{size // MIB} MiB" if size >= MIB else f"{size // 1024} KiB"


def table_times(result: dict[str, Any]) -> pd.DataFrame:
    """Per size: each implementation's measured time and the time its fitted model gives."""
    from dtutor.tables import titled

    rows = []
    for row in result["rows"]:
        line: dict[str, Any] = {"size": _label(row["bytes"])}
        for name in IMPLEMENTATIONS:
            fit = result["fits"][name]
            line[f"{name} ms"] = round(row[name] * 1e3, 3)
            line[f"{name} fit ms"] = round(model_seconds(fit["alpha_s"], fit["beta_bytes_per_s"], row["bytes"],
                                                         result["ranks"]) * 1e3, 3)
        line["by hand / gloo"] = round(row["ring_all_reduce"] / row["dist.all_reduce"], 2)
        rows.append(line)
    return titled(rows, f"all-reduce on {result['ranks']} ranks ({result['backend']}), float32: the ring by hand and "
                        "gloo's own, measured and fitted")


def table_fits(result: dict[str, Any]) -> pd.DataFrame:
    """The fitted α and β of both implementations, side by side."""
    from dtutor.tables import titled

    n = result["ranks"]
    rows = [{"implementation": name, "α µs": round(fit["alpha_s"] * 1e6, 1),
             "β GB/s": round(fit["beta_bytes_per_s"] / 1e9, 3),
             "worst fit error %": round(fit["worst_relative_error"] * 100, 1)}
            for name, fit in result["fits"].items()]
    notes = [f"t = 2(N-1)·α + 2(N-1)/N · S/β with N = {n}: {2 * (n - 1)} latencies and {2 * (n - 1) / n:.2f} x S bytes "
             "sent per rank; least squares on the relative error"]
    return titled(rows, "the α-β model fitted to each", notes)
