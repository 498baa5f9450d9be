"""What the inventory means for the course: how each notebook runs here, and the inventory as tables."""

from __future__ import annotations

import importlib.util
from dataclasses import dataclass
from typing import TYPE_CHECKING

from dtutor.devices.records import Inventory

if TYPE_CHECKING:
    import pandas as pd


@dataclass
class Recommendation:
    """How one notebook's strategy runs here; ``mode`` is ``gpu``, ``simulated`` or ``unavailable``."""

    notebook: str
    strategy: str
    mode: str
    workers: int
    backend: str
    how: str


NOTEBOOK_TOPICS = {"01": "DataParallel", "02": "DDP", "03": "Horovod", "04": "TF MirroredStrategy",
              "05": "Model/pipeline parallel", "06": "DeepSpeed, FSDP", "07": "Comparison", "08": "Slurm and ssh"}


def recommend_notebook_runs(inv: Inventory, simulated_workers: int | None = None) -> list[Recommendation]:
    """For notebooks 01-08: run on the GPUs, on simulated CPU workers, or not here (and what to do).

    Simulated runs use ``simulated_workers`` workers (default: the usable cores, clamped to 2..4).
    """
    n, be, recs = len(inv.gpus), inv.backends, []
    sim = simulated_workers or max(2, min(4, inv.cpu_cores))

    def add(nb: str, mode: str, workers: int, backend: str, how: str) -> None:
        recs.append(Recommendation(nb, NOTEBOOK_TOPICS[nb], mode, workers, backend, how))

    if n:
        add("01", "gpu", n, "one process", f"nn.DataParallel replicates the model on {n} GPU(s) in threads")
    else:
        add("01", "simulated", 1, "one process", "no GPUs: nn.DataParallel simply calls the module on CPU")
    if n and be["nccl"].usable:
        add("02", "gpu", n, "nccl", f"{n} ranks, one per GPU, all-reduce over NCCL")
    elif be["gloo"].usable:
        add("02", "simulated", sim, "gloo", f"{sim} CPU processes (ranks) all-reduce over gloo")
    else:
        add("02", "unavailable", 0, "-", "this torch build has no gloo backend")
    hvd = be["horovod"]
    if not hvd.usable:
        add("03", "unavailable", 0, "-", hvd.detail)
    elif n and "nccl" in hvd.detail:
        add("03", "gpu", n, "nccl", f"horovodrun -np {n}: one rank per GPU over NCCL")
    else:
        op = "gloo" if "gloo" in hvd.detail else "mpi"
        add("03", "simulated", sim, op, f"horovodrun -np {sim}: {sim} CPU ranks over {op}")
    tf = next((s for s in inv.sources if s.name == "tensorflow" and s.ok), None)
    if tf is None and importlib.util.find_spec("tensorflow") is None:
        add("04", "unavailable", 0, "-", "TensorFlow not installed: run ./course setup")
    elif tf is not None and tf.devices:
        add("04", "gpu", len(tf.devices), "NcclAllReduce",
            f"one replica per GPU ({len(tf.devices)}); MultiWorker: one worker per machine (TF_CONFIG)")
    else:
        add("04", "simulated", sim, "ReductionToOneDevice",
            f"{sim} logical CPU devices as replicas; MultiWorker: {sim} CPU processes (TF_CONFIG)")
    if n >= 2 and be["nccl"].usable:
        add("05", "gpu", 2, "nccl", "2 ranks, one stage per GPU, activations sent over NCCL; TF: /gpu:0 and /gpu:1")
    else:
        add("05", "simulated", 2, "gloo",
            "2 CPU processes, one stage each, sending over gloo; TF: 2 logical CPU devices")
    ds = be["deepspeed"]
    if not ds.usable:
        add("06", "unavailable", 0, "-", ds.detail)
    elif n and "accelerator cuda" in ds.detail:
        add("06", "gpu", n, "nccl", f"deepspeed launcher or torchrun (FSDP): {n} ranks, shards on the GPUs")
    else:
        add("06", "simulated", sim, "gloo",
            f"{sim} gloo ranks (DeepSpeed's CPU accelerator, FSDP), shards in CPU memory")
    add("07", "gpu" if n else "simulated", n or sim, "-",
        "times the strategies above that run here" + ("" if n else "; CPU: speed-up up to the core count"))
    add("08", "gpu" if n else "simulated", n or 2, "nccl" if n and be["nccl"].usable else "gloo",
        "batch scripts written and checked here; jobs need a Slurm cluster")
    return recs


def table_inventory(inv: Inventory) -> tuple[pd.DataFrame, pd.DataFrame, pd.DataFrame]:
    """The inventory as three tables: the GPU sources, the merged GPUs (the CPU cores in its notes), the
    backends."""
    from dtutor.tables import titled, whole

    sources = titled([{"source": s.name, "status": "ok" if s.ok else "failed", "gpus": len(s.devices),
                       "detail": s.error or s.note} for s in inv.sources], "GPU sources")
    gpus = titled([{"idx": g.index, "name": g.name, "MiB total": whole(g.memory_total_mib),
                    "MiB free": whole(g.memory_free_mib), "util %": whole(g.utilization_pct), "driver": g.driver,
                    "cc": g.compute_capability, "sources": "+".join(g.sources)} for g in inv.gpus],
                  f"GPUs (merged): {len(inv.gpus)}",
                  [f"CPU cores: {inv.cpu_logical} logical, {inv.cpu_affinity or '?'} usable by this process"],
                  integers=["MiB total", "MiB free", "util %"])
    backends = titled([{"backend": b.name, "usable": "yes" if b.usable else "no", "detail": b.detail}
                       for b in inv.backends.values()], "Backends")
    return sources, gpus, backends


def table_recommendations(recs: list[Recommendation]) -> pd.DataFrame:
    """How each notebook runs here, one row per notebook."""
    from dtutor.tables import titled

    return titled([{"nb": r.notebook, "strategy": r.strategy, "mode": r.mode, "workers": r.workers,
                    "backend": r.backend, "how": r.how} for r in recs], "How the course runs here")
