"""Start a launch: torchrun (``run``), horovodrun (``run_horovod``), one fresh process (``run_single``),
TensorFlow's multi-worker processes (``run_tf_workers``) and a plain script under torchrun or ``deepspeed``
(``run_script``), each through ``supervisor.supervise``.

Every runner checks its input before any process starts, prints the equivalent terminal command (unless
``quiet``) and returns each rank's return value in rank order, or raises ``LaunchError``.
"""

from __future__ import annotations

import os
import shlex
import sys
import uuid
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from dtutor.config import choose_backend
from dtutor.launch.arguments import worker_arguments
from dtutor.launch.commands import (
    RESTART_ENV,
    TF_WORKER_ENV,
    check_count,
    deepspeed_command,
    horovodrun_command,
    host_slots,
    shell_command,
    takes_backend,
    tf_config,
    tf_worker_words,
    torchrun_command,
)
from dtutor.launch.ports import free_ports
from dtutor.launch.supervisor import supervise


def _threads(threads_per_rank: int | None, local_processes: int) -> int:
    """``OMP_NUM_THREADS`` for each process: as asked, or the cores divided among the local processes."""
    return threads_per_rank or max(1, (os.cpu_count() or 1) // local_processes)


def _with_backend(entry: str, backend: str, nprocs: int, kwargs: dict[str, Any]) -> dict[str, Any]:
    """``kwargs`` with a concrete ``backend`` for entry points that take one (an explicit one is checked)."""
    kwargs = dict(kwargs)
    if "backend" in kwargs:
        kwargs["backend"] = choose_backend(kwargs["backend"], nprocs)
    elif takes_backend(entry):
        kwargs["backend"] = choose_backend(backend, nprocs)
    return kwargs


def run(
    entry: str,
    nprocs: int = 2,
    *,
    nnodes: int = 1,
    backend: str = "auto",
    timeout: float = 300.0,
    threads_per_rank: int | None = None,
    quiet: bool = False,
    max_restarts: int = 0,
    **kwargs: Any,
) -> list[Any]:
    """Run ``entry`` ("module:function") on ``nprocs`` processes per node with torchrun; return each rank's result.

    ``nnodes > 1`` starts that many torchrun launchers on this machine, joined by a c10d rendezvous, as
    stand-ins for separate machines. ``backend`` is passed to entry points that take one, by name or
    through ``**kwargs`` (auto: nccl when there are enough GPUs, else gloo). ``threads_per_rank`` sets
    ``OMP_NUM_THREADS`` (default: the cores divided among the local processes). Output lines are prefixed
    ``[rank N]``; ``quiet`` hides them. Raises ``LaunchError`` if a rank fails or ``timeout`` seconds pass
    (counted once every rank has started the entry point: start-up is forgiven up to a minute).
    ``max_restarts`` (torchrun's ``--max-restarts``): a failed rank first makes torchrun restart every rank, up
    to that many times (``TORCHELASTIC_RESTART_COUNT`` tells a worker its attempt); ``timeout`` covers them all.
    Each attempt gets a rendezvous store of its own (``RESTART_ENV``, shown before the command).
    """
    check_count("nprocs", nprocs)
    check_count("nnodes", nnodes)
    check_count("max_restarts", max_restarts, minimum=0)
    kwargs = _with_backend(entry, backend, nprocs, kwargs)
    python = [sys.executable, "-m", "torch.distributed.run"]
    if nnodes == 1:
        commands = [python + torchrun_command(entry, nprocs, kwargs, max_restarts=max_restarts)[1:]]
    else:
        endpoint, job = f"127.0.0.1:{free_ports(1)[0]}", f"dtutor-{uuid.uuid4().hex[:8]}"
        command = torchrun_command(entry, nprocs, kwargs, nnodes=nnodes, endpoint=endpoint, job_id=job,
                                   max_restarts=max_restarts)
        commands = [python + command[1:]] * nnodes
    env = RESTART_ENV if max_restarts else {}
    display = shell_command([*(f"{name}={value}" for name, value in env.items()), "torchrun", *commands[0][3:]])
    display += f"   # x{nnodes} nodes" if nnodes > 1 else ""
    return supervise(commands, entry=entry, timeout=timeout, quiet=quiet,
                     threads=_threads(threads_per_rank, nprocs * nnodes), envs=[env] * nnodes, display=display,
                     ranks=nprocs * nnodes)


def _check_horovod(framework: str) -> None:
    """Refuse a launch when Horovod is missing or was built without ``framework``."""
    from dtutor.devices import horovod_frameworks

    built = horovod_frameworks()
    if built is None:
        raise RuntimeError("Horovod is not installed here: run ./course setup (it builds Horovod from source)")
    if framework not in built:
        raise RuntimeError(f"this Horovod was built without {framework} (it has: {', '.join(built) or 'none'}); "
                           "rebuild it with ./course setup")


def _check_horovod_launch(nprocs: int, hosts: str | None, framework: str) -> None:
    """Refuse a horovodrun launch that cannot start: more processes than ``hosts`` has slots, or no Horovod
    built for ``framework``."""
    if hosts is not None and host_slots(hosts) < nprocs:
        raise ValueError(f"-np {nprocs} is more than the {host_slots(hosts)} slot(s) in -H {hosts}")
    _check_horovod(framework)


def run_horovod(
    entry: str,
    nprocs: int = 2,
    *,
    framework: str = "torch",
    hosts: str | None = None,
    timeout: float = 300.0,
    threads_per_rank: int | None = None,
    quiet: bool = False,
    **kwargs: Any,
) -> list[Any]:
    """Run ``entry`` on ``nprocs`` processes with ``horovodrun --gloo``; return each rank's result.

    Checked before anything starts: Horovod is installed and built for ``framework`` ("torch" or
    "tensorflow"), and ``nprocs`` does not exceed the slots in ``hosts``. Keras workers run Keras 2
    (``TF_USE_LEGACY_KERAS=1``), which Horovod's Keras integration needs.
    """
    check_count("nprocs", nprocs)
    _check_horovod_launch(nprocs, hosts, framework)
    command = horovodrun_command(entry, nprocs, kwargs, hosts)
    horovodrun = str(Path(sys.executable).with_name("horovodrun"))
    python = command.index("python")
    actual = [horovodrun, *command[1:python], sys.executable, *command[python + 1:]]
    return supervise([actual], entry=entry, timeout=timeout, quiet=quiet, threads=_threads(threads_per_rank, nprocs),
                     envs=[dict(TF_WORKER_ENV)], display=shell_command(command), ranks=nprocs)


def run_deepspeed(entry: str, nprocs: int = 2, *, backend: str = "auto", timeout: float = 300.0,
                  threads_per_rank: int | None = None, quiet: bool = False, **kwargs: Any) -> list[Any]:
    """Run ``entry`` on ``nprocs`` processes with DeepSpeed's own launcher (``deepspeed --num_gpus N``).

    The same workers as ``run`` (torchrun): DeepSpeed's launcher sets ``RANK``, ``WORLD_SIZE`` and the
    master address (a free port here), and adds ``--local_rank=N``. Without GPUs, DeepSpeed's CPU accelerator
    is selected.
    """
    check_count("nprocs", nprocs)
    kwargs = _with_backend(entry, backend, nprocs, kwargs)
    command = deepspeed_command(entry, nprocs, kwargs)
    # its own port, not DeepSpeed's default 29500, which another launch on this machine may hold; errors only
    # (its warning that no hostfile exists is the normal case on one machine)
    actual = [str(Path(sys.executable).with_name("deepspeed")), "--log_level=error",
              f"--master_port={free_ports(1)[0]}", *command[1:]]
    env = {} if "nccl" in str(kwargs.get("backend")) else {"DS_ACCELERATOR": "cpu"}
    return supervise([actual], entry=entry, timeout=timeout, quiet=quiet, threads=_threads(threads_per_rank, nprocs),
                     envs=[env], display=shell_command(command), ranks=nprocs)


def run_script(script: str | Path, nprocs: int = 2, *, launcher: str = "torchrun", args: Sequence[str] = (),
               timeout: float = 300.0, threads_per_rank: int | None = None, quiet: bool = False) -> None:
    """Run a plain training script (a file, not an entry point) on ``nprocs`` processes with its real launcher.

    ``launcher``: "torchrun" (``torchrun --standalone --nproc-per-node N SCRIPT ARGS``) or "deepspeed"
    (``deepspeed --num_gpus N SCRIPT ARGS``; its CPU accelerator without enough GPUs, a free port). The same
    supervision as ``run``: the command printed, output streamed, ``timeout``, every process ended on a failure
    (``LaunchError`` with the last output). The script reports nothing back: it writes its own files.
    """
    check_count("nprocs", nprocs)
    if not Path(script).is_file():
        raise FileNotFoundError(f"no script at {script}")
    words = [str(script), *(str(arg) for arg in args)]
    env: dict[str, str] = {}
    if launcher == "torchrun":
        shown = ["torchrun", "--standalone", f"--nproc-per-node={nprocs}", *words]
        actual = [sys.executable, "-m", "torch.distributed.run", *shown[1:]]
    elif launcher == "deepspeed":
        shown = ["deepspeed", f"--num_gpus={nprocs}", *words]
        actual = [str(Path(sys.executable).with_name("deepspeed")), "--log_level=error",
                  f"--master_port={free_ports(1)[0]}", *shown[1:]]
        from dtutor.pytorch.sharded.deepspeed_zero import deepspeed_environment

        deepspeed_environment()  # as every DeepSpeed run of the course: its compiled helper cached in the venv
        env = {} if choose_backend("auto", nprocs) == "nccl" else {"DS_ACCELERATOR": "cpu"}
    else:
        raise ValueError(f"launcher must be 'torchrun' or 'deepspeed', got {launcher!r}")
    supervise([actual], entry=str(script), timeout=timeout, quiet=quiet, threads=_threads(threads_per_rank, nprocs),
              envs=[env], display=shell_command(shown))


def run_horovod_script(script: str | Path, nprocs: int = 2, *, framework: str = "torch", args: Sequence[str] = (),
                       hosts: str | None = None, timeout: float = 300.0, threads_per_rank: int | None = None,
                       quiet: bool = False) -> None:
    """Run a plain script on ``nprocs`` processes with ``horovodrun --gloo -H HOSTS python SCRIPT ARGS``.

    ``run_script``'s Horovod form, checked first as ``run_horovod`` is: the file exists, Horovod is built for
    ``framework``, ``hosts`` has the slots. The same supervision; the script writes its own files.
    """
    check_count("nprocs", nprocs)
    if not Path(script).is_file():
        raise FileNotFoundError(f"no script at {script}")
    _check_horovod_launch(nprocs, hosts, framework)
    shown = ["horovodrun", "-np", str(nprocs), "--gloo", "-H", hosts or f"localhost:{nprocs}", "python", str(script),
             *(str(arg) for arg in args)]
    actual = [str(Path(sys.executable).with_name("horovodrun")), *shown[1:6], sys.executable, *shown[7:]]
    supervise([actual], entry=str(script), timeout=timeout, quiet=quiet, threads=_threads(threads_per_rank, nprocs),
              envs=[dict(TF_WORKER_ENV)], display=shell_command(shown))


def run_tf_script(script: str | Path, num_workers: int = 2, *, args: Sequence[str] = (), timeout: float = 300.0,
                  threads_per_rank: int | None = None, quiet: bool = False) -> None:
    """Run a plain TensorFlow script as ``num_workers`` worker processes, each with its own ``TF_CONFIG``.

    ``run_script``'s TensorFlow form: MultiWorkerMirroredStrategy's workers (free ports on 127.0.0.1), or for
    ``num_workers=1`` one process without ``TF_CONFIG`` (MirroredStrategy over that process's devices). Each
    worker gets Keras 2 and quiet C++ logs (``TF_WORKER_ENV``); its command is printed as you would type it.
    """
    check_count("num_workers", num_workers)
    if not Path(script).is_file():
        raise FileNotFoundError(f"no script at {script}")
    words = [f"{name}={value}" for name, value in TF_WORKER_ENV.items()]
    words += [shlex.quote(word) for word in ["python", str(script), *(str(arg) for arg in args)]]
    envs = [{**TF_WORKER_ENV, "DTUTOR_RANK": "0"}]
    if num_workers > 1:
        addresses = [f"127.0.0.1:{port}" for port in free_ports(num_workers)]
        envs = [{**TF_WORKER_ENV, "TF_CONFIG": tf_config(addresses, i), "DTUTOR_RANK": str(i)}
                for i in range(num_workers)]
    shown = [shell_command([*([f"TF_CONFIG={shlex.quote(env['TF_CONFIG'])}"] if "TF_CONFIG" in env else []), *words],
                           quote=str) for env in envs]
    if not quiet:
        print("\n".join(f"# worker {i} (on several hosts: replace 127.0.0.1 with each host's address)\n{command}"
                        if num_workers > 1 else f"$ {command}"
                        for i, command in enumerate(shown)))
    supervise([[sys.executable, str(script), *(str(arg) for arg in args)]] * num_workers, entry=str(script),
              timeout=timeout, quiet=quiet, threads=_threads(threads_per_rank, num_workers), envs=envs)


def run_single(entry: str, *, timeout: float = 300.0, env: dict[str, str] | None = None, threads: int | None = None,
               quiet: bool = True, **kwargs: Any) -> Any:
    """Run ``entry`` in one fresh Python process (rank 0) and return its result.

    For work that must not touch this process: a TensorFlow reference run needs its own Keras and device
    configuration, which a process can set only once.
    """
    command = [sys.executable, *worker_arguments(entry, kwargs)]
    return supervise([command], entry=entry, timeout=timeout, quiet=quiet, threads=threads or os.cpu_count() or 1,
                     envs=[{"DTUTOR_RANK": "0", **(env or {})}],
                     display=shell_command(["python", *command[1:]]), ranks=1)[0]


def show_tf_worker_commands(entry: str, num_workers: int = 2, *, ports: list[int] | None = None,
                            **kwargs: Any) -> str:
    """The commands to start ``num_workers`` TensorFlow workers by hand, one terminal (or host) each (long ones
    wrapped with `` \\`` continuations, ``shell_command``)."""
    check_count("num_workers", num_workers)
    ports = ports or [12345 + i for i in range(num_workers)]
    addresses = [f"127.0.0.1:{port}" for port in ports]
    return "\n".join(f"# worker {i} (on several hosts: replace 127.0.0.1 with each host's address)\n"
                     + shell_command(tf_worker_words(entry, kwargs, addresses, i), quote=str)
                     for i in range(num_workers))


def run_tf_workers(entry: str, num_workers: int = 2, *, timeout: float = 300.0, quiet: bool = False,
                   threads_per_rank: int | None = None, **kwargs: Any) -> list[Any]:
    """Run ``entry`` on ``num_workers`` local TensorFlow worker processes; return each worker's result.

    Each worker is ``python -m dtutor.launch ENTRY key=value ...`` with its own ``TF_CONFIG`` (free ports on
    127.0.0.1; ``DTUTOR_RANK`` = its task index), Keras 2 and quiet C++ logs. Bad input raises
    ``ValueError`` before any process starts; a failed worker or the ``timeout`` ends them all and raises
    ``LaunchError`` (``rank`` = the failed worker's task index).
    """
    check_count("num_workers", num_workers)
    arguments = worker_arguments(entry, kwargs)
    addresses = [f"127.0.0.1:{port}" for port in free_ports(num_workers)]
    envs = [{"TF_CONFIG": tf_config(addresses, i), **TF_WORKER_ENV, "DTUTOR_RANK": str(i)}
            for i in range(num_workers)]
    if not quiet:
        ports = [int(address.rpartition(":")[2]) for address in addresses]
        print(show_tf_worker_commands(entry, num_workers, ports=ports, **kwargs))
    return supervise([[sys.executable, *arguments]] * num_workers, entry=entry, timeout=timeout, quiet=quiet,
                     threads=_threads(threads_per_rank, num_workers), envs=envs, ranks=num_workers)
