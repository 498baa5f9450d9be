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


def throughput(run, nprocs: int, batch_per_rank: int = 256, samples: int = 1024, epochs: int = 8,
               timeout: float = 300.0) -> float:
    """Samples/s of ``run`` (``ddp.run`` or ``horovod_torch.run``) on ``nprocs`` ranks, one thread each.

    The first epoch is discarded as warm-up; the time of an epoch is the slowest rank's.
    """
    results = run(nprocs, global_batch=batch_per_rank * nprocs, samples=samples, epochs=epochs,
                  threads_per_rank=1, timeout=timeout, quiet=True, return_parameters=False)
    timed = results[0]["epochs"][1:]
    return sum(e["samples"] for e in timed) / sum(e["seconds"] for e in timed)


def scaling(run, batch_per_rank: int = 256, repeats: int = 5) -> dict[str, float]:
    """Samples/s on 1 and 2 ranks and the scaling efficiency, from ``repeats`` back-to-back pairs of runs.

    On a shared 2-core virtual machine single runs vary by tens of percent (a lone process may also run at
    a higher clock while the other core idles), so each 1-rank run is paired with the 2-rank run right after
    it and the efficiency reported is the median over pairs; the rates are medians too.
    """
    if repeats < 1:
        raise ValueError(f"repeats must be >= 1, got {repeats}")
    pairs = [(throughput(run, 1, batch_per_rank), throughput(run, 2, batch_per_rank)) for _ in range(repeats)]
    return {"samples_per_s_1": statistics.median(one for one, _ in pairs),
            "samples_per_s_2": statistics.median(two for _, two in pairs),
            "efficiency": statistics.median(two / (2 * one) for one, two in pairs)}


def hand_written_loop(model: torch.nn.Module, batches: list, optimizer: torch.optim.Optimizer) -> None:
    """The minimal loop the shared one is measured against."""
    for inputs, targets in batches:
        loss = torch.nn.functional.cross_entropy(model(inputs), targets)
        loss.backward()
        optimizer.step()
        optimizer.zero_grad()


def loop_overhead(steps: int = 10, batch_size: int = 64, rounds: int = 60) -> dict[str, float]:
    """Time the shared loop against the hand-written loop: ``rounds`` back-to-back pairs of ``steps`` steps.

    Each round runs both loops right after each other, so both see the same state of the machine; the
    overhead is the median over rounds of (shared time / hand time) - 1, which cancels the slow drifts of a
    shared machine that make single long runs differ by 10% or more. Times are this process's CPU time
    (one thread), so time taken by other processes or by the virtual machine's host does not count.
    """
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        generator = torch.Generator().manual_seed(0)
        batches = [(torch.randn(batch_size, 1, 28, 28, generator=generator), torch.randint(0, 10, (batch_size,)))
                   for _ in range(steps)]
        loops = {"shared": lambda m, o: train_loop(m, batches, o, progress=False),
                 "hand": lambda m, o: hand_written_loop(m, batches, o)}
        setups = {name: models.seeded(models.mnist_cnn, 0) for name in loops}
        optimizers = {name: torch.optim.SGD(m.parameters(), lr=0.01, momentum=0.9) for name, m in setups.items()}
        times: dict[str, list[float]] = {name: [] for name in loops}
        for round_ in range(rounds + 1):
            for name in (("shared", "hand") if round_ % 2 else ("hand", "shared")):  # alternate who goes first
                start = time.process_time()  # CPU time: not the time the VM or other processes took from us
                loops[name](setups[name], optimizers[name])
                times[name].append(time.process_time() - start)
        ratios = sorted(s / h for s, h in zip(times["shared"][1:], times["hand"][1:], strict=True))  # 0: warm-up
        quartiles = statistics.quantiles(ratios, n=4)
        return {"shared_s": statistics.median(times["shared"][1:]), "hand_s": statistics.median(times["hand"][1:]),
                "overhead": statistics.median(ratios) - 1, "overhead_q1": quartiles[0] - 1,
                "overhead_q3": quartiles[2] - 1}
    finally:
        torch.set_num_threads(threads)


def bench_ddp(batch_per_rank: int = 256, repeats: int = 5, rounds: int = 60) -> dict[str, Any]:
    """Measure DDP scaling and loop overhead; return the numbers (``main`` prints them)."""
    return {**scaling(ddp.run, batch_per_rank, repeats), **loop_overhead(rounds=rounds)}


def format_ddp(result: dict[str, Any]) -> str:
    """The table ``python -m dtutor.bench ddp`` prints."""
    verdict = {True: "ok", False: "MISSED"}
    return "\n".join([
        f"{'measure':<40}{'value':>12}  target",
        f"{'DDP samples/s, 1 rank (1 thread)':<40}{result['samples_per_s_1']:>12.0f}",
        f"{'DDP samples/s, 2 ranks (1 thread each)':<40}{result['samples_per_s_2']:>12.0f}",
        f"{'scaling efficiency T2 / (2 T1)':<40}{result['efficiency']:>12.3f}  >= {SCALING_TARGET} "
        f"{verdict[result['efficiency'] >= SCALING_TARGET]}",
        f"{'shared loop, s per 10 steps':<40}{result['shared_s']:>12.4f}",
        f"{'hand-written loop, s per 10 steps':<40}{result['hand_s']:>12.4f}",
        f"{'shared loop overhead (median of pairs)':<40}{result['overhead']:>+12.2%}  <= {LOOP_OVERHEAD_TARGET:.0%} "
        f"{verdict[result['overhead'] <= LOOP_OVERHEAD_TARGET]}",
        f"{'  middle half of the pairs':<40}{result['overhead_q1']:>+6.1%} to {result['overhead_q3']:+.1%}",
    ])


def bench_horovod_vs_ddp(batch_per_rank: int = 256, repeats: int = 5) -> list[dict[str, Any]]:
    """Samples/s of Horovod (PyTorch) and DDP with 1 and 2 ranks, one thread each, in the same run."""
    return [{"method": name, **scaling(run, batch_per_rank, repeats)}
            for name, run in (("DDP", ddp.run), ("Horovod", horovod_torch.run))]


def format_table(rows: list[dict[str, Any]]) -> str:
    """A plain-text table of dicts with the same keys (floats of 100 or more as whole numbers, else 3 digits)."""

    def text(value) -> str:
        if isinstance(value, float):
            return f"{value:,.0f}" if abs(value) >= 100 else f"{value:.3g}"
        return str(value)

    keys = list(rows[0])
    cells = [[text(row[k]) for k in keys] for row in rows]
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
    parser.add_argument("--batch-per-rank", type=int, default=256)
    parser.add_argument("--repeats", type=int, default=5, help="pairs of 1-rank and 2-rank runs (median)")
    args = parser.parse_args(argv)
    if args.what == "ddp":
        print(format_ddp(bench_ddp(args.batch_per_rank, args.repeats)))
    else:
        print(format_table(bench_horovod_vs_ddp(args.batch_per_rank, args.repeats)))


if __name__ == "__main__":
    main()
