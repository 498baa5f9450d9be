"""What the ranks run for ``dtutor.failures.tools``: entry points for ``launch.run``, each a small job that breaks in
one way and returns what each rank saw (its error, the line it was on), so the notebook gets facts, not a crash.

- ``join_without``: one rank never calls ``init_process_group``; the others give up after the group's timeout;
- ``save_then_barrier``: ranks that take different times meet in ``dist.monitored_barrier``;
- ``recorded``: one of ``dtutor.failures.bugs`` with torch's flight recorder on, its record dumped per rank.
"""

from __future__ import annotations

import datetime
import os
import re
import time
import traceback
from collections.abc import Sequence
from pathlib import Path
from typing import Any

LAYERS = (2, 3, 40, 8)  # layers each rank of ``save_then_barrier`` saves (notebook 09's exercise)
SECONDS_PER_LAYER, COMPRESS_SECONDS = 0.1, 4.0  # saving one layer; compressing a shard with an odd layer count
FRAME = re.compile(r'File "(?P<path>[^"]+)", line (?P<line>\d+), in (?P<function>\S+)')


def code_line(trace: str) -> str:
    """Where a traceback's text ends in code outside torch and the standard library: ``file.py:LINE in function``."""
    frames = [match for match in FRAME.finditer(trace)
              if f"{os.sep}torch{os.sep}" not in match["path"] and f"{os.sep}python3." not in match["path"]]
    if not frames:
        return "?"
    return f"{Path(frames[-1]['path']).name}:{frames[-1]['line']} in {frames[-1]['function']}"


def join_without(missing_rank: int = 1, wait: float = 3.0) -> dict:
    """Every rank but ``missing_rank`` joins the gloo group, waiting at most ``wait`` s; the missing rank never calls
    ``init_process_group`` (it crashed before, or got a wrong ``RANK``). Returns what each rank saw."""
    import torch.distributed as dist

    rank = int(os.environ["RANK"])
    if rank == missing_rank:
        return {"rank": rank, "called_init": False}
    start = time.monotonic()
    try:
        dist.init_process_group("gloo", timeout=datetime.timedelta(seconds=wait))
    except Exception as error:  # noqa: BLE001 - the error is the lesson: it goes back to the notebook
        return {"rank": rank, "called_init": True, "waited_s": time.monotonic() - start, "error": type(error).__name__,
                "message": str(error).strip(), "line": code_line(traceback.format_exc())}
    dist.destroy_process_group()
    return {"rank": rank, "called_init": True, "joined": True}


def seconds_before_barrier(layers: int) -> float:
    """How long a rank of ``save_then_barrier`` that saves ``layers`` layers works before it reaches the barrier."""
    return SECONDS_PER_LAYER * layers + (COMPRESS_SECONDS if layers % 2 else 0.0)


def save_then_barrier(layers: Sequence[int] = LAYERS, wait: float = 2.0) -> dict:
    """Rank r saves ``layers[r]`` layers (0.1 s each) and compresses them first when their number is odd (4 s); then
    every rank meets in ``dist.monitored_barrier(timeout=wait s, wait_all_ranks=True)``: rank 0 checks in every other
    rank there and raises, naming the ranks that did not arrive in time. Returns what each rank saw."""
    import torch.distributed as dist

    from dtutor.pytorch.process_group import join_process_group, leave_process_group

    rank, world_size, _ = join_process_group("gloo")
    if len(layers) != world_size:
        raise ValueError(f"layers: one count per rank ({world_size}), got {len(layers)}")
    dist.barrier()  # every rank starts its work together
    time.sleep(seconds_before_barrier(layers[rank]))
    outcome: dict[str, Any] = {"rank": rank, "passed": True}
    try:
        dist.monitored_barrier(timeout=datetime.timedelta(seconds=wait), wait_all_ranks=True)
    except RuntimeError as error:
        outcome = {"rank": rank, "passed": False, "message": str(error).strip().splitlines()[0],
                   "line": code_line(traceback.format_exc())}
    leave_process_group()
    return outcome


def recorded(bug: str = "skip_collective", wait: float = 3.0, dump_dir: str = ".") -> dict:
    """``dtutor.failures.bugs.BUG`` in a gloo group whose collectives give up after ``wait`` s, with torch's flight
    recorder on (``TORCH_FR_BUFFER_SIZE``, here before the group is made). When the hung collective gives up, this
    rank's record goes to ``dump_dir/rank_N``, as ``torch._C._distributed_c10d._dump_fr_trace`` wrote it (on GPUs the
    NCCL watchdog writes it by itself). Returns the rank's error and line."""
    import torch
    import torch.distributed as dist

    from dtutor.failures import bugs

    rank = int(os.environ["RANK"])
    os.environ.setdefault("TORCH_FR_BUFFER_SIZE", "2000")
    dist.init_process_group("gloo", timeout=datetime.timedelta(seconds=wait))  # the bug joins this group
    outcome: dict[str, Any] = {"rank": rank, "error": None, "line": None}
    try:
        getattr(bugs, bug)()
    except RuntimeError as error:
        outcome.update(error=str(error).strip().splitlines()[0], line=code_line(traceback.format_exc()))
    Path(dump_dir, f"rank_{rank}").write_bytes(torch._C._distributed_c10d._dump_fr_trace())
    if dist.is_initialized():
        dist.destroy_process_group()
    return outcome
