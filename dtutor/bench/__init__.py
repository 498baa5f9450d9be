"""Benchmarks that print tables (targets live here, never in timed unit tests).

    python -m dtutor.bench all             # every strategy of the registry, 1 and 2 workers: one table
    python -m dtutor.bench all --mode full --json all.json    # the README's run (quick: the notebook's)
    python -m dtutor.bench readme --json all.json             # rewrite README.md's table from that file
    python -m dtutor.bench allreduce       # all-reduce time, algbw and busbw, 4 KB to 64 MB, 2 and 4 ranks
    python -m dtutor.bench horovod_gap     # why Horovod scales worse than DDP here, measured
    python -m dtutor.bench ddp             # DDP scaling 1 -> 2 ranks (1 thread each) and the driver's overhead
    python -m dtutor.bench horovod         # Horovod (PyTorch) beside DDP, 1 and 2 ranks, same model and data
    python -m dtutor.bench pipeline        # the pipeline bubble (measured, theory, gap); memory and speed per split
    python -m dtutor.bench zero            # ZeRO 0-3 and FSDP model-state memory per rank against the formulas
    python -m dtutor.bench ddp --json out.json

Modules: ``scaling`` (ddp, horovod, pipeline), ``suite`` (all: the plan and the launches), ``runner`` and
``tf_runner`` (inside the workers), ``probe`` (counting collectives, model state), ``rows`` (the table's
rows), ``theory`` (what communication should cost), ``report`` (table, plots, README), ``allreduce``,
``horovod_gap``, ``zero`` (model-state memory against the ZeRO formulas), ``machine`` (where a result was
measured).
"""

import argparse
import json
from typing import Any

from dtutor.bench.scaling import (
    DRIVER_OVERHEAD_TARGET,
    HEADERS,
    SCALING_TARGET,
    bench_ddp,
    bench_horovod_vs_ddp,
    bench_pipeline,
    ceiling,
    driver_overhead,
    format_ddp,
    format_pipeline,
    format_table,
    hand_written_fit,
    independent_throughput,
    plot_scaling,
    scaling,
    throughput,
)


def _all(args: argparse.Namespace) -> Any:
    from dtutor.bench import report, suite

    result = suite.bench_all(args.mode)
    print(report.format_all(result))
    return result


def _readme(args: argparse.Namespace) -> None:
    from dtutor.bench import report

    if not args.json:
        raise SystemExit("readme: give the benchmark's result with --json FILE (from: all --json FILE)")
    with open(args.json) as file:
        report.update_readme(json.load(file), args.readme)
    print(f"{args.readme}: the table between the markers was rewritten from {args.json}")


def _allreduce(args: argparse.Namespace) -> Any:
    from dtutor.bench import allreduce

    results = allreduce.bench_ranks((2, 4), quick=args.mode != "full")
    for result in results:
        print(allreduce.format_allreduce(result), end="\n\n")
    print(allreduce.format_ranks(results))
    return results


def _horovod_gap(args: argparse.Namespace) -> Any:
    from dtutor.bench import horovod_gap

    result = horovod_gap.investigate(rounds=args.repeats or 5)
    print(horovod_gap.format_gap(result))
    return result


def main(argv: list[str] | None = None) -> None:
    """Command line: ``python -m dtutor.bench WHAT [--json FILE]`` (see the module docstring)."""
    parser = argparse.ArgumentParser(prog="python -m dtutor.bench", description=__doc__.splitlines()[0])
    parser.add_argument("what", choices=["all", "readme", "allreduce", "horovod_gap", "ddp", "horovod", "pipeline",
                                             "zero"])
    parser.add_argument("--mode", choices=["quick", "full"], default="full",
                        help="all, allreduce, zero: quick (the notebook's) or full (the README's)")
    parser.add_argument("--batch-per-rank", type=int, default=256)
    parser.add_argument("--repeats", type=int,
                        help="pairs of 1-rank and 2-rank runs (default 5), timed pipeline steps (10), or "
                             "horovod_gap rounds (5)")
    parser.add_argument("--rounds", type=int, default=60, help="pairs of driver and hand-written runs (median)")
    parser.add_argument("--json", metavar="FILE", help="also write the numbers to FILE (readme: read them)")
    parser.add_argument("--readme", default="README.md", help="readme: the file to rewrite")
    args = parser.parse_args(argv)
    if args.what == "readme":
        return _readme(args)
    if args.what in ("all", "allreduce", "horovod_gap"):
        result = {"all": _all, "allreduce": _allreduce, "horovod_gap": _horovod_gap}[args.what](args)
    elif args.what == "ddp":
        result = bench_ddp(args.batch_per_rank, args.repeats or 5, args.rounds)
        print(format_ddp(result, verdict=True))
    elif args.what == "zero":
        from dtutor.bench import zero

        result = zero.bench_zero(quick=args.mode == "quick")
        print(zero.format_zero(result, verdict=True))
    elif args.what == "pipeline":
        result = bench_pipeline(args.repeats or 10)
        print(format_pipeline(result))
    else:
        result = bench_horovod_vs_ddp(args.batch_per_rank, args.repeats or 5)
        print(format_table(result))
    if args.json:
        with open(args.json, "w") as file:
            json.dump(result, file, indent=2)


__all__ = ["DRIVER_OVERHEAD_TARGET", "HEADERS", "SCALING_TARGET", "bench_ddp", "bench_horovod_vs_ddp",
           "bench_pipeline", "ceiling", "driver_overhead", "format_ddp", "format_pipeline", "format_table",
           "hand_written_fit", "independent_throughput", "main", "plot_scaling", "scaling", "throughput"]
