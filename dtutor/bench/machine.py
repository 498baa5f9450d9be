"""Where a benchmark ran: recorded with every result kept as data (``results/``), so a number keeps its context.

    from dtutor.bench.machine import machine
    machine()   # {"date": ..., "cpus": 2, "gpus": [], "versions": {"torch": ...}, "load_before": 0.4, ...}
"""

from __future__ import annotations

import contextlib
import datetime
import importlib.metadata
import os
import platform
from typing import Any

from dtutor.config import gpu_count

PACKAGES = ("torch", "tensorflow-cpu", "tensorflow", "horovod", "deepspeed")


def machine() -> dict[str, Any]:
    """Where the benchmark runs: CPUs, GPUs, library versions, the date and the load average now."""
    versions = {}
    for package in PACKAGES:
        with contextlib.suppress(importlib.metadata.PackageNotFoundError):
            versions[package] = importlib.metadata.version(package)
    gpus = gpu_count()
    names, driver = [], None
    if gpus:
        import torch

        from dtutor.devices import probe_nvml

        names = [torch.cuda.get_device_name(i) for i in range(gpus)]
        with contextlib.suppress(Exception):  # no NVML: the driver stays unknown
            driver = next((gpu.driver for gpu in probe_nvml().devices if gpu.driver), None)
        versions["cuda"] = torch.version.cuda
    return {"date": datetime.datetime.now(datetime.UTC).isoformat(timespec="seconds"), "cpus": os.cpu_count(),
            "platform": platform.platform(), "gpus": names, "driver": driver, "versions": versions,
            "gpu_text": f", {gpus} GPU(s) {names}" if gpus else ", no GPU", "load_before": os.getloadavg()[0]}
