"""What the inventory means for the course: how each notebook runs here, and the inventory as text tables."""

from __future__ import annotations

import importlib.util
from dataclasses import dataclass

from dtutor.devices.records import Inventory


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


def _num(v: float | None) -> str | None:
    return None if v is None else f"{v:.0f}"


def _table(headers: list[str], rows: list[list]) -> str:
    cells = [headers] + [["-" if c is None else str(c) for c in r] for r in rows]
    widths = [max(len(r[i]) for r in cells) for i in range(len(headers))]
    lines = ["  ".join(c.ljust(w) for c, w in zip(r, widths, strict=True)).rstrip() for r in cells]
    return "\n".join([lines[0], "  ".join("-" * w for w in widths), *lines[1:]])


def format_inventory(inv: Inventory) -> str:
    """The inventory as plain-text tables: GPU sources, merged GPUs, CPU cores, backends."""
    src = [[s.name, "ok" if s.ok else "failed", len(s.devices), s.error or s.note] for s in inv.sources]
    out = ["GPU sources", _table(["source", "status", "gpus", "detail"], src), "",
           f"GPUs (merged): {len(inv.gpus)}"]
    if inv.gpus:
        gpu = [[g.index, g.name, _num(g.memory_total_mib), _num(g.memory_free_mib), _num(g.utilization_pct),
                g.driver, g.compute_capability, "+".join(g.sources)] for g in inv.gpus]
        out.append(_table(["idx", "name", "MiB total", "MiB free", "util %", "driver", "cc", "sources"], gpu))
    bk = [[b.name, "yes" if b.usable else "no", b.detail] for b in inv.backends.values()]
    out += ["", f"CPU cores: {inv.cpu_logical} logical, {inv.cpu_affinity or '?'} usable by this process",
            "", "Backends", _table(["backend", "usable", "detail"], bk)]
    return "\n".join(out)


def format_recommendations(recs: list[Recommendation]) -> str:
    """The recommendations as a plain-text table."""
    return _table(["nb", "strategy", "mode", "workers", "backend", "how"],
                  [[r.notebook, r.strategy, r.mode, r.workers, r.backend, r.how] for r in recs])
