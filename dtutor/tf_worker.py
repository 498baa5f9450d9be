"""TensorFlow ``MultiWorkerMirroredStrategy``: N worker processes, each told its place by ``TF_CONFIG``.

Every worker runs the same program; ``TF_CONFIG`` (JSON) lists all workers' ``host:port`` and says which one
this process is. The workers train the seed's CNN as in ``dtutor.tf_mirrored`` and all-reduce their gradients
over gRPC, so all of them end with the same weights (equal to one device's with the same global batch).

Launch recipe, one machine, two terminals (the JSON may span lines); each worker runs the course's worker
runner, ``python -m dtutor.launch ENTRY key=value ...``, like every launch in the course::

    export TF_USE_LEGACY_KERAS=1    # in both terminals
    TF_CONFIG='{"cluster": {"worker": ["127.0.0.1:12345", "127.0.0.1:12346"]},
                "task": {"type": "worker", "index": 0}}' \\
        python -m dtutor.launch dtutor.tf_worker:run_worker mode=fit samples=256 global_batch=64 steps=4
    TF_CONFIG='{"cluster": {"worker": ["127.0.0.1:12345", "127.0.0.1:12346"]},
                "task": {"type": "worker", "index": 1}}' \\
        python -m dtutor.launch dtutor.tf_worker:run_worker mode=fit samples=256 global_batch=64 steps=4

Two hosts: the same two commands, one per host, with the hosts' addresses instead of 127.0.0.1 (ports open
between them). From a notebook or a script: ``launch_workers(2)`` starts them through ``dtutor.launch``'s
shared supervisor (timeout, every worker ended if one fails) and returns every worker's weights.
"""

from __future__ import annotations

import json
import os
import shlex
import socket
import sys
import time
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from dtutor import launch
from dtutor.tf_mirrored import MODES, check_batch

ENTRY = "dtutor.tf_worker:run_worker"
FAULTS = ("crash", "hang")  # injected by the tests: a worker that fails at start, one that never finishes


@dataclass
class WorkersResult:
    """What ``launch_workers`` returns: per worker (by task index) final weights, losses and replica count."""

    weights: list[list[np.ndarray]]
    losses: list[list[float]]
    replicas_in_sync: list[int]
    seconds: float
    commands: list[str] = field(default_factory=list)


def free_ports(count: int) -> list[int]:
    """``count`` distinct free TCP ports on 127.0.0.1 (asked of the OS; held together so they differ)."""
    sockets = [socket.socket() for _ in range(count)]
    try:
        for s in sockets:
            s.bind(("127.0.0.1", 0))
        return [s.getsockname()[1] for s in sockets]
    finally:
        for s in sockets:
            s.close()


def tf_config(addresses: list[str], index: int) -> str:
    """The ``TF_CONFIG`` of worker ``index`` in a cluster of workers at ``addresses`` ("host:port")."""
    return json.dumps({"cluster": {"worker": addresses}, "task": {"type": "worker", "index": index}})


def _kwargs(mode: str, samples: int, global_batch: int, steps: int) -> dict[str, Any]:
    return {"mode": mode, "samples": samples, "global_batch": global_batch, "steps": steps}


def show_commands(num_workers: int = 2, mode: str = "fit", samples: int = 256, global_batch: int = 64,
                  steps: int = 4, ports: list[int] | None = None) -> str:
    """The commands to run the workers by hand, one terminal (or host) each."""
    ports = ports or [12345 + i for i in range(num_workers)]
    addresses = [f"127.0.0.1:{p}" for p in ports]
    args = shlex.join(["python", *launch.worker_arguments(ENTRY, _kwargs(mode, samples, global_batch, steps))])
    lines = [f"# worker {i} (on two hosts: replace 127.0.0.1 with each host's address)\n"
             f"TF_CONFIG={shlex.quote(tf_config(addresses, i))} TF_USE_LEGACY_KERAS=1 {args}"
             for i in range(num_workers)]
    return "\n".join(lines)


def launch_workers(
    num_workers: int = 2, *, mode: str = "fit", samples: int = 256, global_batch: int = 64, steps: int = 4,
    timeout: float = 180.0, fault: dict[int, str] | None = None, verbose: bool = True, tag: str = "",
) -> WorkersResult:
    """Train with ``MultiWorkerMirroredStrategy`` on ``num_workers`` local processes; return their weights.

    Each worker is ``python -m dtutor.launch dtutor.tf_worker:run_worker ...`` with its own ``TF_CONFIG``
    (free ports on 127.0.0.1), run by ``launch.supervise``: if a worker fails, or ``timeout`` seconds pass,
    every worker is ended and ``launch.LaunchError`` names the failed worker (``rank`` = its task index) with
    its traceback. Bad input raises ``ValueError`` before any process starts. ``verbose`` prints the
    equivalent commands and the workers' output. ``fault`` ({task index: "crash"|"hang"}) is for tests, and
    so is ``tag`` (a word put on every worker's command line, to find the processes).
    """
    if not isinstance(num_workers, int) or num_workers < 1:
        raise ValueError(f"num_workers must be an integer >= 1, got {num_workers!r}")
    if mode not in MODES:
        raise ValueError(f"mode must be one of {MODES}, got {mode!r}")
    if not timeout > 0:
        raise ValueError(f"timeout must be positive, got {timeout}")
    check_batch(global_batch, num_workers, samples, steps)  # one replica (one CPU device) per worker
    fault = fault or {}
    if any(i not in range(num_workers) or f not in FAULTS for i, f in fault.items()):
        raise ValueError(f"fault must map task indices < {num_workers} to one of {FAULTS}, got {fault}")
    ports = free_ports(num_workers)
    addresses = [f"127.0.0.1:{p}" for p in ports]
    shown = show_commands(num_workers, mode, samples, global_batch, steps, ports)
    if verbose:
        print(shown)
    kwargs = {**_kwargs(mode, samples, global_batch, steps), **({"tag": tag} if tag else {})}
    faults = [{"fault": fault[i]} if i in fault else {} for i in range(num_workers)]
    commands = [[sys.executable, *launch.worker_arguments(ENTRY, {**kwargs, **extra})] for extra in faults]
    envs = [{"TF_CONFIG": tf_config(addresses, i), "TF_USE_LEGACY_KERAS": "1", "TF_CPP_MIN_LOG_LEVEL": "2",
             "DTUTOR_RANK": str(i)} for i in range(num_workers)]
    threads = max(1, (os.cpu_count() or 1) // num_workers)
    start = time.monotonic()
    reports = launch.supervise(commands, entry=ENTRY, timeout=timeout, quiet=not verbose, threads=threads,
                               envs=envs)
    return WorkersResult([r["weights"] for r in reports], [r["losses"] for r in reports],
                         [r["replicas_in_sync"] for r in reports], time.monotonic() - start, shown.splitlines())


def run_worker(mode: str = "fit", samples: int = 256, global_batch: int = 64, steps: int = 4,
               fault: str | None = None, tag: str = "") -> dict:
    """One worker: read ``TF_CONFIG``, create ``MultiWorkerMirroredStrategy`` first, train, return the result.

    Returns ``task_index``, ``weights`` (final, a list of arrays), ``losses`` and ``replicas_in_sync``. Run it
    through the launch recipe in this module's docstring (one process per ``TF_CONFIG``). ``fault`` and
    ``tag`` are for tests (``tag`` does nothing: it marks the command line).
    """
    config = os.environ.get("TF_CONFIG")
    if not config:
        raise ValueError("TF_CONFIG is not set: see the launch recipe in `pydoc dtutor.tf_worker`")
    index = json.loads(config)["task"]["index"]
    if fault == "crash":
        raise RuntimeError(f"worker {index} failed on purpose (injected fault)")
    if fault == "hang":
        time.sleep(3600)
    from dtutor.tf_mirrored import setup_tensorflow, train

    tf = setup_tensorflow(cpu_replicas=1)
    strategy = tf.distribute.MultiWorkerMirroredStrategy()  # before any other TensorFlow operation
    weights, losses = train(strategy, mode, samples=samples, global_batch=global_batch, steps=steps)
    return {"task_index": index, "weights": weights, "losses": losses,
            "replicas_in_sync": strategy.num_replicas_in_sync}
