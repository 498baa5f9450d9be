"""The hang finder: when a launch times out, every rank's Python stack, and the collective each rank waits in.

A hung job prints nothing. Before the supervisor ends it, it asks each worker where it is: with ``py-spy dump``
(when py-spy is installed and may attach), or else by sending ``SIGUSR1``, on which every worker (``arm``, called
by ``python -m dtutor.launch``) writes all its threads' stacks with ``faulthandler`` into ``rankN.stack`` in the
launch's ``DTUTOR_RESULT_DIR``. Each stack is read from the innermost frame out: the ``torch.distributed`` call
(``all_reduce``, ``recv``, ``barrier``...) or else the library call the rank's own code made (``backward``), and
that code's file and line. ``find_hang`` returns a ``HangReport``; its ``lines()`` read, e.g.::

    rank 0 waits in all_reduce at bugs.py:33 (skip_collective): dist.all_reduce(loss)
    rank 1 waits in barrier at bugs.py:35 (skip_collective): dist.barrier()

Only processes that recorded their pid in the folder (``rankN.pid``, with their host) and still carry that folder
in their environment are signalled: never a launcher, which ``SIGUSR1`` would end.
"""

from __future__ import annotations

import faulthandler
import linecache
import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import sysconfig
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO, Any

import psutil

STACK_SIGNAL = getattr(signal, "SIGUSR1", None)  # None on Windows: no faulthandler dumps there (py-spy still works)
LINE_WIDTH = 150
DISTRIBUTED_PATHS = ("/torch/distributed/",)  # where a collective's own frames are
WRAPPERS = {"wrapper", "inner", "_fn", "decorate_context", "_wrapped_call_impl", "_call_impl"}
_armed: list[IO[str]] = []  # the open stack files faulthandler writes into (kept open for the process's life)
ANSI_ESCAPE = re.compile(r"\x1b\[[0-9;]*m")
PYSPY_FRAME = re.compile(r"^\s+(?P<function>\S.*?) \((?P<file>[^()]+):(?P<line>\d+)\)$")
FAULTHANDLER_FRAME = re.compile(r'^\s+File "(?P<file>.+)", line (?P<line>\d+) in (?P<function>.+)$')


def arm(result_dir: Path, rank: int) -> None:
    """Worker side: on ``SIGUSR1``, write every thread's Python stack into ``rankN.stack``; record this process in
    ``rankN.pid`` (host and pid) so the supervisor can find it."""
    if STACK_SIGNAL is not None:
        stack_file = open(result_dir / f"rank{rank}.stack", "w")  # open for the process's whole life
        _armed.append(stack_file)
        faulthandler.register(STACK_SIGNAL, file=stack_file, all_threads=True)
    (result_dir / f"rank{rank}.pid").write_text(f"{socket.gethostname()} {os.getpid()}\n")


def disarm(result_dir: Path, rank: int) -> None:
    """Worker side, once the entry point returned or raised: no stack dump any more, and neither file is left."""
    if STACK_SIGNAL is not None and _armed:
        faulthandler.unregister(STACK_SIGNAL)
        _armed.pop().close()
    for suffix in ("stack", "pid"):
        (result_dir / f"rank{rank}.{suffix}").unlink(missing_ok=True)


@dataclass
class HangReport:
    """What each rank was doing when the launch timed out: ``stacks`` (rank -> stack text), ``waiting`` (rank ->
    ``{"op", "file", "line", "function", "path", "code"}``, ``op`` None outside any library call), ``finished``
    (ranks whose result was in), ``tool`` ("py-spy dump" or "faulthandler"), ``elsewhere`` (ranks on other hosts:
    their host and pid, for a ``py-spy dump`` there)."""

    stacks: dict[int, str] = field(default_factory=dict)
    waiting: dict[int, dict[str, Any]] = field(default_factory=dict)
    finished: list[int] = field(default_factory=list)
    tool: str = ""
    elsewhere: dict[int, tuple[str, int]] = field(default_factory=dict)  # rank -> (host, pid) of another machine

    def lines(self) -> list[str]:
        """One line per rank, at most ``LINE_WIDTH`` characters, in rank order."""
        lines = {rank: f"rank {rank} finished (its result is in)" for rank in self.finished}
        for rank, where in self.waiting.items():
            place = f"{where['file']}:{where['line']} ({where['function']})"
            lines[rank] = (f"rank {rank} waits in {where['op']} at {place}" if where["op"]
                           else f"rank {rank} is at {place}, in no collective") + f": {where['code']}"
        for rank, (host, pid) in self.elsewhere.items():
            lines[rank] = f"rank {rank} runs on {host}: take its stack there (py-spy dump --pid {pid})"
        for rank in self.stacks.keys() - self.waiting.keys():
            lines[rank] = f"rank {rank}: its stack names none of its own code (see .stacks[{rank}])"
        return [_cut(lines[rank]) for rank in sorted(lines)]

    def explain(self, headline: str) -> str:
        """``headline`` (e.g. "... did not finish within 10 s"), then where each rank was, as ``lines`` says."""
        lines = [f"  {line}" for line in self.lines()]
        found = [f"Before that, {self.tool} found each rank here:" if self.stacks else "Before that:"] if lines else []
        return "\n".join([headline, *found, *lines])


def _cut(line: str) -> str:
    return line if len(line) <= LINE_WIDTH else line[:LINE_WIDTH - 3] + "..."


def _library_dirs() -> tuple[str, ...]:
    """Folders of code that is not the learner's: the standard library, installed packages, the launch layer."""
    paths = sysconfig.get_paths()
    return tuple({paths["stdlib"], paths["platstdlib"], paths["purelib"], paths["platlib"]}) + (
        str(Path(__file__).parent) + os.sep,)


def _main_thread(stack: str, frame: re.Pattern[str]) -> list[dict[str, Any]]:
    """The frames (innermost first, in both tools' dumps) of the thread that runs the entry point: the one with the
    script's ``<module>`` frame."""
    threads: list[list[dict[str, Any]]] = []
    for text in stack.splitlines():
        if text.startswith(("Thread ", "Current thread ")):
            threads.append([])
        elif threads and (found := frame.match(text)):
            # the bare name: py-spy writes "Tensor.backward", faulthandler "backward"
            bare = found["function"].rsplit(".", 1)[-1]
            threads[-1].append({**found.groupdict(), "function": bare, "line": int(found["line"])})
    main = [frames for frames in threads if any(frame["function"] == "<module>" for frame in frames)]
    return (main or threads or [[]])[0]


def where_it_waits(stack: str) -> dict[str, Any] | None:
    """The call a rank waits in, from its stack (py-spy's or faulthandler's text): ``op`` (the innermost
    ``torch.distributed`` function, else the library function its own code called, else None) and its own code's
    ``file`` (name), ``line``, ``function``, ``path`` and ``code`` (the line's text). None: no frame of its own."""
    frames = _main_thread(stack, FAULTHANDLER_FRAME if "most recent call first" in stack else PYSPY_FRAME)
    library = _library_dirs()
    for depth, frame in enumerate(frames):
        if frame["file"].startswith(library) or frame["file"].startswith("<"):
            continue
        calls = [inner for inner in frames[:depth] if inner["function"] not in WRAPPERS]
        collectives = [inner for inner in calls if any(part in inner["file"] for part in DISTRIBUTED_PATHS)]
        op = collectives[0]["function"] if collectives else calls[-1]["function"] if calls else None
        code = linecache.getline(frame["file"], frame["line"]).strip()
        return {"op": op, "file": Path(frame["file"]).name, "line": frame["line"], "function": frame["function"],
                "path": frame["file"], "code": code}
    return None


def _workers(result_dir: Path, elsewhere: dict[int, tuple[str, int]]) -> dict[int, psutil.Process]:
    """The live unfinished workers on this host that recorded themselves in ``result_dir`` and still carry it; those
    recorded on other hosts go into ``elsewhere``."""
    from dtutor.launch.worker import RESULT_DIR_ENV

    found = {}
    for path in result_dir.glob("rank*.pid"):
        host, _, pid = path.read_text().strip().partition(" ")
        if (result_dir / f"{path.stem}.pkl").exists():
            continue
        if host != socket.gethostname():
            elsewhere[int(path.stem[4:])] = (host, int(pid))
            continue
        try:
            process = psutil.Process(int(pid))
            if process.environ().get(RESULT_DIR_ENV) == str(result_dir) and process.status() != psutil.STATUS_ZOMBIE:
                found[int(path.stem[4:])] = process
        except (psutil.Error, ValueError):
            pass
    return found


def py_spy() -> str | None:
    """The ``py-spy`` program beside this Python (the course's venv) or on ``PATH``; None if it is not installed."""
    beside = Path(sys.executable).with_name("py-spy")
    return str(beside) if beside.is_file() else shutil.which("py-spy")


def _py_spy_dumps(workers: dict[int, psutil.Process], timeout: float) -> dict[int, str]:
    """``py-spy dump --pid PID`` of every worker at once; only the dumps that succeeded (it may not be allowed to
    attach: ptrace)."""
    program = py_spy()
    if program is None:
        return {}
    plain = {key: value for key, value in os.environ.items() if key not in ("CLICOLOR_FORCE", "FORCE_COLOR")}
    plain["NO_COLOR"] = "1"  # a Jupyter kernel asks for colours (CLICOLOR_FORCE): py-spy would paint the frames
    running = {rank: subprocess.Popen([program, "dump", "--full-filenames", "--pid", str(process.pid)], env=plain,
                                      stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True)
               for rank, process in workers.items()}
    dumps = {}
    for rank, dump in running.items():
        try:
            out, _ = dump.communicate(timeout=timeout)
            out = ANSI_ESCAPE.sub("", out)  # whatever colours are left
            if dump.returncode == 0 and "Thread " in out:
                dumps[rank] = out
        except subprocess.TimeoutExpired:
            dump.kill()
            dump.communicate()
    return dumps


def _faulthandler_dumps(result_dir: Path, workers: dict[int, psutil.Process], timeout: float) -> dict[int, str]:
    """Signal each worker (``SIGUSR1``) and read the stacks its faulthandler writes, waiting at most ``timeout``."""
    if STACK_SIGNAL is None:
        return {}
    for process in workers.values():
        try:
            process.send_signal(STACK_SIGNAL)
        except psutil.Error:
            pass
    deadline, sizes, dumps = time.monotonic() + timeout, {}, {}
    while len(dumps) < len(workers) and time.monotonic() < deadline:
        time.sleep(0.05)
        for rank in workers.keys() - dumps.keys():
            text = (result_dir / f"rank{rank}.stack").read_text(errors="replace")
            if text and sizes.get(rank) == len(text):  # written, and no longer growing
                dumps[rank] = text
            sizes[rank] = len(text)
    return dumps


def find_hang(result_dir: str | Path, timeout: float = 3.0) -> HangReport:
    """Every unfinished rank's stack (py-spy, else faulthandler) and where it waits; call it before ending the job.
    At most about ``timeout`` seconds per tool."""
    result_dir = Path(result_dir)
    report = HangReport(finished=sorted(int(path.stem[4:]) for path in result_dir.glob("rank*.pkl")))
    workers = _workers(result_dir, report.elsewhere)
    report.stacks = _py_spy_dumps(workers, timeout)
    missing = {rank: process for rank, process in workers.items() if rank not in report.stacks}
    signalled = _faulthandler_dumps(result_dir, missing, timeout) if missing else {}
    report.tool = " and ".join(name for name, dumps in [("py-spy dump", report.stacks), ("faulthandler", signalled)]
                               if dumps)
    report.stacks.update(signalled)
    for rank, stack in sorted(report.stacks.items()):
        if (where := where_it_waits(stack)) is not None:
            report.waiting[rank] = where
    report.stacks = dict(sorted(report.stacks.items()))
    return report
