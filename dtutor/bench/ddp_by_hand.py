"""``python -m dtutor.bench ddp_by_hand``: time per step of DDP built by hand (naive, bucketed, overlapped; see
``dtutor.pytorch.ddp_by_hand``) beside torch's ``DistributedDataParallel``, with each one's all-reduce calls per step.

Every version trains the same seeded MLP (``models.wide_mlp``) on the same MNIST batch on 2 gloo ranks, one
thread each, in one launch. The first two steps of each are counted (``CollectiveCounter``, which slows them)
and never timed: torch's DDP puts every gradient in one bucket for its first step and rebuilds its buckets
after it, so the second step shows the calls of every later one. Then ``steps`` steps are timed, each by its
slowest rank; the table gives their median and spread (the interquartile range). torch's DDP gets the same
bucket size (``bucket_cap_mb``) as the hand-written versions. Launch recipe (what ``bench_ddp_by_hand`` starts)::

    torchrun --standalone --nproc-per-node=2 -m dtutor.launch dtutor.bench.ddp_by_hand:time_versions \\
        width=64 depth=2 batch_per_rank=16 bucket_bytes=16384 steps=5
"""

from __future__ import annotations

from statistics import median, quantiles
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    import pandas as pd

TIMED = ("naive", "bucketed", "overlapped", "torch_ddp")
MODES = {  # quick: a tiny model for the test and a first look; full: the README's settings
    "quick": {"width": 64, "depth": 2, "batch_per_rank": 16, "bucket_bytes": 16 * 1024, "steps": 5},
    "full": {"width": 1024, "depth": 4, "batch_per_rank": 64, "bucket_bytes": 4 * 2**20, "steps": 30},
}


def time_versions(width: int, depth: int, batch_per_rank: int, bucket_bytes: int, steps: int,
                  backend: str = "gloo") -> dict[str, Any]:
    """Entry point (every rank): each version of ``TIMED`` trains ``wide_mlp(width, depth)`` for 2 counted and
    ``steps`` timed steps; returns per version its all-reduce calls in the two counted steps and the timed steps'
    seconds (the slowest rank's, per step)."""
    import torch
    import torch.distributed as dist

    from dtutor import data, models
    from dtutor.pytorch.ddp_by_hand import train_version
    from dtutor.pytorch.process_group import join_process_group, leave_process_group

    rank, world_size, _ = join_process_group(backend)
    try:
        batch = data.rank_share(data.global_batches(1, batch_per_rank * world_size), world_size, rank)
        versions = {}
        for version in TIMED:
            model = models.seeded(models.wide_mlp, 0, width=width, depth=depth)
            trained = train_version(version, model, batch * (steps + 2), bucket_bytes=bucket_bytes, count_steps=2)
            slowest = torch.tensor(trained["seconds"], dtype=torch.float64)
            dist.all_reduce(slowest, op=dist.ReduceOp.MAX)
            versions[version] = {"all_reduce_calls": trained["all_reduce_calls"], "seconds": slowest.tolist()}
        return {"parameters": models.count_parameters(model), "tensors": len(list(model.parameters())),
                "versions": versions}
    finally:
        leave_process_group()


def bench_ddp_by_hand(mode: str = "full", timeout: float = 600.0) -> dict[str, Any]:
    """One launch of ``time_versions`` on 2 gloo ranks with ``MODES[mode]``; rank 0's result and the settings."""
    from dtutor import launch

    settings = MODES[mode]
    result = launch.run("dtutor.bench.ddp_by_hand:time_versions", 2, backend="gloo", timeout=timeout,
                        threads_per_rank=1, quiet=True, **settings)[0]
    return {"mode": mode, "ranks": 2, **settings, **result}


def _size(size: int) -> str:
    """``size`` bytes in MiB from 1 MiB on, else in KiB."""
    return f"{size / 2**20:g} MiB" if size >= 2**20 else f"{size / 2**10:g} KiB"


def table_ddp_by_hand(result: dict[str, Any]) -> pd.DataFrame:
    """One row per version: all-reduce calls in the first and every later step, median and spread of the time per
    step, and the median against the naive version's; the notes say what was trained."""
    from dtutor.tables import titled

    naive = median(result["versions"]["naive"]["seconds"])
    rows = []
    for version, measured in result["versions"].items():
        seconds = measured["seconds"]
        low, _, high = quantiles(seconds, n=4, method="inclusive") if len(seconds) > 1 else (seconds[0],) * 3
        rows.append({"version": version, "all-reduces step 1": measured["all_reduce_calls"][0],
                     "all-reduces later steps": measured["all_reduce_calls"][1],
                     "median ms": round(median(seconds) * 1e3, 2), "spread (IQR) ms": round((high - low) * 1e3, 2),
                     "vs naive": round(median(seconds) / naive, 2)})
    title = (f"DDP by hand against torch's DDP: time per step on {result['ranks']} gloo ranks, {result['mode']} mode, "
             f"{len(result['versions']['naive']['seconds'])} timed steps each")
    notes = [f"model: wide_mlp(width={result['width']}, depth={result['depth']}), {result['parameters']:,} parameters "
             f"in {result['tensors']} tensors; {result['batch_per_rank']} samples per rank and step; buckets of "
             f"{_size(result['bucket_bytes'])} (torch's DDP: the same bucket_cap_mb)"]
    return titled(rows, title, notes)
