"""The communication backends and frameworks: torch.distributed's gloo/NCCL/MPI, Horovod, DeepSpeed."""

from __future__ import annotations

import importlib.util
import shutil
import sys
from pathlib import Path

from dtutor.devices import probes
from dtutor.devices.records import Backend


def _torch_backends(n_gpus: int) -> dict[str, Backend]:
    names = ("gloo", "nccl", "mpi")
    try:
        dist = probes._import("torch.distributed")
        built = {b: dist.is_available() and getattr(dist, f"is_{b}_available")() for b in names}
    except Exception as exc:
        return {b: Backend(b, False, f"torch.distributed: {probes._error(exc)}") for b in names}
    out = {b: Backend(b, ok, "built into torch" if ok else "not built into torch") for b, ok in built.items()}
    if built["nccl"] and n_gpus == 0:
        out["nccl"] = Backend("nccl", False, "built into torch, but needs at least one GPU")
    return out


def horovod_frameworks() -> list[str] | None:
    """Frameworks Horovod was built for, from its compiled extensions (as ``horovodrun --check-build``);
    None when Horovod is not installed. Does not import Horovod."""
    spec = importlib.util.find_spec("horovod")
    if spec is None or not spec.submodule_search_locations:
        return None
    pkg = Path(next(iter(spec.submodule_search_locations)))
    return [fw for fw in ("torch", "tensorflow", "mxnet") if any((pkg / fw).glob("mpi_lib*"))]


def _horovod_backend() -> Backend:
    """Horovod: which framework extensions were built, and what its torch extension was built with."""
    frameworks = horovod_frameworks()
    if frameworks is None:
        return Backend("horovod", False, "not installed: ./course setup builds it (scripts/build_horovod.sh)")
    if not frameworks:
        return Backend("horovod", False, "installed, but built with no framework: rerun ./course setup")
    detail = "frameworks: " + ", ".join(frameworks)
    if "torch" in frameworks:
        try:
            hvd = probes._import("horovod.torch")
            built = [b for b in ("gloo", "mpi", "nccl") if getattr(hvd, f"{b}_built")()]
            detail += "; built with: " + ", ".join(built)
        except Exception as exc:
            return Backend("horovod", False, f"{detail}; import horovod.torch failed: {probes._error(exc)}")
    if not (shutil.which("horovodrun") or Path(sys.executable).with_name("horovodrun").exists()):
        detail += "; horovodrun not found"
    return Backend("horovod", True, detail)


def _deepspeed_backend(probe: bool) -> Backend:
    """DeepSpeed's accelerator and communication backend (``cpu`` and ``gloo`` without GPUs)."""
    if importlib.util.find_spec("deepspeed") is None:
        return Backend("deepspeed", False, "not installed: run ./course setup")
    if not probe:
        return Backend("deepspeed", True, "installed (not imported)")
    try:
        with probes._quiet():
            version = probes._import("deepspeed").__version__
            acc = probes._import("deepspeed.accelerator").get_accelerator()
            name, comm = acc._name, acc.communication_backend_name()
    except Exception as exc:
        return Backend("deepspeed", False, f"import failed: {probes._error(exc)}")
    return Backend("deepspeed", True, f"{version}: accelerator {name}, communication {comm}")
