"""Run an importable ``dtutor`` entry point on N processes through torchrun, from a notebook or a script.

``run("dtutor.ddp:train", nprocs=2, steps=10)`` starts PyTorch's elastic launcher (``torchrun``, i.e.
``python -m torch.distributed.run``) as a child process, exactly as you would in a terminal::

    torchrun --standalone --nproc-per-node 2 -m dtutor.launch dtutor.ddp:train steps=10

Each worker imports the entry point, calls it with the keyword arguments, and hands its return value
back to the notebook (pickled into a temporary folder); the notebook sees every rank's output as it
happens, prefixed ``[rank N]``. Why a child process rather than calling the launcher's API in the
kernel: a notebook kernel cannot be given a hard timeout, does not show output written by other
processes, and must survive a worker that crashes; a child process can be timed out and killed with
everything it started.

Guarantees: bad input is refused before any process starts; every launch has a timeout; when a rank
fails or the timeout expires, every process of the launch is ended and ``LaunchError`` names the
failing rank with its traceback.
"""

from __future__ import annotations

import ast
import importlib
import inspect
import io
import os
import pickle
import queue
import shlex
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
import traceback
import uuid
from pathlib import Path
from typing import Any

import psutil

BACKENDS = ("auto", "gloo", "nccl", "mpi")
# Start-up lines TensorFlow's C++ runtime prints before any log setting applies, in every TF process
NOISE = ("All log messages before absl::InitializeLog() is called", "oneDNN custom operations are on")
RESULT_DIR_ENV = "DTUTOR_RESULT_DIR"


class LaunchError(RuntimeError):
    """A launch failed: ``rank`` is the first rank that failed (None if unknown), ``remote_traceback`` its traceback."""

    def __init__(self, message: str, rank: int | None = None, remote_traceback: str = ""):
        super().__init__(message)
        self.rank = rank
        self.remote_traceback = remote_traceback


def gpu_count() -> int:
    """Number of CUDA GPUs visible to this process (0 without CUDA)."""
    import torch

    return torch.cuda.device_count() if torch.cuda.is_available() else 0


def choose_backend(backend: str, nprocs: int) -> str:
    """Resolve ``backend``: ``auto`` is nccl when there are at least ``nprocs`` GPUs, else gloo."""
    import torch.distributed as dist

    if backend not in BACKENDS:
        raise ValueError(f"unknown backend {backend!r}; choose one of {', '.join(BACKENDS)}")
    if backend == "auto":
        return "nccl" if gpu_count() >= nprocs and dist.is_nccl_available() else "gloo"
    if backend == "nccl" and gpu_count() < nprocs:
        raise ValueError(
            f"backend 'nccl' needs one GPU per rank: {nprocs} ranks asked for, {gpu_count()} GPU(s) here. "
            "Use backend='gloo' (CPU, or several ranks sharing GPUs) or fewer processes."
        )
    available = {"gloo": dist.is_gloo_available(), "nccl": dist.is_nccl_available(), "mpi": dist.is_mpi_available()}
    if not available[backend]:
        raise ValueError(f"backend {backend!r} is not available in this PyTorch build")
    return backend


def _resolve(entry: str):
    module_name, _, function_name = entry.partition(":")
    if not module_name or not function_name:
        raise ValueError(f"entry point must look like 'package.module:function', got {entry!r}")
    try:
        module = importlib.import_module(module_name)
    except ImportError as error:
        raise ValueError(f"cannot import the entry point's module {module_name!r}: {error}") from error
    function = getattr(module, function_name, None)
    if not callable(function):
        raise ValueError(f"module {module_name!r} has no function {function_name!r}")
    return function


def _parse_value(text: str) -> Any:
    try:
        return ast.literal_eval(text)
    except (ValueError, SyntaxError):
        return text  # a bare word such as backend=gloo


def _as_argument(key: str, value: Any) -> str:
    if isinstance(value, str) and value.replace("_", "").replace("-", "").replace(".", "").isalnum() \
            and _parse_value(value) == value:
        return f"{key}={value}"
    text = repr(value)
    try:
        same = ast.literal_eval(text) == value
    except (ValueError, SyntaxError):
        same = False
    if not same:
        raise ValueError(
            f"argument {key}={text[:80]} cannot be sent to the workers: only Python literals "
            "(numbers, strings, booleans, None, and lists/tuples/dicts of them) travel on the command line"
        )
    return f"{key}={text}"


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def worker_arguments(entry: str, kwargs: dict[str, Any]) -> list[str]:
    """The ``-m dtutor.launch ENTRY key=value ...`` part of a torchrun command (validated)."""
    function = _resolve(entry)
    try:
        inspect.signature(function).bind(**kwargs)
    except TypeError as error:
        raise ValueError(f"{entry} cannot take these arguments: {error}") from error
    return ["-m", "dtutor.launch", entry, *(_as_argument(k, v) for k, v in kwargs.items())]


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
    """Text giving the equivalent commands to run in a terminal: one node, and two nodes."""
    one = shlex.join(torchrun_command(entry, nprocs, kwargs))
    two = shlex.join(torchrun_command(entry, nprocs, kwargs, nnodes=2))
    return (
        f"# one machine, {nprocs} processes:\n{one}\n"
        f"# two machines, {nprocs} processes each (run on both; HOST = the first machine's address):\n{two}"
    )


def _check_count(name: str, value: int) -> None:
    if not isinstance(value, int) or value < 1:
        raise ValueError(f"{name} must be a whole number >= 1, got {value!r}")


def _prepare(entry: str, nprocs: int, nnodes: int, backend: str, kwargs: dict[str, Any]) -> dict[str, Any]:
    """Check the counts and fill in the backend; the arguments are validated when the command is built."""
    _check_count("nprocs", nprocs)
    _check_count("nnodes", nnodes)
    function = _resolve(entry)
    kwargs = dict(kwargs)
    if "backend" in inspect.signature(function).parameters and "backend" not in kwargs:
        kwargs["backend"] = choose_backend(backend, nprocs)
    elif "backend" in kwargs:
        kwargs["backend"] = choose_backend(kwargs["backend"], nprocs)
    return kwargs


def _kill_tree(processes: list[subprocess.Popen], grace: float = 5.0) -> None:
    """End the launchers and every process they started (torchrun puts workers in their own sessions)."""
    family: list[psutil.Process] = []
    for process in processes:
        try:
            parent = psutil.Process(process.pid)
            family += [parent, *parent.children(recursive=True)]
        except psutil.NoSuchProcess:
            pass
    for member in family:
        try:
            member.send_signal(signal.SIGTERM)
        except psutil.NoSuchProcess:
            pass
    _, alive = psutil.wait_procs(family, timeout=grace)
    for member in alive:
        try:
            member.kill()
        except psutil.NoSuchProcess:
            pass
    psutil.wait_procs(alive, timeout=grace)
    for process in processes:
        process.wait()


def _first_failure(result_dir: Path) -> tuple[int, str] | None:
    failures = []
    for path in result_dir.glob("rank*.err"):
        when, _, text = path.read_text().partition("\n")
        failures.append((float(when), int(path.stem[4:]), text))
    if not failures:
        return None
    _, rank, text = min(failures)
    return rank, text


def supervise(
    commands: list[list[str]],
    *,
    entry: str,
    timeout: float,
    quiet: bool = False,
    threads: int = 1,
    envs: list[dict[str, str]] | None = None,
    display: str = "",
) -> list[Any]:
    """Run launcher ``commands`` (one per simulated machine) whose workers run ``python -m dtutor.launch``.

    The shared machinery of every launch in the course (torchrun, horovodrun, TensorFlow workers): stream
    the output, enforce ``timeout``, end every process of the launch on a failure, a timeout or an
    interrupt, and return each rank's result in rank order, or raise ``LaunchError`` naming the first
    rank that failed. ``envs`` adds variables per command; ``display`` is printed first as ``$ display``.
    """
    if timeout <= 0:
        raise ValueError(f"timeout must be positive, got {timeout}")
    result_dir = Path(tempfile.mkdtemp(prefix="dtutor-launch-"))
    base = {**os.environ, RESULT_DIR_ENV: str(result_dir), "OMP_NUM_THREADS": str(threads),
            "PYTHONUNBUFFERED": "1", "DTUTOR_NO_TQDM": "1"}
    if not quiet and display:
        print("$", display)
    lines: queue.Queue = queue.Queue()
    processes = [subprocess.Popen(c, env={**base, **(envs[i] if envs else {})}, stdout=subprocess.PIPE,
                                  stderr=subprocess.STDOUT, text=True, bufsize=1, start_new_session=True)
                 for i, c in enumerate(commands)]

    def pump(stream: io.TextIOBase) -> None:
        for line in stream:
            lines.put(line.rstrip("\n"))

    readers = [threading.Thread(target=pump, args=(p.stdout,), daemon=True) for p in processes]
    for reader in readers:
        reader.start()
    deadline = time.monotonic() + timeout
    tail: list[str] = []
    failed = timed_out = False
    try:
        while any(p.poll() is None for p in processes) or any(r.is_alive() for r in readers) or not lines.empty():
            try:
                line = lines.get(timeout=0.1)
                tail = (tail + [line])[-40:]
                if not quiet and not any(noise in line for noise in NOISE):
                    print(line)
            except queue.Empty:
                pass
            if any(p.poll() not in (None, 0) for p in processes):
                failed = True
                break
            if time.monotonic() > deadline:
                timed_out = True
                break
    finally:
        _kill_tree(processes)  # a no-op after a clean finish; also runs on KeyboardInterrupt
    try:
        failure = _first_failure(result_dir)
        if failure is not None:
            rank, text = failure
            raise LaunchError(f"rank {rank} of {entry} failed:\n{text}", rank=rank, remote_traceback=text)
        if timed_out:
            raise LaunchError(f"{entry} did not finish within {timeout:g} s; all its processes were ended.")
        if failed:
            raise LaunchError(f"{entry} failed before a rank could report; last output:\n" + "\n".join(tail))
        world = sorted(result_dir.glob("rank*.pkl"), key=lambda p: int(p.stem[4:]))
        return [pickle.loads(path.read_bytes()) for path in world]
    finally:
        for path in result_dir.iterdir():
            path.unlink()
        result_dir.rmdir()


def run(
    entry: str,
    nprocs: int = 2,
    *,
    nnodes: int = 1,
    backend: str = "auto",
    timeout: float = 300.0,
    threads_per_rank: int | None = None,
    quiet: bool = False,
    **kwargs: Any,
) -> list[Any]:
    """Run ``entry`` ("module:function") on ``nprocs`` processes per node with torchrun; return each rank's result.

    ``nnodes > 1`` starts that many torchrun launchers on this machine, joined by a c10d rendezvous, as
    stand-ins for separate machines. ``backend`` is passed to entry points that take one (auto: nccl
    when there are enough GPUs, else gloo). ``threads_per_rank`` sets ``OMP_NUM_THREADS`` (default:
    the cores divided among the local processes). Output lines are prefixed ``[rank N]``; ``quiet``
    hides them. Raises ``LaunchError`` if a rank fails or ``timeout`` seconds pass.
    """
    kwargs = _prepare(entry, nprocs, nnodes, backend, kwargs)
    threads = threads_per_rank or max(1, (os.cpu_count() or 1) // (nprocs * nnodes))
    python = [sys.executable, "-m", "torch.distributed.run"]
    if nnodes == 1:
        commands = [python + torchrun_command(entry, nprocs, kwargs)[1:]]
    else:
        endpoint, job = f"127.0.0.1:{_free_port()}", f"dtutor-{uuid.uuid4().hex[:8]}"
        commands = [python + torchrun_command(entry, nprocs, kwargs, nnodes=nnodes, endpoint=endpoint,
                                              job_id=job)[1:] for _ in range(nnodes)]
    display = shlex.join(["torchrun", *commands[0][3:]]) + (f"   # x{nnodes} nodes" if nnodes > 1 else "")
    return supervise(commands, entry=entry, timeout=timeout, quiet=quiet, threads=threads, display=display)


def _slots(hosts: str) -> int:
    try:
        return sum(int(part.rpartition(":")[2]) if ":" in part else 1 for part in hosts.split(","))
    except ValueError as error:
        raise ValueError(f"hosts must look like 'host1:4,host2:4', got {hosts!r}") from error


def horovodrun_command(entry: str, nprocs: int, kwargs: dict[str, Any], hosts: str | None = None) -> list[str]:
    """The ``horovodrun`` command for ``entry`` on ``nprocs`` processes over ``hosts`` (default: this machine)."""
    hosts = hosts or f"localhost:{nprocs}"
    return ["horovodrun", "-np", str(nprocs), "--gloo", "-H", hosts, "python", *worker_arguments(entry, kwargs)]


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
    from dtutor.devices import horovod_frameworks

    _check_count("nprocs", nprocs)
    if hosts is not None and _slots(hosts) < nprocs:
        raise ValueError(f"-np {nprocs} is more than the {_slots(hosts)} slot(s) in -H {hosts}")
    built = horovod_frameworks()
    if built is None:
        raise RuntimeError("Horovod is not installed here: run ./course setup (it builds Horovod from source)")
    if framework not in built:
        raise RuntimeError(f"this Horovod was built without {framework} (it has: {', '.join(built) or 'none'}); "
                           "rebuild it with ./course setup")
    command = horovodrun_command(entry, nprocs, kwargs, hosts)
    horovodrun = str(Path(sys.executable).with_name("horovodrun"))
    python = command.index("python")
    actual = [horovodrun, *command[1:python], sys.executable, *command[python + 1:]]
    threads = threads_per_rank or max(1, (os.cpu_count() or 1) // nprocs)
    env = {"TF_USE_LEGACY_KERAS": "1", "TF_CPP_MIN_LOG_LEVEL": "2"}
    return supervise([actual], entry=entry, timeout=timeout, quiet=quiet, threads=threads, envs=[env],
                     display=shlex.join(command))


def run_single(entry: str, *, timeout: float = 300.0, env: dict[str, str] | None = None, threads: int | None = None,
               quiet: bool = True, **kwargs: Any) -> Any:
    """Run ``entry`` in one fresh Python process (rank 0) and return its result.

    For work that must not touch this process: a TensorFlow reference run needs its own Keras and device
    configuration, which a process can set only once.
    """
    command = [sys.executable, *worker_arguments(entry, kwargs)]
    return supervise([command], entry=entry, timeout=timeout, quiet=quiet, threads=threads or os.cpu_count() or 1,
                     envs=[{"DTUTOR_RANK": "0", **(env or {})}], display=shlex.join(["python", *command[1:]]))[0]


class _Prefixed(io.TextIOBase):
    """A text stream that prefixes every line and writes whole lines at once, so ranks don't interleave."""

    def __init__(self, stream, prefix: str):
        self._stream, self._prefix, self._pending = stream, prefix, ""

    def write(self, text: str) -> int:
        self._pending += text
        if "\n" in self._pending:
            done, _, self._pending = self._pending.rpartition("\n")
            self._stream.write("".join(f"{self._prefix}{line}\n" for line in done.split("\n")))
            self._stream.flush()
        return len(text)

    def flush(self) -> None:
        self._stream.flush()

    def finish(self) -> None:
        """Write out a last line that has no newline."""
        if self._pending:
            self.write("\n")


RANK_VARIABLES = ("DTUTOR_RANK", "RANK", "HOROVOD_RANK", "OMPI_COMM_WORLD_RANK", "PMI_RANK")


def worker_rank() -> int:
    """This worker's global rank, from whichever launcher started it (torchrun, horovodrun, mpirun, dtutor),
    or its task index in ``TF_CONFIG`` for a TensorFlow worker started by hand."""
    for name in RANK_VARIABLES:
        if name in os.environ:
            return int(os.environ[name])
    if "TF_CONFIG" in os.environ:
        import json

        return int(json.loads(os.environ["TF_CONFIG"]).get("task", {}).get("index", 0))
    return 0


def _worker_main(argv: list[str]) -> None:
    """What each torchrun worker runs: ``python -m dtutor.launch ENTRY key=value ...``."""
    entry, pairs = argv[0], argv[1:]
    kwargs = {}
    for pair in pairs:
        key, _, text = pair.partition("=")
        kwargs[key] = _parse_value(text)
    rank = worker_rank()
    sys.stdout = _Prefixed(sys.stdout, f"[rank {rank}] ")
    sys.stderr = _Prefixed(sys.stderr, f"[rank {rank}] ")
    result_dir = Path(os.environ[RESULT_DIR_ENV]) if RESULT_DIR_ENV in os.environ else None
    if result_dir is not None:
        (result_dir / f"rank{rank}.pid").write_text(str(os.getpid()))
    try:
        result = _resolve(entry)(**kwargs)
        sys.stdout.finish()
    except BaseException:
        text = traceback.format_exc()
        if result_dir is not None:
            (result_dir / f"rank{rank}.err").write_text(f"{time.time()}\n{text}")
        print(text, file=sys.stderr)
        sys.stdout.flush()
        sys.stderr.flush()
        raise SystemExit(1) from None
    if result_dir is not None:
        (result_dir / f"rank{rank}.tmp").write_bytes(pickle.dumps(result))
        (result_dir / f"rank{rank}.tmp").rename(result_dir / f"rank{rank}.pkl")
    elif rank == 0:
        import reprlib

        print(f"result: {reprlib.repr(result)}")  # shortened: results may hold whole weight tensors


if __name__ == "__main__":
    _worker_main(sys.argv[1:])
