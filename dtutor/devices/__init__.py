"""What can this machine train with? One inventory of GPUs, CPU cores and distributed backends.

Four sources describe the GPUs, each the way the course shows them: GPUtil (wraps ``nvidia-smi``), NVML
(``nvidia-ml-py``, imported as ``pynvml``), ``torch.cuda`` and TensorFlow's ``list_physical_devices``.
Each answer is kept as a ``SourceReport``: no GPU, no driver or no package is a result that is recorded,
never raised. The devices are merged by UUID (or by index where a source has no UUID), the backends
(gloo, NCCL, MPI, Horovod, DeepSpeed) are checked, and ``recommend_notebook_runs`` says how each notebook runs
here:
on real GPUs, on simulated CPU workers, or not at all (and how to fix that).

Command line: ``python -m dtutor.devices [--json] [--no-tf] [--no-deepspeed]``.

Modules: ``records`` (the dataclasses), ``probes`` (GPU sources and their merge), ``backends``,
``report`` (recommendations and tables), ``cli``; every public name is importable from ``dtutor.devices``.
"""

from __future__ import annotations

import os

from dtutor.devices.backends import _deepspeed_backend, _horovod_backend, _torch_backends, horovod_frameworks
from dtutor.devices.probes import (
    _probe,
    import_quietly,
    merge_devices,
    probe_gputil,
    probe_nvml,
    probe_tensorflow,
    probe_torch,
)
from dtutor.devices.records import MIB, Accelerator, Backend, Inventory, SourceReport
from dtutor.devices.report import (
    NOTEBOOK_TOPICS,
    Recommendation,
    recommend_notebook_runs,
    table_inventory,
    table_recommendations,
)

__all__ = [
    "MIB", "NOTEBOOK_TOPICS", "Accelerator", "Backend", "Inventory", "Recommendation", "SourceReport",
    "horovod_frameworks", "import_quietly", "inventory", "main", "merge_devices", "probe_gputil", "probe_nvml",
    "probe_tensorflow", "probe_torch", "recommend_notebook_runs", "table_inventory", "table_recommendations",
]


def inventory(include_tf: bool = True, include_deepspeed: bool = True) -> Inventory:
    """Probe every GPU source, the CPU and the backends; never raises for a missing GPU, driver or package.

    ``include_tf=False`` keeps TensorFlow out of this process (its report then says it was skipped);
    ``include_deepspeed=False`` only checks that DeepSpeed is installed, without importing it.
    """
    reports = [_probe("gputil", probe_gputil), _probe("nvml", probe_nvml), _probe("torch", probe_torch)]
    if include_tf:
        reports.append(_probe("tensorflow", probe_tensorflow))
    else:
        reports.append(SourceReport("tensorflow", False, error="skipped (include_tf=False)"))
    gpus = merge_devices(reports)
    affinity = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else None
    backends = _torch_backends(len(gpus))
    backends["horovod"] = _horovod_backend()
    backends["deepspeed"] = _deepspeed_backend(include_deepspeed)
    return Inventory(reports, gpus, os.cpu_count() or 1, affinity, backends)


def main(argv: list[str] | None = None) -> int:
    """Command line: print the inventory and the recommendations as tables, or as JSON with ``--json``."""
    from dtutor.devices.cli import main as cli_main

    return cli_main(argv)
