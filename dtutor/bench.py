"""Benchmarks that print tables (targets live here, never in timed unit tests).

    python -m dtutor.bench ddp      # DDP scaling 1 -> 2 ranks (1 thread each) and loop overhead
    python -m dtutor.bench horovod  # Horovod (PyTorch) beside DDP, 1 and 2 ranks, same model and data

Targets on the course's 2-core CPU: scaling efficiency T2 / (2 T1) >= 0.85, and the shared training
loop within 2% of a minimal hand-written loop on the same model.
"""

from __future__ import annotations

import argparse
import statistics
import time
from typing import Any

import torch

from dtutor import ddp, horovod_torch, models
from dtutor.train import train as train_loop

SCALING_TARGET = 0.85
LOOP_OVERHEAD_TARGET = 0.02


def throughput(run, nprocs: int, batch_per_rank: int = 64, samples: int = 1024, epochs: int = 4,
               timeout: float = 300.0) -> float:
    """Samples/s of ``run`` (``ddp.run`` or ``horovod_torch.run``) on ``nprocs`` ranks, one thread each.

    The first epoch is discarded as warm-up; the time of an epoch is the slowest rank's.
    """
    results = run(nprocs, global_batch=batch_per_rank * nprocs, samples=samples, epochs=epochs,
                  threads_per_rank=1, timeout=timeout, quiet=True, return_parameters=False)
    timed = results[0]["epochs"][1:]
    return sum(e["samples"] for e in timed) / sum(e["seconds"] for e in timed)


def ddp_throughput(nprocs: int, batch_per_rank: int = 64) -> float:
    """Samples/s of DDP training on ``nprocs`` ranks (see ``throughput``)."""
    return throughput(ddp.run, nprocs, batch_per_rank)


def hand_written_loop(model: torch.nn.Module, batches: list, optimizer: torch.optim.Optimizer) -> None:
    """The minimal loop the shared one is measured against."""
    for inputs, targets in batches:
        loss = torch.nn.functional.cross_entropy(model(inputs), targets)
        loss.backward()
        optimizer.step()
        optimizer.zero_grad()


def loop_overhead(steps: int = 30, batch_size: int = 64, repeats: int = 5) -> dict[str, float]:
    """Seconds per run of the shared loop and the hand-written loop (median of ``repeats``, alternating)."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        return _time_loops(steps, batch_size, repeats)
    finally:
        torch.set_num_threads(threads)


def _time_loops(steps: int, batch_size: int, repeats: int) -> dict[str, float]:
    generator = torch.Generator().manual_seed(0)
    batches = [(torch.randn(batch_size, 1, 28, 28, generator=generator), torch.randint(0, 10, (batch_size,)))
               for _ in range(steps)]
    times: dict[str, list[float]] = {"shared": [], "hand": []}
    for _ in range(repeats):
        for name in times:
            model = models.seeded(models.mnist_cnn, 0)
            optimizer = torch.optim.SGD(model.parameters(), lr=0.01, momentum=0.9)
            start = time.perf_counter()
            if name == "shared":
                train_loop(model, batches, optimizer, progress=False)
            else:
                hand_written_loop(model, batches, optimizer)
            times[name].append(time.perf_counter() - start)
    shared, hand = statistics.median(times["shared"]), statistics.median(times["hand"])
    return {"shared_s": shared, "hand_s": hand, "overhead": shared / hand - 1}


def bench_ddp(batch_per_rank: int = 64) -> dict[str, Any]:
    """Measure DDP scaling and loop overhead; return the numbers (``main`` prints them)."""
    one, two = ddp_throughput(1, batch_per_rank), ddp_throughput(2, batch_per_rank)
    return {"samples_per_s_1": one, "samples_per_s_2": two, "efficiency": two / (2 * one), **loop_overhead()}


def format_ddp(result: dict[str, Any]) -> str:
    """The table ``python -m dtutor.bench ddp`` prints."""
    verdict = {True: "ok", False: "MISSED"}
    return "\n".join([
        f"{'measure':<40}{'value':>12}  target",
        f"{'DDP samples/s, 1 rank (1 thread)':<40}{result['samples_per_s_1']:>12.0f}",
        f"{'DDP samples/s, 2 ranks (1 thread each)':<40}{result['samples_per_s_2']:>12.0f}",
        f"{'scaling efficiency T2 / (2 T1)':<40}{result['efficiency']:>12.3f}  >= {SCALING_TARGET} "
        f"{verdict[result['efficiency'] >= SCALING_TARGET]}",
        f"{'shared loop, s per run':<40}{result['shared_s']:>12.4f}",
        f"{'hand-written loop, s per run':<40}{result['hand_s']:>12.4f}",
        f"{'shared loop overhead':<40}{result['overhead']:>+12.2%}  <= {LOOP_OVERHEAD_TARGET:.0%} "
        f"{verdict[result['overhead'] <= LOOP_OVERHEAD_TARGET]}",
    ])


def bench_horovod_vs_ddp(batch_per_rank: int = 64) -> list[dict[str, Any]]:
    """Samples/s of Horovod (PyTorch) and DDP with 1 and 2 ranks, one thread each, in the same run."""
    rows = []
    for name, run in (("DDP", ddp.run), ("Horovod", horovod_torch.run)):
        one, two = throughput(run, 1, batch_per_rank), throughput(run, 2, batch_per_rank)
        rows.append({"method": name, "samples_per_s_1": one, "samples_per_s_2": two, "efficiency": two / (2 * one)})
    return rows


def format_table(rows: list[dict[str, Any]]) -> str:
    """A plain-text table of dicts with the same keys (floats to 3 significant digits)."""
    keys = list(rows[0])
    cells = [[f"{row[k]:.3g}" if isinstance(row[k], float) else str(row[k]) for k in keys] for row in rows]
    widths = [max(len(k), *(len(c[i]) for c in cells)) for i, k in enumerate(keys)]
    lines = ["  ".join(k.rjust(w) for k, w in zip(keys, widths, strict=True))]
    lines += ["  ".join(c.rjust(w) for c, w in zip(row, widths, strict=True)) for row in cells]
    return "\n".join(lines)


def plot_scaling(result: dict[str, Any]):
    """Bar chart: measured samples/s for 1 and 2 ranks against perfect scaling."""
    import matplotlib.pyplot as plt

    figure, axes = plt.subplots(figsize=(4.5, 3))
    axes.bar(["1 rank", "2 ranks"], [result["samples_per_s_1"], result["samples_per_s_2"]], color="tab:blue",
             label="measured")
    axes.plot(["1 rank", "2 ranks"], [result["samples_per_s_1"], 2 * result["samples_per_s_1"]], "k--", marker="o",
              label="perfect scaling")
    axes.set_ylabel("samples / s")
    axes.set_title(f"DDP scaling efficiency {result['efficiency']:.2f}")
    axes.legend()
    figure.tight_layout()
    return figure


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m dtutor.bench", description=__doc__.splitlines()[0])
    parser.add_argument("what", choices=["ddp", "horovod"])
    parser.add_argument("--batch-per-rank", type=int, default=64)
    args = parser.parse_args(argv)
    if args.what == "ddp":
        print(format_ddp(bench_ddp(args.batch_per_rank)))
    else:
        print(format_table(bench_horovod_vs_ddp(args.batch_per_rank)))


if __name__ == "__main__":
    main()
