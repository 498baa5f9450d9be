"""The machinery every launch shares: start the launcher processes, stream their output, enforce a timeout,
end every process of the launch on a failure, and collect each rank's result or its traceback. After a timeout,
before anything is ended, ``hang_finder`` takes each rank's stack: the error says where each rank waited.

Workers (``python -m dtutor.launch``, see ``worker``) report through a temporary folder named in
``DTUTOR_RESULT_DIR``: ``rankN.pkl`` holds rank N's pickled return value, ``rankN.err`` the time and
traceback of its failure. ``read_results`` and ``first_failure`` read such a folder, here and for a Slurm
job (``dtutor.launch.slurm``).
"""

from __future__ import annotations

import io
import os
import pickle
import queue
import re
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import psutil

from dtutor.launch.hang_finder import HangReport, find_hang
from dtutor.launch.worker import RESULT_DIR_ENV, STARTED_SUFFIX
from dtutor.progress import PROGRESS_ENV, RelayedBar

# Lines never shown: TensorFlow's C++ start-up lines (printed before any log setting applies, in every TF process)
NOISE = ("All log messages before absl::InitializeLog() is called", "oneDNN custom operations are on",
         "Extension modules: ")  # the last: faulthandler's list of every loaded C extension, after a crash's stacks
STARTUP_GRACE = 60.0  # seconds of start-up (launcher, interpreter, imports) a launch's timeout forgives at most
TAIL_LINES = 40  # output lines kept to explain a launch that failed before any rank reported
HOROVOD_PREFIX = re.compile(r"^\[(\d+)\]<std(?:out|err)>:")  # horovodrun's prefix: "[0]<stdout>:"
CHILD_FAILED = "elastic.multiprocessing.errors.ChildFailedError"  # the exception ending torchrun's own traceback
# torchrun's own log lines: "E1207 00:40:33.811000 23281 .venv/.../elastic/multiprocessing/api.py:1002] failed ..."
TORCH_LOG_PREFIX = re.compile(r"^[DIWEF]\d{4} \d\d:\d\d:\d\d\.\d+ \d+ \S+:\d+\] ")


def without_launcher_traceback(lines: list[str]) -> list[str]:
    """``lines`` without torchrun's closing tracebacks (``ChildFailedError``) and their summary tables (between two
    rules of ``=``), which only repeat its "[torchrun] failed (exitcode: -6) local_rank: 1" line and would push the
    failed rank's own last lines (a C++ ``terminate called ...``, faulthandler's stacks) out of the tail."""
    kept = list(lines)
    while ends := [index for index, line in enumerate(kept) if CHILD_FAILED in line]:
        end = ends[0]
        start = max((index for index in range(end) if kept[index].startswith("Traceback (most recent call")),
                    default=end)
        rules = [index for index in range(end + 1, len(kept)) if kept[index].strip() and not kept[index].strip("=")]
        del kept[start:rules[1] + 1 if len(rules) > 1 else len(kept)]
    return kept


def one_prefix(line: str) -> str:
    """``line`` with horovodrun's ``[N]<stdout>:`` prefix written as the course's ``[rank N] `` (one prefix), and
    torchrun's log prefix (level, time, pid, file:line) as ``[torchrun] ``: its lines about a failed worker and a
    restart stay short."""
    line, torchrun = TORCH_LOG_PREFIX.subn("[torchrun] ", line, count=1)
    if torchrun:  # "... of binary: /the/venv/bin/python": the interpreter by its name (the path is this machine's)
        line = line.replace(f"binary: {sys.executable}", f"binary: {Path(sys.executable).name}")
    return HOROVOD_PREFIX.sub(lambda match: f"[rank {match.group(1)}] ", line, count=1)


class LaunchError(RuntimeError):
    """A launch failed: ``rank`` is the first rank that failed (None if unknown), ``remote_traceback`` its traceback.
    A launch that timed out has each unfinished rank's Python stack in ``stacks`` and where it waits in ``waiting``
    (rank -> ``{"op", "file", "line", "function", ...}``, see ``hang_finder``)."""

    def __init__(self, message: str, rank: int | None = None, remote_traceback: str = "",
                 hang: HangReport | None = None):
        super().__init__(message)
        self.rank = rank
        self.remote_traceback = remote_traceback
        self.timed_out = hang is not None  # a timeout always carries the hang finder's report, even an empty one
        self.stacks, self.waiting = (hang.stacks, hang.waiting) if hang else ({}, {})


@dataclass
class _Outcome:
    """How the streaming loop ended: a launcher exited non-zero, the deadline passed, and the last lines."""

    failed: bool = False
    timed_out: bool = False
    tail: list[str] = field(default_factory=list)
    hang: HangReport | None = None  # a timed-out launch: each rank's stack, taken before its processes were ended


def kill_tree(processes: list[subprocess.Popen], grace: float = 5.0) -> None:
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


def first_failure(result_dir: str | Path) -> tuple[int, str] | None:
    """The rank that failed first and its traceback, from the ``rankN.err`` files in a launch's or a Slurm job's
    ``DTUTOR_RESULT_DIR`` (None: no rank failed). First is the earliest time written in the reports."""
    failures = []
    for path in Path(result_dir).glob("rank*.err"):
        when, _, text = path.read_text().partition("\n")
        failures.append((float(when), int(path.stem[4:]), text))
    if not failures:
        return None
    _, rank, text = min(failures)
    return rank, text


def read_results(result_dir: str | Path) -> list[Any]:
    """Every rank's unpickled return value (``rankN.pkl`` in a launch's or a Slurm job's ``DTUTOR_RESULT_DIR``),
    in rank order."""
    paths = sorted(Path(result_dir).glob("rank*.pkl"), key=lambda path: int(path.stem[4:]))
    return [pickle.loads(path.read_bytes()) for path in paths]


class Deadline:
    """When a launch times out: ``timeout`` s after every one of its ``ranks`` workers started its entry point.

    Start-up (the launcher, the interpreters, the imports) is not the job's time, and on a loaded machine it can
    take longer than the job itself; it is forgiven up to ``STARTUP_GRACE`` s, so a launch whose ranks never all
    start still ends, ``timeout + STARTUP_GRACE`` s after it began. With ``ranks`` None (a plain script, which
    reports no start) the timeout counts from the launch.
    """

    def __init__(self, timeout: float, result_dir: Path, ranks: int | None):
        self.timeout, self.result_dir, self.ranks = timeout, result_dir, ranks
        self.at = time.monotonic() + timeout + (STARTUP_GRACE if ranks else 0.0)
        self.all_started = not ranks

    def started_ranks(self) -> set[str]:
        """The ranks that started their entry point: each left its start mark or, already done, its report."""
        return {path.stem for path in self.result_dir.glob("rank*")
                if path.suffix in (STARTED_SUFFIX, ".pkl", ".err")}

    def passed(self) -> bool:
        """Whether the deadline has passed (checked often: it also notices when the last rank starts)."""
        now = time.monotonic()
        if not self.all_started and len(self.started_ranks()) >= (self.ranks or 0):
            self.all_started, self.at = True, min(self.at, now + self.timeout)
        return now > self.at


def _stream(processes: list[subprocess.Popen], deadline: Deadline, quiet: bool) -> _Outcome:
    """Print the processes' merged output until they all end, one exits non-zero, or ``deadline`` passes.

    Rank 0's relayed progress becomes one live bar here (``dtutor.progress``); every other line is printed
    with one rank prefix, except the ``NOISE`` lines.
    """
    lines: queue.Queue[str] = queue.Queue()

    def pump(stream: io.TextIOBase) -> None:
        for line in stream:
            lines.put(line.rstrip("\n"))

    readers = [threading.Thread(target=pump, args=(p.stdout,), daemon=True) for p in processes]
    for reader in readers:
        reader.start()
    outcome, bar = _Outcome(), RelayedBar(enabled=not quiet)

    def take(line: str) -> None:
        if not bar.feed(line):
            outcome.tail = (outcome.tail + [line])[-4 * TAIL_LINES:]  # cut to TAIL_LINES when read
            if not quiet and not any(noise in line for noise in NOISE):
                bar.write(line)

    try:
        while any(p.poll() is None for p in processes) or any(r.is_alive() for r in readers) or not lines.empty():
            try:
                take(one_prefix(lines.get(timeout=0.1)))
            except queue.Empty:
                pass
            if any(p.poll() not in (None, 0) for p in processes):
                outcome.failed = True
                for reader in readers:  # a launcher has ended: what it and its ranks wrote last may still be coming
                    reader.join(timeout=1.0)
                while not lines.empty():
                    take(one_prefix(lines.get()))
                break
            if deadline.passed():
                outcome.timed_out = True
                break
    finally:
        bar.close()
    return outcome


def _run(commands: list[list[str]], envs: list[dict[str, str]], deadline: Deadline, quiet: bool,
         result_dir: Path) -> _Outcome:
    """Start one process per command (each in its own session), stream them, then end all that remain (after a
    timeout, once the hang finder has taken every rank's stack)."""
    processes: list[subprocess.Popen] = []
    try:
        for command, env in zip(commands, envs, strict=True):
            processes.append(subprocess.Popen(command, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                                              text=True, bufsize=1, start_new_session=True))
        outcome = _stream(processes, deadline, quiet)
        if outcome.timed_out:
            outcome.hang = find_hang(result_dir)
        return outcome
    finally:
        kill_tree(processes)  # a no-op after a clean finish; also runs on a failure or KeyboardInterrupt


def _verdict(result_dir: Path, outcome: _Outcome, entry: str, timeout: float) -> list[Any]:
    """The ranks' results, or ``LaunchError`` for the first failed rank, a timeout or an early crash."""
    failure = first_failure(result_dir)
    if failure is not None:
        rank, text = failure
        raise LaunchError(f"rank {rank} of {entry} failed:\n{text}", rank=rank, remote_traceback=text)
    if outcome.timed_out:
        hang = outcome.hang or HangReport()
        raise LaunchError(hang.explain(f"{entry} did not finish within {timeout:g} s; all its processes were ended."),
                          hang=hang)
    if outcome.failed:
        tail = [line for line in without_launcher_traceback(outcome.tail) if not any(n in line for n in NOISE)]
        raise LaunchError(f"{entry} failed before a rank could report; last output:\n" + "\n".join(tail[-TAIL_LINES:]))
    return read_results(result_dir)


def supervise(
    commands: list[list[str]],
    *,
    entry: str,
    timeout: float,
    quiet: bool = False,
    threads: int = 1,
    envs: list[dict[str, str]] | None = None,
    display: str = "",
    ranks: int | None = None,
) -> list[Any]:
    """Run launcher ``commands`` (one per simulated machine) whose workers run ``python -m dtutor.launch``.

    The shared machinery of every launch in the course (torchrun, horovodrun, TensorFlow workers): stream
    the output, enforce ``timeout`` (counted once all ``ranks`` workers started their entry point, see
    ``Deadline``), end every process of the launch on a failure, a timeout or an
    interrupt, and return each rank's result in rank order, or raise ``LaunchError`` naming the first
    rank that failed. ``envs`` adds variables per command; ``display`` is printed first as ``$ display``.
    Workers get ``OMP_NUM_THREADS=threads``, ``PYTHONFAULTHANDLER=1`` (a rank killed by a signal prints its Python
    stack), ``TQDM_DISABLE=1`` (bars would garble the stream) and
    ``DTUTOR_PROGRESS=relay``: rank 0's progress comes back as one live bar here (none when ``quiet``).
    """
    if timeout <= 0:
        raise ValueError(f"timeout must be positive, got {timeout}")
    if envs is not None and len(envs) != len(commands):
        raise ValueError(f"envs must give one dict per command: {len(envs)} for {len(commands)} command(s)")
    result_dir = Path(tempfile.mkdtemp(prefix="dtutor-launch-"))
    base = {**os.environ, RESULT_DIR_ENV: str(result_dir), "OMP_NUM_THREADS": str(threads),
            "PYTHONUNBUFFERED": "1", "PYTHONFAULTHANDLER": "1", "TQDM_DISABLE": "1", PROGRESS_ENV: "relay"}
    if not quiet and display:
        print("$", display)
    try:
        per_command = [{**base, **extra} for extra in (envs or [{}] * len(commands))]
        outcome = _run(commands, per_command, Deadline(timeout, result_dir, ranks), quiet, result_dir)
        return _verdict(result_dir, outcome, entry, timeout)
    finally:
        shutil.rmtree(result_dir, ignore_errors=True)
