"""TensorFlow ``MultiWorkerMirroredStrategy``: N worker processes, each told its place by ``TF_CONFIG``.

Every worker runs the same program; ``TF_CONFIG`` (JSON) lists all workers' ``host:port`` and says which one
this process is. The workers train the seed's CNN as in ``dtutor.tf_mirrored`` and all-reduce their gradients
over gRPC, so all of them end with the same weights (equal to one device's with the same global batch).

Launch recipe, one machine, two terminals (``DIR``: a folder for the results; the JSON may span lines)::

    export TF_USE_LEGACY_KERAS=1    # in both terminals
    TF_CONFIG='{"cluster": {"worker": ["127.0.0.1:12345", "127.0.0.1:12346"]},
                "task": {"type": "worker", "index": 0}}' python -m dtutor.tf_worker --out DIR
    TF_CONFIG='{"cluster": {"worker": ["127.0.0.1:12345", "127.0.0.1:12346"]},
                "task": {"type": "worker", "index": 1}}' python -m dtutor.tf_worker --out DIR

Two hosts: the same two commands, one per host, with the hosts' addresses instead of 127.0.0.1 (ports open
between them). From a notebook or a script: ``launch_workers(2)`` starts them as child processes with a
timeout, stops all of them if one fails, and returns every worker's weights.
"""

from __future__ import annotations

import argparse
import json
import os
import shlex
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from dtutor.launch import LaunchError
from dtutor.tf_mirrored import MODES, check_batch

FAULTS = ("crash", "hang")  # injected by the tests: a worker that fails at start, one that never finishes


class WorkerError(LaunchError):
    """A worker failed (``rank``: its task index, ``remote_traceback``: its stderr tail) or the launch timed
    out (``rank`` None). ``pids``: the worker processes, all ended when this is raised."""

    def __init__(self, message: str, rank: int | None = None, remote_traceback: str = "", pids=()):
        super().__init__(message, rank=rank, remote_traceback=remote_traceback)
        self.pids = list(pids)


@dataclass
class WorkersResult:
    """What ``launch_workers`` returns: per worker (by task index) final weights, losses and replica count."""

    weights: list[list[np.ndarray]]
    losses: list[list[float]]
    replicas_in_sync: list[int]
    seconds: float
    commands: list[str] = field(default_factory=list)
    pids: list[int] = field(default_factory=list)


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


def worker_arguments(out: str, mode: str, samples: int, global_batch: int, steps: int) -> list[str]:
    """The ``-m dtutor.tf_worker ...`` arguments every worker gets."""
    return ["-m", "dtutor.tf_worker", "--out", out, "--mode", mode, "--samples", str(samples),
            "--global-batch", str(global_batch), "--steps", str(steps)]


def show_commands(num_workers: int = 2, mode: str = "fit", samples: int = 256, global_batch: int = 64,
                  steps: int = 4, ports: list[int] | None = None) -> str:
    """The commands to run the workers by hand, one terminal (or host) each."""
    ports = ports or [12345 + i for i in range(num_workers)]
    addresses = [f"127.0.0.1:{p}" for p in ports]
    args = shlex.join(["python", *worker_arguments("DIR", mode, samples, global_batch, steps)])
    lines = [f"# worker {i} (on two hosts: replace 127.0.0.1 with each host's address)\n"
             f"TF_CONFIG={shlex.quote(tf_config(addresses, i))} TF_USE_LEGACY_KERAS=1 {args}"
             for i in range(num_workers)]
    return "\n".join(lines)


def _end(processes: list[subprocess.Popen]) -> None:
    """Kill every worker's process group (each worker leads its own session) and reap them."""
    for process in processes:
        if process.poll() is None:
            try:
                os.killpg(process.pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
    for process in processes:
        process.wait()


def _tail(path: Path, lines: int = 25) -> str:
    return "\n".join(path.read_text(errors="replace").splitlines()[-lines:]) if path.exists() else ""


def launch_workers(
    num_workers: int = 2, *, mode: str = "fit", samples: int = 256, global_batch: int = 64, steps: int = 4,
    timeout: float = 180.0, fault: dict[int, str] | None = None, verbose: bool = True,
) -> WorkersResult:
    """Train with ``MultiWorkerMirroredStrategy`` on ``num_workers`` local processes; return their weights.

    Each worker is ``python -m dtutor.tf_worker`` with its own ``TF_CONFIG`` (free ports on 127.0.0.1), in its
    own process group. If a worker fails, or ``timeout`` seconds pass, every worker is killed and
    ``WorkerError`` names the failed worker with the end of its stderr. Bad input raises ``ValueError`` before
    any process starts. ``verbose`` prints the equivalent commands. ``fault`` ({task index: "crash"|"hang"})
    is for tests.
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
    if verbose:
        print(show_commands(num_workers, mode, samples, global_batch, steps, ports))
    out = Path(tempfile.mkdtemp(prefix="dtutor-tf-workers-"))
    processes: list[subprocess.Popen] = []
    start = time.monotonic()
    try:
        for i in range(num_workers):
            env = {**os.environ, "TF_CONFIG": tf_config(addresses, i), "TF_USE_LEGACY_KERAS": "1",
                   "TF_CPP_MIN_LOG_LEVEL": "2", "DTUTOR_NO_TQDM": "1"}
            argv = [sys.executable, *worker_arguments(str(out), mode, samples, global_batch, steps)]
            argv += ["--fault", fault[i]] if i in fault else []
            with open(out / f"worker{i}.out", "wb") as stdout, open(out / f"worker{i}.err", "wb") as stderr:
                processes.append(subprocess.Popen(argv, env=env, stdout=stdout, stderr=stderr,
                                                  start_new_session=True))
        pids = [p.pid for p in processes]
        failed: list[int] = []
        while any(p.poll() is None for p in processes):
            failed = [i for i, p in enumerate(processes) if p.poll() not in (None, 0)]  # before we kill any
            if failed:
                break
            if time.monotonic() - start > timeout:
                _end(processes)
                raise WorkerError(f"the {num_workers} MultiWorkerMirroredStrategy workers did not finish "
                                  f"within {timeout:g} s; all of them were ended.", pids=pids)
            time.sleep(0.1)
        _end(processes)
        failed = failed or [i for i, p in enumerate(processes) if p.returncode != 0]
        if failed:
            i = failed[0]
            tail = _tail(out / f"worker{i}.err")
            raise WorkerError(f"worker {i} (task index {i}) failed with exit code {processes[i].returncode}; "
                              f"all workers were ended. Its stderr ends with:\n{tail}", rank=i,
                              remote_traceback=tail, pids=pids)
        reports = [json.loads((out / f"worker{i}.json").read_text()) for i in range(num_workers)]
        weights = []
        for i in range(num_workers):
            with np.load(out / f"worker{i}.npz") as saved:
                weights.append([saved[f"arr_{k}"] for k in range(len(saved.files))])
        commands = show_commands(num_workers, mode, samples, global_batch, steps, ports).splitlines()
        losses, replicas = [r["losses"] for r in reports], [r["replicas_in_sync"] for r in reports]
        return WorkersResult(weights, losses, replicas, time.monotonic() - start, commands, pids)
    finally:
        _end(processes)  # also on KeyboardInterrupt: no worker outlives the launch
        shutil.rmtree(out, ignore_errors=True)


def run_worker(out: str, mode: str = "fit", samples: int = 256, global_batch: int = 64, steps: int = 4,
               fault: str | None = None) -> None:
    """One worker: read ``TF_CONFIG``, create ``MultiWorkerMirroredStrategy`` first, train, save to ``out``.

    Writes ``worker<index>.npz`` (final weights) and ``worker<index>.json`` (losses, replicas in sync).
    Run it through the launch recipe in this module's docstring (one process per ``TF_CONFIG``).
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
    np.savez(Path(out) / f"worker{index}.npz", *weights)
    report = {"task_index": index, "losses": losses, "replicas_in_sync": strategy.num_replicas_in_sync}
    (Path(out) / f"worker{index}.json").write_text(json.dumps(report))


def main(argv: list[str] | None = None) -> None:
    """Command line of one worker: ``TF_CONFIG=... python -m dtutor.tf_worker --out DIR [options]``."""
    parser = argparse.ArgumentParser(prog="python -m dtutor.tf_worker", description=__doc__.splitlines()[0],
                                     epilog="Set TF_CONFIG for each worker; see the module docstring.")
    parser.add_argument("--out", required=True, help="folder for worker<index>.npz/.json")
    parser.add_argument("--mode", choices=MODES, default="fit")
    parser.add_argument("--samples", type=int, default=256)
    parser.add_argument("--global-batch", type=int, default=64)
    parser.add_argument("--steps", type=int, default=4)
    parser.add_argument("--fault", choices=FAULTS, help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    run_worker(args.out, args.mode, args.samples, args.global_batch, args.steps, args.fault)


if __name__ == "__main__":
    main()
