"""The launcher commands, as you would type them in a terminal: torchrun and horovodrun, and the backend choice.

Nothing here starts a process; ``runners`` turns these commands into running launches. torch is imported
only inside the functions that need it, so TensorFlow workers can import this package.
"""

from __future__ import annotations

import shlex
from typing import Any

from dtutor.config import ConfigError
from dtutor.launch.arguments import worker_arguments

BACKENDS = ("auto", "gloo", "nccl", "mpi")


def check_count(name: str, value: int) -> None:
    """Refuse a process or node count that is not a whole number >= 1 (``ValueError`` naming ``name``)."""
    if not isinstance(value, int) or isinstance(value, bool) or value < 1:
        raise ValueError(f"{name} must be a whole number >= 1, got {value!r}")


def gpu_count() -> int:
    """Number of CUDA GPUs visible to this process (0 without CUDA)."""
    import torch

    return torch.cuda.device_count() if torch.cuda.is_available() else 0


def choose_backend(backend: str, nprocs: int) -> str:
    """Resolve ``backend``: ``auto`` is nccl when there are at least ``nprocs`` GPUs, else gloo.

    A backend this machine cannot give raises ``ConfigError`` (a ``ValueError``) naming the field and what
    to use instead: a worker started by hand says it in one line.
    """
    import torch.distributed as dist

    if backend not in BACKENDS:
        raise ConfigError(f"backend: unknown backend {backend!r}; choose one of {', '.join(BACKENDS)}")
    if backend == "auto":
        return "nccl" if gpu_count() >= nprocs and dist.is_nccl_available() else "gloo"
    if backend == "nccl" and gpu_count() < nprocs:
        raise ConfigError(
            f"backend: 'nccl' needs one GPU per rank: {nprocs} ranks asked for, {gpu_count()} GPU(s) here. "
            "Use backend=gloo (CPU, or several ranks sharing GPUs) or fewer processes."
        )
    available = {"gloo": dist.is_gloo_available(), "nccl": dist.is_nccl_available(), "mpi": dist.is_mpi_available()}
    if not available[backend]:
        raise ConfigError(f"backend: {backend!r} is not available in this PyTorch build; use backend=gloo")
    return backend


def torchrun_command(
    entry: str, nprocs: int, kwargs: dict[str, Any], *, nnodes: int = 1, endpoint: str = "HOST:29400",
    job_id: str = "dtutor",
) -> list[str]:
    """The torchrun command for one node (``--standalone``) or for ``nnodes`` nodes (c10d rendezvous)."""
    if nnodes == 1:
        head = ["torchrun", "--standalone", f"--nproc-per-node={nprocs}"]
    else:
        head = ["torchrun", f"--nnodes={nnodes}", f"--nproc-per-node={nprocs}", "--rdzv-backend=c10d",
                f"--rdzv-endpoint={endpoint}", f"--rdzv-id={job_id}"]
    return head + worker_arguments(entry, kwargs)


def show_commands(entry: str, nprocs: int = 2, **kwargs: Any) -> str:
    """Text giving the equivalent torchrun commands to run in a terminal: one node, and two nodes."""
    one = shlex.join(torchrun_command(entry, nprocs, kwargs))
    two = shlex.join(torchrun_command(entry, nprocs, kwargs, nnodes=2))
    return (
        f"# one machine, {nprocs} processes:\n{one}\n"
        f"# two machines, {nprocs} processes each (run on both; HOST = the first machine's address):\n{two}"
    )


def host_slots(hosts: str) -> int:
    """The process slots in a horovodrun ``-H`` list such as ``host1:4,host2:4`` (a bare host has one)."""
    try:
        return sum(int(part.rpartition(":")[2]) if ":" in part else 1 for part in hosts.split(","))
    except ValueError as error:
        raise ValueError(f"hosts must look like 'host1:4,host2:4', got {hosts!r}") from error


def horovodrun_command(entry: str, nprocs: int, kwargs: dict[str, Any], hosts: str | None = None) -> list[str]:
    """The ``horovodrun`` command for ``entry`` on ``nprocs`` processes over ``hosts`` (default: this machine)."""
    hosts = hosts or f"localhost:{nprocs}"
    return ["horovodrun", "-np", str(nprocs), "--gloo", "-H", hosts, "python", *worker_arguments(entry, kwargs)]
