"""Benchmarks that print tables (targets live here, never in timed unit tests).

    python -m dtutor.bench all             # every strategy of the registry, 1 and 2 workers: one table
    python -m dtutor.bench all --mode full --json all.json    # the README's run (quick: the notebook's)
    python -m dtutor.bench readme --json all.json             # rewrite README.md's table from that file
    python -m dtutor.bench allreduce       # all-reduce time, algbw and busbw, 4 KB to 64 MB, 2 and 4 ranks
    python -m dtutor.bench ring            # ring all-reduce by hand vs gloo's, 4 KiB to 64 MiB, 4 ranks: α-β fits
    python -m dtutor.bench horovod_gap     # why Horovod scales worse than DDP here, measured
    python -m dtutor.bench ddp             # DDP scaling 1 -> 2 ranks (1 thread each) and the driver's overhead
    python -m dtutor.bench horovod         # Horovod (PyTorch) beside DDP, 1 and 2 ranks, same model and data
    python -m dtutor.bench pipeline        # the pipeline strategies trained: bubble by hand vs theory; memory, speed
    python -m dtutor.bench zero            # ZeRO 0-3 and FSDP model-state memory per rank against the formulas
    python -m dtutor.bench ddp_by_hand     # DDP by hand (naive, bucketed, overlapped) vs torch DDP: time/step
    python -m dtutor.bench ddp --json out.json
    python -m dtutor.bench ddp --help      # each benchmark's own flags

Each prints its tables (``dtutor.tables``: pandas DataFrames as text) and, with ``--json FILE``, writes its numbers.

Modules: ``scaling`` (ddp, horovod, pipeline), ``suite`` (all: the plan and the launches), ``runner`` and
``tf_runner`` (inside the workers), ``probe`` (counting collectives, model state), ``rows`` (the table's
rows), ``theory`` (what communication should cost), ``report`` (table, plots, README), ``allreduce``,
``ring`` (the ring by hand against gloo's all-reduce, the α-β fits), ``horovod_gap``, ``zero`` (model-state
memory against the ZeRO formulas), ``machine`` (where a result was
measured), ``ddp_by_hand`` (time per step of the hand-written DDPs and torch's).
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
    hand_written_fit,
    independent_throughput,
    plot_scaling,
    scaling,
    table_ddp,
    table_pipeline,
    table_scaling,
    throughput,
)
from dtutor.tables import show


def _all(args: argparse.Namespace) -> Any:
    from dtutor.bench import report, suite

    result = suite.bench_all(args.mode)
    show(report.table_all(result))
    return result


def _readme(args: argparse.Namespace) -> None:
    from dtutor.bench import report

    with open(args.json) as file:
        report.update_readme(json.load(file), args.readme)
    print(f"{args.readme}: the table between the markers was rewritten from {args.json}")


def _allreduce(args: argparse.Namespace) -> Any:
    from dtutor.bench import allreduce

    results = allreduce.bench_ranks((2, 4), quick=args.mode != "full")
    show(*(allreduce.table_allreduce(result) for result in results), allreduce.table_ranks(results))
    return results


def _ring(args: argparse.Namespace) -> Any:
    from dtutor.bench import ring

    result = ring.bench_ring(args.ranks, quick=args.mode == "quick")
    show(ring.table_times(result), ring.table_fits(result))
    return result


def _horovod_gap(args: argparse.Namespace) -> Any:
    from dtutor.bench import horovod_gap

    result = horovod_gap.investigate(rounds=args.rounds)
    show(horovod_gap.table_gap(result))
    return result


def _ddp(args: argparse.Namespace) -> Any:
    result = bench_ddp(args.batch_per_rank, args.repeats, args.rounds)
    show(table_ddp(result, verdict=True))
    return result


def _horovod(args: argparse.Namespace) -> Any:
    result = bench_horovod_vs_ddp(args.batch_per_rank, args.repeats)
    show(table_scaling(result))
    return result


def _pipeline(args: argparse.Namespace) -> Any:
    result = bench_pipeline(args.repeats)
    show(*table_pipeline(result, verdict=True))
    return result


def _zero(args: argparse.Namespace) -> Any:
    from dtutor.bench import zero

    result = zero.bench_zero(quick=args.mode == "quick")
    show(zero.table_zero(result, verdict=True))
    return result


def _ddp_by_hand(args: argparse.Namespace) -> Any:
    from dtutor.bench import ddp_by_hand

    result = ddp_by_hand.bench_ddp_by_hand(args.mode)
    show(ddp_by_hand.table_ddp_by_hand(result))
    return result


def _mode(command: argparse.ArgumentParser) -> None:
    command.add_argument("--mode", choices=["quick", "full"], default="full",
                         help="quick (the notebook's settings) or full (the README's; the default)")


def _batch_and_repeats(command: argparse.ArgumentParser) -> None:
    command.add_argument("--batch-per-rank", type=int, default=256, help="samples per rank and step (256)")
    command.add_argument("--repeats", type=int, default=5, help="pairs of 1-rank and 2-rank runs, median (5)")


COMMANDS = {  # name: (what it measures, how it runs, its own flags)
    "all": ("every strategy of the registry, 1 and 2 workers: one table", _all, [_mode]),
    "readme": ("rewrite README.md's table from the JSON of 'all --json FILE'", _readme, []),
    "allreduce": ("all-reduce time, algbw and busbw, 4 KB to 64 MB, 2 and 4 ranks", _allreduce, [_mode]),
    "ring": ("ring all-reduce by hand vs gloo's all-reduce, 4 KiB to 64 MiB: times and fitted α, β", _ring, [_mode,
             lambda c: c.add_argument("--ranks", type=int, default=4, help="ranks in the ring (4)")]),
    "horovod_gap": ("why Horovod scales worse than DDP here, measured", _horovod_gap, [
        lambda c: c.add_argument("--rounds", type=int, default=5, help="rounds of every variant (5)")]),
    "ddp": ("DDP scaling 1 -> 2 ranks (1 thread each) and the driver's overhead", _ddp, [_batch_and_repeats,
            lambda c: c.add_argument("--rounds", type=int, default=60,
                                     help="pairs of driver and hand-written runs, median (60)")]),
    "horovod": ("Horovod (PyTorch) beside DDP, 1 and 2 ranks, same model and data", _horovod, [_batch_and_repeats]),
    "pipeline": ("the pipeline strategies trained: samples/s, the bubble by hand vs theory; memory and speed per split",
                 _pipeline, [
        lambda c: c.add_argument("--repeats", type=int, default=10, help="timed steps per run (10)")]),
    "zero": ("ZeRO 0-3 and FSDP model-state memory per rank against the formulas", _zero, [_mode]),
    "ddp_by_hand": ("DDP by hand (naive, bucketed, overlapped) beside torch's DDP: time per step, all-reduces per step",
                    _ddp_by_hand, [_mode]),
}


def parser() -> argparse.ArgumentParser:
    """``python -m dtutor.bench``'s parser: one subcommand per benchmark, each with only the flags it reads."""
    top = argparse.ArgumentParser(prog="python -m dtutor.bench", description=__doc__.splitlines()[0])
    commands = top.add_subparsers(dest="command", required=True, metavar="BENCHMARK")
    for name, (summary, run, flags) in COMMANDS.items():
        command = commands.add_parser(name, help=summary, description=summary)
        for add in flags:
            add(command)
        if name == "readme":
            command.add_argument("--json", metavar="FILE", required=True, help="the result of 'all --json FILE'")
            command.add_argument("--readme", default="README.md", help="the file to rewrite (README.md)")
        else:
            command.add_argument("--json", metavar="FILE", help="also write the numbers to FILE")
        command.set_defaults(run=run)
    return top


def main(argv: list[str] | None = None) -> None:
    """Command line: ``python -m dtutor.bench BENCHMARK [flags]`` (``--help`` lists them, and each one's flags)."""
    args = parser().parse_args(argv)
    result = args.run(args)
    if args.command != "readme" and args.json:
        with open(args.json, "w") as file:
            json.dump(result, file, indent=2)


__all__ = ["COMMANDS", "DRIVER_OVERHEAD_TARGET", "HEADERS", "SCALING_TARGET", "bench_ddp", "bench_horovod_vs_ddp",
           "bench_pipeline", "ceiling", "driver_overhead", "hand_written_fit", "independent_throughput", "main",
           "parser", "plot_scaling", "scaling", "table_ddp", "table_pipeline", "table_scaling", "throughput"]
