"""Benchmarks that print tables (targets live here, never in timed unit tests).

    python -m dtutor.bench all             # every strategy of the registry, 1 and 2 workers: one table
    python -m dtutor.bench all --mode full --json all.json    # the README's run (quick: the notebook's)
    python -m dtutor.bench readme --json all.json             # rewrite README.md's table from that file
    python -m dtutor.bench ceiling         # 2 processes alone side by side vs 1 alone: pinned, unpinned, CPU time
    python -m dtutor.bench allreduce       # all-reduce time, algbw and busbw, 4 KB to 64 MB, 2 and 4 ranks
    python -m dtutor.bench ring            # ring all-reduce by hand vs gloo's, 4 KiB to 64 MiB, 4 ranks: α-β fits
    python -m dtutor.bench horovod_gap     # why Horovod scales worse than DDP here, measured
    python -m dtutor.bench ddp             # DDP scaling 1 -> 2 ranks (1 thread each) and the driver's overhead
    python -m dtutor.bench horovod         # Horovod (PyTorch) beside DDP, 1 and 2 ranks, same model and data
    python -m dtutor.bench pipeline        # the bubble vs theory: fixed-time stages, then real compute; memory, speed
    python -m dtutor.bench zero            # ZeRO 0-3 and FSDP model-state memory per rank against the formulas
    python -m dtutor.bench ddp_by_hand     # DDP by hand (naive, bucketed, overlapped) vs torch DDP: time/step
    python -m dtutor.bench activations     # activation memory against its formula; checkpointing's saving and cost
    python -m dtutor.bench gpu             # a GPU machine: every 1-GPU path in 8 min -> results/gpu/DEVICE-DATE.json
    python -m dtutor.bench gpu --dry-run   # anywhere: the GPU plan checked, its JSON's shape written
    python -m dtutor.bench ddp --json out.json
    python -m dtutor.bench ddp --help      # each benchmark's own flags

Each prints its tables (``dtutor.tables``: pandas DataFrames as text) and, with ``--json FILE``, writes its numbers.

Modules: ``scaling`` (ddp, horovod), ``pipeline``, ``ceiling_causes`` (bench ceiling), ``suite`` (all: the plan
and the launches), ``runner`` and ``tf_runner`` (inside the workers), ``probe`` (counting collectives, model state),
``rows`` (the table's rows), ``theory`` (what communication should cost), ``cost_model`` and ``model_check`` (step time
predicted from FLOPs, bytes and overlap, checked against bench all's rows), ``report`` (table, plots, README),
``allreduce``, ``ring`` (the ring by hand against gloo's all-reduce, the α-β fits), ``horovod_gap``, ``zero``
(model-state memory against the ZeRO formulas), ``machine`` (where a result was measured), ``ddp_by_hand`` (time
per step of the hand-written DDPs and torch's), ``gpu`` (the GPU run's plan), ``gpu_run``, ``gpu_parts`` and
``gpu_report`` (its launches, its workers' measurements, its tables).
"""

import argparse
import json
from typing import Any

from dtutor.bench.pipeline import bench_pipeline, table_pipeline
from dtutor.bench.scaling import (
    DRIVER_OVERHEAD_TARGET,
    HEADERS,
    SCALING_TARGET,
    bench_ddp,
    bench_horovod_vs_ddp,
    ceiling,
    driver_overhead,
    hand_written_fit,
    independent_throughput,
    plot_scaling,
    scaling,
    table_ddp,
    table_scaling,
    throughput,
)
from dtutor.tables import show


def _all(args: argparse.Namespace) -> Any:
    from dtutor.bench import model_check, report, suite

    result = suite.bench_all(args.mode)
    result["cost_model"] = model_check.check_bench_all(result)
    show(report.table_all(result), model_check.table_check(result["cost_model"]))
    return result


def _ceiling(args: argparse.Namespace) -> Any:
    from dtutor.bench import ceiling_causes

    result = ceiling_causes.measure(rounds=args.rounds)
    show(ceiling_causes.table_rounds(result), ceiling_causes.table_summary(result))
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


def _activations(args: argparse.Namespace) -> Any:
    from dtutor.bench import activations

    result = activations.bench_activations(quick=args.mode == "quick")
    show(activations.table_activations(result["models"]), activations.table_recomputation(result["recomputation"]))
    return result


def _ddp_by_hand(args: argparse.Namespace) -> Any:
    from dtutor.bench import ddp_by_hand

    result = ddp_by_hand.bench_ddp_by_hand(args.mode)
    show(ddp_by_hand.table_ddp_by_hand(result))
    return result


def _gpu(args: argparse.Namespace) -> Any:
    from dtutor.bench import gpu, gpu_report

    result, path = gpu.dry_run(args.gpus, args.json) if args.dry_run else gpu.run(args.json)
    show(*gpu_report.tables(result))
    print(f"written: {path}")
    return result


def _gpu_flags(command: argparse.ArgumentParser) -> None:
    command.add_argument("--dry-run", action="store_true", help="check the plan and write the JSON's shape (no GPU)")
    command.add_argument("--gpus", type=int, default=2, help="--dry-run: plan for this many GPUs (2: every part)")


def _mode(command: argparse.ArgumentParser) -> None:
    command.add_argument("--mode", choices=["quick", "full"], default="full",
                         help="quick (the notebook's settings) or full (the README's; the default)")


def _batch_and_repeats(command: argparse.ArgumentParser) -> None:
    command.add_argument("--batch-per-rank", type=int, default=256, help="samples per rank and step (256)")
    command.add_argument("--repeats", type=int, default=5, help="pairs of 1-rank and 2-rank runs, median (5)")


COMMANDS = {  # name: (what it measures, how it runs, its own flags)
    "all": ("every strategy of the registry, 1 and 2 workers: one table", _all, [_mode]),
    "ceiling": ("why one process alone can be slower than each of two side by side: pinning, CPU time, scheduler",
                _ceiling, [lambda c: c.add_argument("--rounds", type=int, default=5,
                                                    help="rounds of every phase (5)")]),
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
    "pipeline": ("the bubble vs theory: fixed-time stages (p = 2, 4), then real compute; memory and speed per split",
                 _pipeline, [
        lambda c: c.add_argument("--repeats", type=int, default=10, help="timed steps per run (10)")]),
    "zero": ("ZeRO 0-3 and FSDP model-state memory per rank against the formulas", _zero, [_mode]),
    "ddp_by_hand": ("DDP by hand (naive, bucketed, overlapped) beside torch's DDP: time per step, all-reduces per step",
                    _ddp_by_hand, [_mode]),
    "activations": ("activation memory per micro-batch against its formula; checkpointing's saving and extra compute",
                    _activations, [_mode]),
    "gpu": ("a GPU machine: every path one GPU runs, in 8 min, to results/gpu/DEVICE-DATE.json (--json: elsewhere)",
            _gpu, [_gpu_flags]),
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
    if args.command not in ("readme", "gpu") and args.json:  # gpu writes its own file
        with open(args.json, "w") as file:
            json.dump(result, file, indent=2)


__all__ = ["COMMANDS", "DRIVER_OVERHEAD_TARGET", "HEADERS", "SCALING_TARGET", "bench_ddp", "bench_horovod_vs_ddp",
           "bench_pipeline", "ceiling", "driver_overhead", "hand_written_fit", "independent_throughput", "main",
           "parser", "plot_scaling", "scaling", "table_ddp", "table_pipeline", "table_scaling", "throughput"]
