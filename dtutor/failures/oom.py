"""Out of memory on one rank: every rank gets the same memory limit, one rank needs more than it, and dies.

On a GPU the limit is the card's memory and the failure is ``torch.OutOfMemoryError: CUDA out of memory``; here on
CPUs each rank limits its own address space (``resource.setrlimit(RLIMIT_AS, ...)``: what it has mapped so far
plus ``limit_mb``), then allocates its activations. One rank's batch needs more (uneven sequence lengths, a
bigger image) and torch's CPU allocator refuses it: ``RuntimeError: ... DefaultCPUAllocator: not enough memory``.
The other ranks go on to the next all-reduce and wait there for the rank that will never come; the course's
launcher sees the dead rank, ends every process, and ``LaunchError`` names the rank with its traceback.

``out_of_memory()`` launches ``need_memory`` on 2 ranks and returns the plain facts of the failure (``OomFailure``).
Entry point, in a terminal::

    torchrun --standalone --nproc-per-node 2 -m dtutor.launch dtutor.failures.oom:need_memory heavy_rank=1
"""

from __future__ import annotations

import re
import resource
import textwrap
import time
from dataclasses import dataclass

import psutil

from dtutor import launch

MB = 2**20
FRAME = re.compile(r'File "(?:[^"]*/)?([^"/]+)", line (\d+), in (\S+)')


def limit_address_space(extra_bytes: int) -> int:
    """Let this process map at most ``extra_bytes`` more than it has mapped now (``RLIMIT_AS``); return the limit."""
    limit = psutil.Process().memory_info().vms + extra_bytes
    resource.setrlimit(resource.RLIMIT_AS, (limit, resource.getrlimit(resource.RLIMIT_AS)[1]))
    return limit


def need_memory(heavy_rank: int = 1, limit_mb: int = 512, need_mb: int = 64, heavy_mb: int = 2048,
                backend: str = "gloo") -> dict:
    """Entry point: every rank limits itself to ``limit_mb`` more than it has mapped, then allocates its activations,
    ``need_mb`` (``heavy_mb`` on ``heavy_rank``), then all-reduces. Returns the rank and megabytes allocated."""
    import torch
    import torch.distributed as dist

    from dtutor.pytorch.process_group import join_process_group, leave_process_group

    rank, _, _ = join_process_group(backend)
    try:
        dist.barrier()  # gloo's threads and buffers exist before the limit: only the activations meet it
        limit_address_space(limit_mb * MB)
        megabytes = heavy_mb if rank == heavy_rank else need_mb
        activations = torch.ones(megabytes * MB // 4)  # float32: 4 bytes each
        total = activations[:1].clone()
        dist.all_reduce(total)  # the ranks that got their memory wait here for the one that did not
        return {"rank": rank, "allocated_mb": megabytes}
    finally:
        leave_process_group()


@dataclass
class OomFailure:
    """How an out-of-memory rank looks from the launch."""

    message: str  # LaunchError's first line
    rank: int | None  # the rank LaunchError names
    error: str  # the traceback's last line: the exception and its message
    where: str  # the last Python frame: "file.py:line in function"
    limit_mb: int
    heavy_mb: int
    seconds: float  # from the launch to LaunchError, every process ended


def last_frame(traceback_text: str) -> str:
    """``file.py:line in function`` of a traceback's last frame ("" if it has none)."""
    frames = FRAME.findall(traceback_text)
    return f"{frames[-1][0]}:{frames[-1][1]} in {frames[-1][2]}" if frames else ""


def _error_line(traceback_text: str) -> str:
    """The traceback's last non-empty line: the exception and its message."""
    lines = [line for line in traceback_text.strip().splitlines() if line.strip()]
    return lines[-1] if lines else ""


def out_of_memory(nprocs: int = 2, heavy_rank: int = 1, *, limit_mb: int = 512, heavy_mb: int = 2048,
                  timeout: float = 60.0, show: bool = True) -> OomFailure:
    """Launch ``need_memory`` on ``nprocs`` ranks, ``heavy_rank`` needing ``heavy_mb`` beyond a ``limit_mb`` limit;
    return what the launch reports. Every process is ended before it returns (the launcher's guarantee)."""
    start = time.monotonic()
    try:
        launch.run("dtutor.failures.oom:need_memory", nprocs, timeout=timeout, quiet=True, heavy_rank=heavy_rank,
                   limit_mb=limit_mb, heavy_mb=heavy_mb)
    except launch.LaunchError as error:
        text = error.remote_traceback
        failure = OomFailure(str(error).splitlines()[0], error.rank, _error_line(text), last_frame(text),
                             limit_mb, heavy_mb, time.monotonic() - start)
    else:
        raise RuntimeError(f"rank {heavy_rank} allocated {heavy_mb} MB within a {limit_mb} MB limit: raise heavy_mb")
    if show:
        print(f"LaunchError, rank={failure.rank}: {failure.message}")
        print(f"  at {failure.where}")
        print(textwrap.fill(failure.error, 140, initial_indent="  ", subsequent_indent="    "))
    return failure
