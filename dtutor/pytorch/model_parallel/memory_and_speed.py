"""The measured table: parameter memory each rank holds under each split, and the training speed of each.

``parameter_memory`` (an entry point, one process per rank) builds the model and measures, on every rank,
the bytes of the parameters that rank holds: the whole model (no split), its part of the article's split, its
pipeline stage, and its tensor-parallel shards (``DTensor.to_local()``). ``training_speed`` trains each
strategy through the driver and reports samples/s after a warm-up epoch.

Caveats on a CPU: the 2 "devices" are 2 processes sharing the same cores and memory, and every activation
crosses through gloo over the loopback network. Model parallelism there only adds communication and
waiting: the samples/s show its cost, not its benefit. Its purpose on GPUs is the memory column: a model
that does not fit one device fits p of them.

Launch recipes::

    dtutor.launch.run("dtutor.pytorch.model_parallel.memory_and_speed:parameter_memory", 2, model="cnn")
    dtutor.pytorch.model_parallel.memory_and_speed.measured_table("cnn")     # both, as table rows
"""

from __future__ import annotations

from collections.abc import Callable
from typing import TYPE_CHECKING, Any

import torch.distributed as dist
from torch.distributed.device_mesh import init_device_mesh
from torch.distributed.tensor.parallel import parallelize_module

from dtutor import models
from dtutor.pytorch.model_parallel import stages as st
from dtutor.pytorch.model_parallel.split import split_cnn
from dtutor.pytorch.model_parallel.tensor_parallel import tensor_parallel_plan
from dtutor.pytorch.process_group import join_process_group, leave_process_group

if TYPE_CHECKING:
    import pandas as pd

LAYOUTS = {  # layout -> the driver's strategies that use it (None: a demo, not a strategy)
    "unsplit": ("single",),
    "article's split (part1 | part2)": (None,),
    "pipeline stages": ("pipeline_gpipe", "pipeline_1f1b"),
    "tensor parallel shards": ("tensor_parallel",),
}
SPEED_OPTIONS = {"pipeline_gpipe": {"micro_batches": 4}, "pipeline_1f1b": {"micro_batches": 4}}


def parameter_memory(model: str = "cnn", seed: int = 0, backend: str = "gloo") -> dict[str, list[int]]:
    """Entry point: per layout (``LAYOUTS``), the parameter bytes each rank holds, the same on every rank.

    The article's split exists for the CNN on 2 ranks only; it is left out otherwise.
    """
    rank, world, device = join_process_group(backend)
    try:
        net = models.seeded(models.by_name(model), seed).to(device)
        mine = {"unsplit": st.parameter_bytes(net)}
        if model == "cnn" and world == 2:
            mine["article's split (part1 | part2)"] = st.parameter_bytes(split_cnn(net)[rank])
        cuts = st.even_cuts(len(models.pipeline_layers(net)), world)
        mine["pipeline stages"] = st.parameter_bytes(st.stage_modules(net, cuts)[rank])
        sharded = models.seeded(models.by_name(model), seed).to(device)
        parallelize_module(sharded, init_device_mesh(device.type, (world,)), tensor_parallel_plan(sharded))
        mine["tensor parallel shards"] = st.parameter_bytes(sharded)
        everyone: list[Any] = [None] * world
        dist.all_gather_object(everyone, mine)
        return {layout: [ranks[layout] for ranks in everyone] for layout in mine}
    finally:
        leave_process_group()


def training_speed(strategy: str, model: str = "cnn", nprocs: int = 2, global_batch: int = 64,
                   samples: int = 1024, epochs: int = 3, timeout: float = 300.0) -> float:
    """Samples/s of ``strategy`` through the driver, the first epoch discarded as warm-up."""
    from dtutor import launch

    nprocs = 1 if strategy == "single" else nprocs
    results = launch.train(nprocs, strategy=strategy, model=model, global_batch=global_batch, samples=samples,
                           epochs=epochs, test_samples=0, return_parameters=False, timeout=timeout, quiet=True,
                           **SPEED_OPTIONS.get(strategy, {}))
    return results[0].samples_per_second()


def measured_table(model: str = "cnn", nprocs: int = 2, speed: bool = True,
                   log: Callable[[str], None] | None = None) -> list[dict[str, Any]]:
    """Rows: layout, strategy, bytes per rank, largest share of the unsplit model, samples/s (if ``speed``).

    ``log`` (e.g. ``print``) gets a line before each launch: the table takes a while.
    """
    from dtutor import launch

    say = log or (lambda text: None)
    say(f"parameter bytes per rank of every layout, {nprocs} ranks ...")
    memory = launch.run(f"{__name__}:parameter_memory", nprocs, quiet=True, model=model)[0]
    whole = memory["unsplit"][0]
    rows = []
    for layout, per_rank in memory.items():
        for strategy in LAYOUTS[layout]:
            if speed and strategy:
                say(f"samples/s of {strategy} ...")
            rate = training_speed(strategy, model, nprocs) if speed and strategy else None
            rows.append({"layout": layout, "strategy": strategy or "-", "bytes_per_rank": per_rank,
                         "largest_share": max(per_rank) / whole, "samples_per_s": rate})
    return rows


def table_memory(rows: list[dict[str, Any]]) -> pd.DataFrame:
    """The table for people: kB per rank (1 kB = 1,024 bytes), the largest rank's share of the unsplit model
    in %, samples/s."""
    from dtutor.tables import titled, whole

    return titled([{"layout": row["layout"], "strategy": row["strategy"],
                    "parameter kB per rank": " | ".join(f"{b / 1024:,.1f}" for b in row["bytes_per_rank"]),
                    "largest share %": round(100 * row["largest_share"]), "samples/s": whole(row["samples_per_s"])}
                   for row in rows], integers=["samples/s"])
