"""The launcher commands, as you would type them in a terminal: torchrun, horovodrun and DeepSpeed's launcher.

Nothing here starts a process; ``runners`` turns these commands into running launches. torch is imported
only inside the functions that need it, so TensorFlow workers can import this package.
"""

from __future__ import annotations

import contextlib
import inspect
import json
import os
import shlex
from collections.abc import Callable, Iterator
from typing import Any

from dtutor.launch.arguments import resolve_entry, worker_arguments

# The training driver of each framework (a StrategyInfo.framework of dtutor.strategies), as a worker's entry point
DRIVERS = {"torch": "dtutor.pytorch.driver:train", "tensorflow": "dtutor.tf.driver:train"}
# What TensorFlow workers need: Keras 2 (Horovod's Keras integration and the course's Keras code), quiet C++
TF_WORKER_ENV = {"TF_USE_LEGACY_KERAS": "1", "TF_CPP_MIN_LOG_LEVEL": "2"}
# Bounded waits of a multi-node rendezvous: the nodes wait up to join_timeout s for each other; a node that
# cannot reach HOST stops after about 2 x read_timeout s (torchrun's defaults: 600 s and about 2 minutes).
RENDEZVOUS_CONF = "join_timeout=120,read_timeout=30"
# With restarts, every attempt gets a rendezvous store of its own: torch 2.13's restarted workers otherwise read the
# dead attempt's gloo/nccl addresses from the store torchrun shares with them and fail to connect (pytorch#135712)
RESTART_ENV = {"TORCH_DISABLE_SHARE_RDZV_TCP_STORE": "1"}
COMMAND_WIDTH = 100  # a shown command longer than this is wrapped with ` \\` continuations
WORKER_STARTS = ("-m", "--module", "python")  # where the launcher's options end and the worker's command starts
HOST_HELP = ("HOST = the address of the machine you start first (its name, or an IP from `hostname -I`;\n"
             "# to try it on one machine: two terminals, HOST = 127.0.0.1)")


def check_count(name: str, value: int, minimum: int = 1) -> None:
    """Refuse a count (processes, nodes, restarts) that is not a whole number >= ``minimum`` (``ValueError``
    naming ``name``)."""
    if not isinstance(value, int) or isinstance(value, bool) or value < minimum:
        raise ValueError(f"{name} must be a whole number >= {minimum}, got {value!r}")


def shell_command(words: list[str], width: int = COMMAND_WIDTH, *,
                  quote: Callable[[str], str] = shlex.quote) -> str:
    """``words`` as one shell command to copy, wrapped with `` \\`` continuations when longer than ``width``.

    A long command puts the launcher's options first and the worker's command (from ``-m``, ``--module`` or
    ``python``) on a new line; each part fills lines up to ``width`` characters, continued lines indented.
    ``quote`` makes each word a shell word (``str`` for words already quoted: ``$VARIABLES`` in double
    quotes, or a quoted inner command that ``shell_command`` wrapped itself, whose lines are kept).
    """
    quoted = [quote(word) for word in words]
    if max(len(line) for line in " ".join(quoted).splitlines() or [""]) <= width:
        return " ".join(quoted)
    start = next((i for i, word in enumerate(words) if i > 1 and word in WORKER_STARTS), len(words))
    lines: list[str] = []
    for part in (quoted[:start], quoted[start:]):
        line = ""
        for word in part:
            first = word.partition("\n")[0]
            if line and len(line.rpartition("\n")[2]) + 1 + len(first) > width:
                lines.append(line)
                line = ""
            line = f"{line} {word}" if line else ("    " if lines else "") + word
        lines += [line] if line else []
    return " \\\n".join(lines)


def tf_config(addresses: list[str], index: int) -> str:
    """The ``TF_CONFIG`` of worker ``index`` in a cluster of workers at ``addresses`` ("host:port")."""
    return json.dumps({"cluster": {"worker": addresses}, "task": {"type": "worker", "index": index}})


def tf_worker_words(entry: str, kwargs: dict[str, Any], addresses: list[str], index: int) -> list[str]:
    """TensorFlow worker ``index``'s command, as shell words already quoted: its ``TF_CONFIG``, ``TF_WORKER_ENV``
    and ``python -m dtutor.launch ENTRY key=value ...`` (for ``shell_command(..., quote=str)``)."""
    settings = [f"{name}={value}" for name, value in TF_WORKER_ENV.items()]
    worker = [shlex.quote(word) for word in ["python", *worker_arguments(entry, kwargs)]]
    return [f"TF_CONFIG={shlex.quote(tf_config(addresses, index))}", *settings, *worker]


def torchrun_command(
    entry: str, nprocs: int, kwargs: dict[str, Any], *, nnodes: int = 1, endpoint: str = "HOST:29400",
    job_id: str = "dtutor", max_restarts: int = 0,
) -> list[str]:
    """The torchrun command for one node (``--standalone``) or for ``nnodes`` nodes (c10d rendezvous).

    The multi-node form bounds its waits (``RENDEZVOUS_CONF``): torchrun stops with a ``Rendezvous...Error``
    instead of waiting for a node that never comes or a HOST that cannot be reached. ``max_restarts`` > 0 adds
    ``--max-restarts=N``: when a worker fails, torchrun stops the whole group and starts it again, up to N times
    (``--standalone`` is a c10d rendezvous on a free local port, so a single node restarts the same way); run it
    with ``RESTART_ENV`` in its environment.
    """
    restarts = [f"--max-restarts={max_restarts}"] if max_restarts else []
    if nnodes == 1:
        head = ["torchrun", "--standalone", f"--nproc-per-node={nprocs}", *restarts]
    else:
        head = ["torchrun", f"--nnodes={nnodes}", f"--nproc-per-node={nprocs}", *restarts, "--rdzv-backend=c10d",
                f"--rdzv-endpoint={endpoint}", f"--rdzv-id={job_id}", f"--rdzv-conf={RENDEZVOUS_CONF}"]
    return head + worker_arguments(entry, kwargs)


def takes_backend(entry: str) -> bool:
    """Whether ``entry`` takes a ``backend`` argument: by name, or through ``**kwargs`` (the training driver)."""
    parameters = inspect.signature(resolve_entry(entry)).parameters.values()
    return any(p.name == "backend" or p.kind is inspect.Parameter.VAR_KEYWORD for p in parameters)


def _with_backend(entry: str, kwargs: dict[str, Any], backend: str) -> dict[str, Any]:
    """``kwargs`` with ``backend`` for entry points that take one."""
    return {**kwargs, "backend": backend} if takes_backend(entry) else dict(kwargs)


def show_commands(entry: str, nprocs: int = 2, *, gpus_per_node: int = 4, **kwargs: Any) -> str:
    """The torchrun commands to type in a terminal: one machine, then two machines, each in a CPU (gloo) form
    and a GPU (nccl, ``gpus_per_node`` ranks per machine) form, with what to put for HOST."""
    cpu, gpu = _with_backend(entry, kwargs, "gloo"), _with_backend(entry, kwargs, "nccl")

    def two(procs: int, values: dict[str, Any]) -> str:
        return shell_command(torchrun_command(entry, procs, values, nnodes=2))

    return "\n".join([
        f"# one machine, {nprocs} processes on the CPU (gloo):",
        shell_command(torchrun_command(entry, nprocs, cpu)),
        f"# one GPU machine, one process per GPU (nccl; here {gpus_per_node} GPUs):",
        shell_command(torchrun_command(entry, gpus_per_node, gpu)),
        f"# two machines: the same command on each; {HOST_HELP}.",
        f"# Each waits up to {RENDEZVOUS_CONF.split(',')[0].split('=')[1]} s for the other; one that cannot reach "
        "HOST stops after about a minute.",
        f"# CPU machines, {nprocs} processes each (gloo):",
        two(nprocs, cpu),
        f"# GPU machines, {gpus_per_node} GPUs each (nccl):",
        two(gpus_per_node, gpu),
    ])


def deepspeed_command(entry: str, nprocs: int, kwargs: dict[str, Any], *, nnodes: int = 1,
                      hostfile: str = "hostfile") -> list[str]:
    """DeepSpeed's launcher for ``entry``: ``nprocs`` ranks here, or per machine of a ``hostfile`` (``nnodes`` > 1).

    Each rank runs ``python -m dtutor.launch --local_rank=N ENTRY ...`` (the worker drops ``--local_rank``).
    A hostfile has one line per machine, ``HOST slots=GPUS``; DeepSpeed reaches the others with pdsh or ssh.
    """
    head = ["deepspeed", f"--num_gpus={nprocs}"]
    if nnodes > 1:
        head += [f"--hostfile={hostfile}", f"--num_nodes={nnodes}"]
    module, *rest = worker_arguments(entry, kwargs)[1:]  # "-m dtutor.launch ..." becomes "--module dtutor.launch ..."
    return [*head, "--module", module, *rest]


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


@contextlib.contextmanager
def environment(**variables: str) -> Iterator[None]:
    """Set environment variables for the launches started inside the block (a launch's processes inherit this
    process's environment, as with ``NAME=value torchrun ...`` in a terminal); the old values come back after."""
    before = {name: os.environ.get(name) for name in variables}
    os.environ.update(variables)
    try:
        yield
    finally:
        for name, value in before.items():
            if value is None:
                os.environ.pop(name, None)
            else:
                os.environ[name] = value
