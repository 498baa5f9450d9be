"""``python -m dtutor.bench gpu``: every path one GPU can run, in at most 8 minutes, into one JSON file.

    DTUTOR_OFFLINE=1 python -m dtutor.bench gpu             # on a GPU machine: results/gpu/<device>-<date>.json
    python -m dtutor.bench gpu --dry-run --gpus 2          # anywhere: the plan checked, the JSON's shape written

The plan (``plan``) is a list of ``Part``s, each with its own time budget and timeout: the device's facts;
``single`` and DataParallel in a fresh process; DDP, FSDP (fp32 and bf16), DeepSpeed ZeRO 1-3 (and ZeRO-2 in bf16)
and ZeRO 2-3 with the optimizer offloaded, each group in one launch of 1 rank on NCCL (``launch.train_many``); the
CNN and a small transformer in fp32 and under bf16 autocast, with counted FLOPs and MFU (``gpu_parts``); the
all-reduce sweep on NCCL (``allreduce.measure``). With 2 GPUs or more: DataParallel's memory per GPU (notebook 01)
and the 2-rank rows, and the sweep on 2 ranks too. The budgets sum to at most ``WINDOW_S``, and a part starts
only if its budget still fits in that window (its timeout is cut to what is left): the run never takes longer.
A part that fails is recorded with its error; the others go on. ``--dry-run`` (CI, any machine) builds and checks
the plan (every config validated, every strategy registered, the budgets within the window) and writes the JSON
with every part "planned", training nothing. Reading a recorded file back: ``gpu_report``.
"""

from __future__ import annotations

import datetime
import json
import re
import tempfile
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from dtutor.bench.report import RESULTS
from dtutor.strategies import STRATEGIES

WINDOW_S = 480.0  # 8 minutes: the budgets sum to at most this, and the run stops starting parts after it
SCHEMA = 1
# every training row: the same CNN, data and steps (5 steps of 256 samples per epoch, the first epoch a warm-up;
# 1,280 samples fit the offline digits, the only data on a machine without network)
RUN = {"global_batch": 256, "samples": 1280, "epochs": 4, "test_samples": 0, "return_parameters": False}
NCCL = {"backend": "nccl"}
ALLREDUCE_SIZES = [4 * 1024 * 4**k for k in range(8)]  # 4 KiB ... 64 MiB


@dataclass(frozen=True)
class Part:
    """One part of the run: what it measures, how (``kind``), on how many ranks, its budget and timeout."""

    name: str
    summary: str
    kind: str  # "inventory", "in_process", "train_many", "models", "allreduce", "dataparallel_memory"
    budget_s: float
    timeout_s: float
    nprocs: int = 1
    min_gpus: int = 1
    runs: list[dict[str, Any]] = field(default_factory=list)  # TrainConfig fields (training parts)
    options: dict[str, Any] = field(default_factory=dict)  # the entry point's keyword arguments (other parts)
    requires: tuple[str, ...] = ()  # packages it imports beyond torch: without one it is skipped, not failed


def _training(*names: tuple[str, dict[str, Any]], backend: dict[str, str] | None = None) -> list[dict[str, Any]]:
    return [{"strategy": strategy, **RUN, **(backend or {}), **extra} for strategy, extra in names]


def _sharded(nccl: dict[str, str]) -> list[dict[str, Any]]:
    return _training(("ddp", {}), ("fsdp", {}), ("fsdp", {"precision": "bf16"}), backend=nccl)


def _zero(nccl: dict[str, str]) -> list[dict[str, Any]]:
    return _training(*(("deepspeed", {"zero_stage": stage}) for stage in (1, 2, 3)),
                     ("deepspeed", {"zero_stage": 2, "precision": "bf16"}), backend=nccl)


def plan(gpus: int = 1) -> list[Part]:
    """The parts to run on a machine of ``gpus`` GPUs (2 or more add the 2-rank parts), in order."""
    parts = [
        Part("inventory", "GPUs, memory, driver, CUDA, cuDNN, NCCL, torch, DeepSpeed", "inventory", 15, 60),
        Part("in_process", "single and DataParallel (one process, the driver)", "in_process", 30, 90,
             runs=_training(("single", {}), ("dataparallel", {}))),
        Part("ddp_fsdp", "DDP and FSDP (fp32, bf16), 1 rank, NCCL, one launch", "train_many", 45, 120,
             runs=_sharded(NCCL)),
        Part("zero", "DeepSpeed ZeRO 1, 2, 3 and ZeRO-2 in bf16, 1 rank, NCCL, one launch", "train_many", 60, 150,
             runs=_zero(NCCL), requires=("deepspeed",)),
        Part("offload", "DeepSpeed ZeRO 2 and 3 with the optimizer in CPU memory, 1 rank, one launch", "train_many",
             60, 150, runs=_training(*(("deepspeed", {"zero_stage": s, "offload": True}) for s in (2, 3)),
                                    backend=NCCL), requires=("deepspeed",)),
        Part("autocast_mfu", "CNN and small transformer, fp32 and bf16 autocast: time/step, FLOPs, MFU", "models",
             45, 150, options={"models": ["cnn", "transformer"], "precisions": ["fp32", "bf16"], "seconds": 3.0}),
        Part("allreduce", "all-reduce 4 KiB to 64 MiB on 1 rank (NCCL): the call's fixed cost", "allreduce", 30, 90,
             options={"sizes": ALLREDUCE_SIZES, "budget": 0.1}),
    ]
    if gpus >= 2:
        parts += [
            Part("dataparallel_memory", "DataParallel's peak memory on each GPU (notebook 01)", "dataparallel_memory",
                 30, 90, min_gpus=2),
            Part("two_ranks", "DDP and FSDP on 2 ranks (NCCL), one launch", "train_many", 45, 120, nprocs=2,
                 min_gpus=2, runs=_sharded(NCCL)[:2]),
            Part("two_ranks_zero", "DeepSpeed ZeRO 1-3 on 2 ranks (NCCL), one launch", "train_many", 60, 150,
                 nprocs=2, min_gpus=2, runs=_zero(NCCL)[:3], requires=("deepspeed",)),
            Part("allreduce_2", "all-reduce 4 KiB to 64 MiB on 2 ranks (NCCL): latency, busbw", "allreduce", 30, 90,
                 nprocs=2, min_gpus=2, options={"sizes": ALLREDUCE_SIZES, "budget": 0.1}),
        ]
    return parts


def check_plan(parts: list[Part]) -> list[str]:
    """Every problem of ``parts`` (empty: none): budgets over ``WINDOW_S``, a budget over its timeout, an unknown
    strategy, a config that ``launch.training.prepare`` refuses (checked on gloo: this may be a CPU machine; NCCL's
    one GPU per rank is ``min_gpus``), DeepSpeed's config for CUDA, repeated part names."""
    from dtutor.config import ConfigError
    from dtutor.launch.training import prepare
    from dtutor.pytorch.sharded.deepspeed_config import deepspeed_config

    problems = []
    total = sum(part.budget_s for part in parts)
    if total > WINDOW_S:
        problems.append(f"budgets sum to {total:.0f} s, over the {WINDOW_S:.0f} s window")
    if len({part.name for part in parts}) != len(parts):
        problems.append("two parts share a name")
    for part in parts:
        if part.budget_s > part.timeout_s:
            problems.append(f"{part.name}: budget {part.budget_s} s over its timeout {part.timeout_s} s")
        if part.nprocs > part.min_gpus:
            problems.append(f"{part.name}: {part.nprocs} ranks need {part.nprocs} GPUs, min_gpus is {part.min_gpus}")
        for fields in part.runs:
            if fields.get("strategy") not in STRATEGIES:
                problems.append(f"{part.name}: unknown strategy {fields.get('strategy')!r}")
                continue
            try:
                config = prepare(part.nprocs, 1, {**fields, "backend": "gloo"} if "backend" in fields else fields)
                if config.strategy == "deepspeed":
                    deepspeed_config(config, part.nprocs, "cuda")
            except (ConfigError, ValueError) as error:
                problems.append(f"{part.name}: {fields['strategy']}: {error}")
    return problems


def slug(name: str) -> str:
    """A device name as a file name: "NVIDIA H100 80GB HBM3" -> "nvidia-h100-80gb-hbm3"."""
    return re.sub(r"[^a-z0-9]+", "-", name.lower()).strip("-") or "unknown"


def skeleton(parts: list[Part], dry_run: bool) -> dict[str, Any]:
    """The result's shape, every part "planned": what a run fills in, and what ``--dry-run`` writes."""
    from dtutor import data
    from dtutor.bench.machine import machine

    today = datetime.datetime.now(datetime.UTC).date().isoformat()
    return {"kind": "bench gpu", "schema": SCHEMA, "dry_run": dry_run, "device": None, "date": today,
            "window_s": WINDOW_S, "budget_s": sum(p.budget_s for p in parts), "seconds": None, "machine": machine(),
            "versions": {}, "peak": None, "dataparallel_memory": None,
            "data": {"offline": data.offline(), "train_samples": data.split_size("train")},
            "parts": {part.name: {**asdict(part), "status": "planned", "seconds": None, "error": None,
                                  "result": None} for part in parts}}


def default_path(result: dict[str, Any]) -> Path:
    """Where a real run is kept: ``results/gpu/<device slug>-<date>.json``."""
    return RESULTS / "gpu" / f"{slug(result['device'] or 'unknown')}-{result['date']}.json"


def write(result: dict[str, Any], path: str | Path | None) -> Path:
    """Write ``result`` as JSON to ``path`` (None: ``default_path``, or a temporary file for a dry run)."""
    if path is None:
        path = tempfile.mkstemp(prefix="bench-gpu-", suffix=".json")[1] if result["dry_run"] else default_path(result)
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(result, indent=2, default=str) + "\n")
    return path


def dry_run(gpus: int = 2, path: str | Path | None = None) -> tuple[dict[str, Any], Path]:
    """Build and check the plan for ``gpus`` GPUs and write its JSON with every part "planned"; raise ``ValueError``
    listing the problems if the plan has any. Nothing is trained, nothing is launched."""
    parts = plan(gpus)
    problems = check_plan(parts)
    if problems:
        raise ValueError("the GPU plan has problems:\n" + "\n".join(problems))
    result = skeleton(parts, dry_run=True)
    return result, write(result, path)


def run(path: str | Path | None = None, progress: Any = print) -> tuple[dict[str, Any], Path]:
    """The real run (a CUDA machine: ``gpu_run.run_parts``), written to ``path`` (default ``default_path``)."""
    from dtutor.bench.gpu_run import run_parts
    from dtutor.config import gpu_count

    gpus = gpu_count()
    if not gpus:
        raise SystemExit("python -m dtutor.bench gpu: no CUDA GPU here (torch.cuda.is_available() is False), so "
                         "nothing was run; on this machine, check the plan with: python -m dtutor.bench gpu --dry-run")
    parts = plan(gpus)
    problems = check_plan(parts)
    if problems:
        raise ValueError("the GPU plan has problems:\n" + "\n".join(problems))
    result = run_parts(skeleton(parts, dry_run=False), parts, gpus, progress)
    return result, write(result, path)
