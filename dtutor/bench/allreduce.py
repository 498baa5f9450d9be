"""All-reduce from 4 KB to 64 MB: time, algorithm bandwidth and bus bandwidth, as nccl-tests define them.

For a message of S bytes that one all-reduce takes t seconds on n ranks::

    algbw = S / t                     (what the caller sees)
    busbw = algbw x 2(n-1)/n          (what the busiest link carries: a ring sends 2(n-1)/n x S per rank)

so busbw is comparable across rank counts and with a link's speed. Small messages are latency-bound (t is
about constant), large ones bandwidth-bound (busbw levels off). ``half_bandwidth_size`` is where the two
meet: the message size that reaches half the largest busbw. DDP all-reduces its gradients in buckets of at
most 25 MiB (``bucket_cap_mb=25``), so the plot marks that size, and the course CNN's whole gradient.

At 2 ranks 2(n-1)/n = 1, so busbw and algbw are the same number; ``bench_ranks`` also measures 4 ranks (up to
``LARGEST_BEYOND_2``, to stay short), where busbw = 1.5 algbw shows what the factor does. Every rank warms up
(``WARMUP`` all-reduces of every size, untimed) before the first timing: the first collectives of a process
group pay for connections and buffers, which is not the link's latency.

gloo on CPUs, NCCL when every rank has a GPU (``backend="auto"``). Launch recipe (what ``bench_allreduce``
starts)::

    torchrun --standalone --nproc-per-node=2 -m dtutor.launch dtutor.bench.allreduce:measure
"""

from __future__ import annotations

import statistics
import time
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

from dtutor.bench.theory import BYTES_FP32, bus_bandwidth, wire_factor
from dtutor.models import MNIST_CNN_PARAMETERS

if TYPE_CHECKING:
    import pandas as pd

MIB = 1024 * 1024
DDP_BUCKET_BYTES = 25 * MIB  # torch.nn.parallel.DistributedDataParallel(bucket_cap_mb=25)
CNN_GRADIENT_BYTES = MNIST_CNN_PARAMETERS * BYTES_FP32
SIZES = [4 * 1024 * 4**k for k in range(8)]  # 4 KiB, 16 KiB, ..., 64 MiB
WARMUP = 5  # untimed all-reduces of every size before any timing
LARGEST_BEYOND_2 = 4 * MIB  # runs on more than 2 ranks stop at this size (short, on a machine of 2 cores)
LATENCY_SIZES = 64 * 1024  # latency: the fastest all-reduce of the messages up to this size


def default_sizes() -> list[int]:
    """4 KiB to 64 MiB by fours, plus DDP's bucket and the CNN's gradient (the sizes the notebook marks)."""
    return sorted({*SIZES, DDP_BUCKET_BYTES, CNN_GRADIENT_BYTES})


def _time_loop(tensor, iterations: int, synchronize, operation: Callable | None = None) -> float:
    import torch.distributed as dist

    operation = operation or dist.all_reduce
    dist.barrier()
    start = time.perf_counter()
    for _ in range(iterations):
        operation(tensor)
    synchronize()
    return (time.perf_counter() - start) / iterations


def time_collective(tensor, synchronize, budget: float, loops: int, max_iterations: int,
                    operation: Callable | None = None) -> tuple[float, int]:
    """Seconds per call of ``operation(tensor)`` (default ``dist.all_reduce``), the slowest rank's, median over
    ``loops`` loops of about ``budget`` seconds each (at least 2 iterations), after ``WARMUP`` untimed calls; and
    the iterations per loop (every rank picks the same)."""
    import torch
    import torch.distributed as dist

    def slowest(seconds: float) -> float:
        value = torch.tensor([seconds], dtype=torch.float64, device=tensor.device)
        dist.all_reduce(value, op=dist.ReduceOp.MAX)
        return value.item()

    _time_loop(tensor, WARMUP, synchronize, operation)  # again, just before this size is timed
    first = slowest(_time_loop(tensor, 1, synchronize, operation))
    iterations = int(min(max_iterations, max(2, budget / max(first, 1e-6))))
    times = [slowest(_time_loop(tensor, iterations, synchronize, operation)) for _ in range(loops)]
    return statistics.median(times), iterations


def measure(sizes: list[int] | None = None, budget: float = 0.3, loops: int = 3, backend: str = "auto",
            max_iterations: int = 200) -> list[dict[str, Any]]:
    """Entry point (every rank): per size, the median over ``loops`` loops of the time per all-reduce (the
    slowest rank's); each loop runs about ``budget`` seconds (at least 2 iterations), after ``WARMUP`` untimed
    all-reduces of every size."""
    import torch
    import torch.distributed as dist

    from dtutor.pytorch.process_group import join_process_group, leave_process_group

    rank, world, device = join_process_group(backend)

    def synchronize() -> None:
        if device.type == "cuda":
            torch.cuda.synchronize(device)

    try:
        chosen = sizes or default_sizes()
        tensors = [torch.ones(max(1, size // BYTES_FP32), dtype=torch.float32, device=device) for size in chosen]
        for tensor in tensors:  # connections, buffers, first-touch pages: paid here, never timed
            _time_loop(tensor, WARMUP, synchronize)
        rows = []
        for tensor in tensors:
            seconds, iterations = time_collective(tensor, synchronize, budget, loops, max_iterations)
            algbw = tensor.numel() * BYTES_FP32 / seconds
            rows.append({"bytes": tensor.numel() * BYTES_FP32, "seconds": seconds, "algbw": algbw,
                         "busbw": bus_bandwidth(algbw, world), "iterations": iterations, "ranks": world,
                         "backend": dist.get_backend()})
        return rows
    finally:
        leave_process_group()


def bench_allreduce(nprocs: int = 2, quick: bool = True, timeout: float = 600.0,
                    sizes: list[int] | None = None) -> dict[str, Any]:
    """Measure on ``nprocs`` ranks (one thread each); quick: about 0.1 s per size and loop, else 0.5 s."""
    from dtutor import launch

    rows = launch.run("dtutor.bench.allreduce:measure", nprocs, quiet=True, timeout=timeout, threads_per_rank=1,
                      budget=0.1 if quick else 0.5, sizes=sizes)[0]
    return {"rows": rows, "ranks": nprocs, "backend": rows[0]["backend"], **summary(rows)}


def bench_ranks(ranks: tuple[int, ...] = (2, 4), quick: bool = True, timeout: float = 300.0,
                progress: Callable[[str], Any] = print) -> list[dict[str, Any]]:
    """``bench_allreduce`` on each rank count: 2 ranks over every size, more ranks up to ``LARGEST_BEYOND_2``
    (each run bounded by ``timeout`` seconds); one progress line per run."""
    results = []
    for count in ranks:
        sizes = default_sizes() if count <= 2 else [s for s in default_sizes() if s <= LARGEST_BEYOND_2]
        started = time.monotonic()
        results.append(bench_allreduce(count, quick, timeout, sizes))
        progress(f"all-reduce on {count} ranks: {len(sizes)} sizes up to {_size(max(sizes))}, "
                 f"{time.monotonic() - started:.0f} s")
    return results


def _nearest(rows: list[dict[str, Any]], size: int) -> dict[str, Any]:
    return min(rows, key=lambda row: abs(row["bytes"] - size))


def _exactly(rows: list[dict[str, Any]], size: int) -> dict[str, Any] | None:
    return next((row for row in rows if row["bytes"] == size), None)


def summary(rows: list[dict[str, Any]]) -> dict[str, Any]:
    """Latency (the fastest all-reduce up to ``LATENCY_SIZES``), peak busbw, the half-bandwidth size, and the
    two marked sizes where they were measured (None where not)."""
    peak = max(row["busbw"] for row in rows)
    half = next((row["bytes"] for row in sorted(rows, key=lambda r: r["bytes"]) if row["busbw"] >= peak / 2), None)
    bucket, cnn = _exactly(rows, DDP_BUCKET_BYTES), _exactly(rows, CNN_GRADIENT_BYTES)
    small = [row for row in rows if row["bytes"] <= LATENCY_SIZES] or [min(rows, key=lambda r: r["bytes"])]
    return {"latency_s": min(row["seconds"] for row in small), "peak_busbw": peak, "half_bandwidth_size": half,
            "bucket_fraction_of_peak": bucket and bucket["busbw"] / peak,
            "cnn_fraction_of_peak": cnn and cnn["busbw"] / peak, "cnn_seconds": cnn and cnn["seconds"]}


def _size(value: float) -> str:
    for unit, scale in (("MiB", MIB), ("KiB", 1024)):
        if value >= scale:
            return f"{value / scale:.4g} {unit}"
    return f"{value:g} B"


def table_allreduce(result: dict[str, Any]) -> pd.DataFrame:
    """The table (size, time, algbw, busbw) and, as its notes, what it says, every sentence computed from the
    numbers."""
    from dtutor.tables import titled

    rows = [{"size": _size(row["bytes"]), "time ms": round(row["seconds"] * 1e3, 3),
             "algbw GB/s": round(row["algbw"] / 1e9, 3), "busbw GB/s": round(row["busbw"] / 1e9, 3),
             "marks": "DDP bucket (25 MiB)" if row["bytes"] == DDP_BUCKET_BYTES else
             "the CNN's gradient" if row["bytes"] == CNN_GRADIENT_BYTES else ""} for row in result["rows"]]
    half = result["half_bandwidth_size"]
    notes = [f"latency (fastest message up to {_size(LATENCY_SIZES)}): {result['latency_s'] * 1e3:.2f} ms; "
             f"peak busbw {result['peak_busbw'] / 1e9:.2f} GB/s; half of it from {_size(half) if half else '-'} on"]
    if result["bucket_fraction_of_peak"] is not None and result["cnn_fraction_of_peak"] is not None:
        notes.append(f"DDP's 25 MiB bucket reaches {result['bucket_fraction_of_peak']:.0%} of the peak busbw; the "
                     f"CNN's whole gradient ({_size(CNN_GRADIENT_BYTES)}) {result['cnn_fraction_of_peak']:.0%}, in "
                     f"{result['cnn_seconds'] * 1e3:.2f} ms")
    title = f"all-reduce on {result['ranks']} ranks ({result['backend']}), float32; busbw = algbw x 2(n-1)/n"
    return titled(rows, title, notes)


def table_ranks(results: list[dict[str, Any]]) -> pd.DataFrame:
    """Each rank count's factor busbw / algbw, and the two bandwidths at the largest size they share."""
    from dtutor.tables import titled

    shared = max(set.intersection(*({row["bytes"] for row in r["rows"]} for r in results)))
    rows = []
    for result in results:
        row = _nearest(result["rows"], shared)
        rows.append({"ranks": result["ranks"], "2(n-1)/n": round(wire_factor("all_reduce", result["ranks"]), 2),
                     f"ms at {_size(shared)}": round(row["seconds"] * 1e3, 3),
                     "algbw GB/s": round(row["algbw"] / 1e9, 3), "busbw GB/s": round(row["busbw"] / 1e9, 3),
                     "latency ms": round(result["latency_s"] * 1e3, 3)})
    return titled(rows)


def plot_allreduce(results: dict[str, Any] | list[dict[str, Any]]):
    """Time and bandwidth against message size (log x), per rank count: busbw solid, algbw dashed (at 2 ranks
    they coincide: 2(n-1)/n = 1); DDP's bucket and the CNN's gradient marked."""
    import matplotlib.pyplot as plt

    results = [results] if isinstance(results, dict) else results
    figure, (timing, bandwidth) = plt.subplots(1, 2, figsize=(12, 4.2))
    for result, color in zip(results, ("tab:blue", "tab:orange", "tab:purple", "tab:brown"), strict=False):
        rows = sorted(result["rows"], key=lambda r: r["bytes"])
        sizes, n = [row["bytes"] for row in rows], result["ranks"]
        timing.loglog(sizes, [row["seconds"] * 1e3 for row in rows], "o-", color=color, label=f"{n} ranks")
        bandwidth.semilogx(sizes, [row["busbw"] / 1e9 for row in rows], "o-", color=color,
                           label=f"{n} ranks: busbw = {wire_factor('all_reduce', n):.2f} x algbw")
        bandwidth.semilogx(sizes, [row["algbw"] / 1e9 for row in rows], "s--", color=color, markersize=9,
                           markerfacecolor="none", label=f"{n} ranks: algbw")
    timing.set_ylabel("time per all-reduce (ms)")
    bandwidth.set_ylabel("GB/s")
    for axes in (timing, bandwidth):
        axes.axvline(DDP_BUCKET_BYTES, color="tab:red", ls=":", label="DDP bucket, 25 MiB")
        axes.axvline(CNN_GRADIENT_BYTES, color="tab:green", ls=":", label=f"CNN gradient, {_size(CNN_GRADIENT_BYTES)}")
        axes.set_xlabel("message size (bytes)")
    timing.legend(fontsize=8)
    bandwidth.legend(fontsize=8, loc="upper left", bbox_to_anchor=(1.01, 1.0))
    first = results[0]
    figure.suptitle(f"all-reduce, {first['backend']}: on {first['ranks']} ranks latency "
                    f"{first['latency_s'] * 1e3:.2f} ms, peak busbw {first['peak_busbw'] / 1e9:.2f} GB/s")
    figure.tight_layout()
    return figure
