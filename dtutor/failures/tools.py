"""The standard tools that diagnose a broken distributed job, each run for real on gloo ranks (notebook 09).

Each tool starts a small job through ``dtutor.launch`` (the ranks' side: ``tool_ranks``), prints the command as you
would type it and what the tool said, and returns a plain dict of facts: which rank, which op, which shapes, which
file and line. ``quiet=True`` prints nothing.

- ``init_timeout``: one rank never calls ``init_process_group``; the other gives up after the group's ``timeout=``,
  and the store key it waited for ends with the missing rank;
- ``debug_detail``: ``TORCH_DISTRIBUTED_DEBUG=DETAIL`` on ``bugs.mismatched_shapes`` (or ``bugs.wrong_order``): the
  ranks compare each collective's fingerprint first, so the error names every rank's op and shapes;
- ``barrier_report``: ``dist.monitored_barrier(timeout=...)`` names the ranks that did not arrive in time;
- ``error_file``: the error file torchrun gives each rank, written by ``@record`` (``examples/record_error.py``; the
  course's own worker writes one line there instead, the exception's type and message);
- ``py_spy_command``: ``py-spy dump`` for a hung rank's pid (the hang finder, ``dtutor.launch.hang_finder``, runs it
  on every rank of a launch that times out);
- ``flight_recorder``: torch's flight recorder on a hung gloo job, read by torch's ``torchfrtrace``, which names the
  culprit rank; ``gpu_tools``: what ``NCCL_DEBUG=INFO`` and the NCCL watchdog's dumps add on GPU machines (text:
  this torch has no NCCL).
"""

from __future__ import annotations

import json
import pickle
import re
import subprocess
import sys
import tempfile
from collections.abc import Sequence
from pathlib import Path

from dtutor.failures.tool_ranks import LAYERS, code_line
from dtutor.launch.commands import environment

EXAMPLES = Path(__file__).resolve().parent.parent.parent / "examples"
RANKS = "dtutor.failures.tool_ranks"
BUGS = "dtutor.failures.bugs"
WIDTH = 150  # characters of a printed line
FR_PREFIX = "rank_"  # the flight recorder's dump files: rank_0, rank_1, ...


def _say(*lines: str, quiet: bool) -> None:
    """Print ``lines``, each cut to ``WIDTH`` characters (nothing when ``quiet``)."""
    if not quiet:
        text = "\n".join(lines).splitlines()
        print("\n".join(line if len(line) <= WIDTH else line[:WIDTH - 3] + "..." for line in text))


def _show(command: list[str], *, env: str = "", quiet: bool) -> None:
    """Print the launch as typed in a terminal (``env``: the variables set for it)."""
    from dtutor.launch import shell_command

    _say("$ " + (f"{env} " if env else "") + shell_command(command), quiet=quiet)


def init_timeout(wait: float = 3.0, *, timeout: float = 90.0, quiet: bool = False) -> dict:
    """2 ranks, rank 1 never joins: rank 0's ``init_process_group(timeout=wait s)`` gives up. Prints its error;
    returns ``{"rank" (the one that raised), "error", "message", "line", "waited_s", "waited_for"}`` (``waited_for``:
    the rank that the store key it waited for names)."""
    from dtutor.launch import run, torchrun_command

    arguments = {"missing_rank": 1, "wait": wait}
    _show(torchrun_command(f"{RANKS}:join_without", 2, arguments), quiet=quiet)
    reports = run(f"{RANKS}:join_without", 2, timeout=timeout, quiet=True, **arguments)
    raised = next(report for report in reports if "error" in report)
    store_key = re.search(r"keys: (\S*?)(\d+)$", raised["message"])  # the key rank 1 would have set: .../1
    facts = {name: raised[name] for name in ("rank", "error", "message", "line", "waited_s")}
    facts["waited_for"] = int(store_key[2]) if store_key else None
    _say(f"rank {raised['rank']} gave up after {raised['waited_s']:.0f} s in {raised['line']}:",
         f"    {raised['error']}: {raised['message']}", quiet=quiet)
    return facts


def _fingerprints(message: str) -> dict[int, dict]:
    """Each rank's collective in a ``Detected mismatch between collectives`` message: op, shapes, sequence number."""
    parts = re.split(r"Rank (\d+) is running collective: ", message)
    found = {}
    for rank, body in zip(parts[1::2], parts[2::2], strict=True):
        op, shapes = re.search(r"OpType=(\w+)", body), re.search(r"TensorShape=(\[[^\]]*\])", body)
        sequence = re.search(r"SequenceNumber=(\d+)", body)
        found[int(rank)] = {"op": op[1] if op else None, "shapes": shapes[1] if shapes else None,
                            "sequence": int(sequence[1]) if sequence else None}
    return found


def debug_detail(bug: str = "mismatched_shapes", *, timeout: float = 90.0, quiet: bool = False) -> dict:
    """Run ``bugs.BUG`` (``mismatched_shapes`` or ``wrong_order``) with ``TORCH_DISTRIBUTED_DEBUG=DETAIL``: before each
    collective the ranks compare its fingerprint (op, shapes, dtypes), so the error names every rank's op and shapes.
    Returns ``{"bug", "rank" (the first to report), "line", "collectives": {rank: {"op", "shapes", "sequence"}},
    "differ" and "message" (torch's words, from that rank's side)}``."""
    from dtutor.launch import LaunchError, run, torchrun_command

    if bug not in ("mismatched_shapes", "wrong_order"):
        raise ValueError(f"bug: 'mismatched_shapes' or 'wrong_order', got {bug!r}")
    _show(torchrun_command(f"{BUGS}:{bug}", 2, {}), env="TORCH_DISTRIBUTED_DEBUG=DETAIL", quiet=quiet)
    try:
        with environment(TORCH_DISTRIBUTED_DEBUG="DETAIL"):  # read by every rank when it imports torch.distributed
            run(f"{BUGS}:{bug}", 2, timeout=timeout, quiet=True)
    except LaunchError as error:
        text, rank = error.remote_traceback, error.rank
    else:
        raise RuntimeError(f"{bug} finished under TORCH_DISTRIBUTED_DEBUG=DETAIL: no mismatch was found")
    message = next((line.strip() for line in text.splitlines() if "Detected mismatch" in line), text.strip())
    differ = " ".join(message.partition("Collectives differ in the following aspects:")[2].split())
    facts = {"bug": bug, "rank": rank, "line": code_line(text), "collectives": _fingerprints(message),
             "differ": differ, "message": message}
    collectives = sorted(facts["collectives"].items())
    _say(f"every rank raises in {facts['line']}: {message.partition('. Rank')[0]}",
         *[f"    rank {r} is running {c['op']} #{c['sequence']} of shape {c['shapes']}" for r, c in collectives],
         *[f"    they differ in {what}: " + ", ".join(f"{c[what]} on rank {r}" for r, c in collectives)
           for what in ("op", "shapes") if len({c[what] for _, c in collectives}) > 1], quiet=quiet)
    return facts


def barrier_report(layers: Sequence[int] = LAYERS, wait: float = 2.0, *, timeout: float = 90.0,
                   quiet: bool = False) -> dict:
    """Launch ``tool_ranks.save_then_barrier`` on ``len(layers)`` ranks: rank 0's ``monitored_barrier`` names the ranks
    that did not arrive within ``wait`` s. Returns ``{"named": [ranks], "message", "line", "layers", "wait"}``."""
    from dtutor.launch import run, torchrun_command

    arguments = {"layers": list(layers), "wait": wait}
    _show(torchrun_command(f"{RANKS}:save_then_barrier", len(layers), arguments), quiet=quiet)
    checker = run(f"{RANKS}:save_then_barrier", len(layers), timeout=timeout, quiet=True, **arguments)[0]
    named = re.search(r"Ranks? ([\d, ]+) failed to pass monitoredBarrier", checker.get("message", ""))
    facts = {"named": [int(rank) for rank in named[1].split(",")] if named else [],
             "message": checker.get("message", "every rank arrived in time"), "line": checker.get("line", ""),
             "layers": list(layers), "wait": wait}
    _say(f"rank 0 in {facts['line'] or 'monitored_barrier'}: {facts['message']}", quiet=quiet)
    return facts


def error_file(*, timeout: float = 90.0, quiet: bool = False) -> dict:
    """Run ``examples/record_error.py`` (rank 1 raises inside ``@record``) with torchrun's ``--log-dir`` in a temporary
    folder, and read the error file torchrun gave the failed rank. Prints the file; returns ``{"rank", "path"
    (in the log folder, under a run id), "attempt_path", "message", "line", "extra_info" (its keys)}``."""
    from dtutor.launch import LaunchError, run_script

    script = EXAMPLES / "record_error.py"
    _show(["torchrun", "--standalone", "--nproc-per-node=2", "--log-dir=LOGS", f"examples/{script.name}"],
          quiet=quiet)
    with tempfile.TemporaryDirectory(prefix="dtutor-logs-") as logs, environment(PET_LOG_DIR=logs):
        try:
            run_script(script, 2, timeout=timeout, quiet=True)  # PET_LOG_DIR is torchrun's --log-dir
        except LaunchError:
            pass
        else:
            raise RuntimeError(f"{script.name} finished: no rank failed")
        path = next(Path(logs).glob("*/attempt_*/*/error.json"))
        message = json.loads(path.read_text())["message"]
        where = Path("LOGS", path.relative_to(logs))
    facts = {"rank": int(path.parent.name), "path": str(where), "attempt_path": str(Path(*where.parts[2:])),
             "message": message["message"], "line": code_line(message["extraInfo"].get("py_callstack", "")),
             "extra_info": sorted(message["extraInfo"])}
    lines = len(message["extraInfo"].get("py_callstack", "").splitlines())
    shown = {"message": {**message, "extraInfo": {**message["extraInfo"], "py_callstack": f"Traceback ({lines} lines)",
                                                  "timestamp": "..."}}}
    _say(f"torchrun's error file for rank {facts['rank']}: LOGS/<run id>/{facts['attempt_path']}",
         json.dumps(shown, indent=2), f"its py_callstack ends in {facts['line']}", quiet=quiet)
    return facts


PY_SPY_ABOUT = ("py-spy dump --pid PID prints every thread's Python stack of a running process without stopping it:\n"
                "run it on each rank of a hung job to see the line each one waits on.")


def py_spy_command(pid: int, *, native: bool = False) -> str:
    """The ``py-spy dump`` command for process ``pid`` (``native``: C/C++ frames too, e.g. inside gloo or NCCL).
    Linux may refuse to attach to a process that is not your child: then run it with ``sudo``."""
    if not isinstance(pid, int) or isinstance(pid, bool) or pid < 1:
        raise ValueError(f"pid must be a process id (a whole number >= 1), got {pid!r}")
    return f"py-spy dump --pid {pid}" + (" --native" if native else "")


def _readable_by_torchfrtrace(dump: bytes) -> bytes:
    """A gloo dump as ``torchfrtrace`` can read it. In torch 2.13 gloo's dump names the default group ``''`` in its
    ``pg_config`` while its entries name it ``'0'``, and ``torchfrtrace`` stops with ``KeyError: ('0', 0)``; the
    group is renamed as its entries name it (nothing else changes)."""
    data = pickle.loads(dump)
    if "" in data["pg_config"] and data["entries"]:
        name, description = data["entries"][0]["process_group"]
        data["pg_config"][name] = {**data["pg_config"].pop(""), "name": name, "desc": description}
    return pickle.dumps(data)


def flight_recorder(bug: str = "skip_collective", wait: float = 3.0, *, timeout: float = 90.0,
                    quiet: bool = False) -> dict:
    """Run ``tool_ranks.recorded`` (``bugs.BUG`` with the flight recorder on, collectives that give up after ``wait``
    s), then torch's analyser ``torchfrtrace`` on the ranks' dumps. Returns ``{"culprit", "error_type", "explanation",
    "sequence", "ranks": {rank: {"error", "line", "last_op"}}, "analysis": torchfrtrace's lines}``."""
    from dtutor.launch import run, torchrun_command

    with tempfile.TemporaryDirectory(prefix="dtutor-fr-") as dumps:
        arguments = {"bug": bug, "wait": wait, "dump_dir": dumps}
        _show(torchrun_command(f"{RANKS}:recorded", 2, {**arguments, "dump_dir": "DUMPS"}), quiet=quiet)
        reports = run(f"{RANKS}:recorded", 2, timeout=timeout, quiet=True, **arguments)
        for report in reports:
            path = Path(dumps, f"{FR_PREFIX}{report['rank']}")
            entries = pickle.loads(path.read_bytes())["entries"]
            report["last_op"] = {key: entries[-1][key] for key in ("profiling_name", "collective_seq_id",
                                                                   "input_sizes", "state")} if entries else None
            path.write_bytes(_readable_by_torchfrtrace(path.read_bytes()))
        command = [str(Path(sys.executable).with_name("torchfrtrace")), dumps, "--prefix", FR_PREFIX]
        analysis = subprocess.run(command, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                                  timeout=timeout).stdout  # its report is logged, to stderr
    text = analysis.split("collective stack trace:")[0]  # the stack's lines hold this machine's paths
    text = text.replace("; Error type", ";\n    Error type").replace(", Expected", ",\n    Expected")
    lines = [line.rstrip() for line in text.splitlines() if line.strip() and "tabulate is not" not in line]
    found = re.search(r"Culprit rank (\d+); Error type: (\w+), (.*)", analysis)
    sequence = re.search(r"Collective sequence number: (\d+)", analysis)
    facts = {"culprit": int(found[1]) if found else None, "error_type": found[2] if found else None,
             "explanation": found[3].strip() if found else None, "sequence": int(sequence[1]) if sequence else None,
             "ranks": {report["rank"]: report for report in reports}, "analysis": lines}
    _say(f"$ torchfrtrace DUMPS --prefix {FR_PREFIX}", *lines, *[
        f"rank {r['rank']}'s last recorded op: {r['last_op']['profiling_name']} #{r['last_op']['collective_seq_id']} "
        f"({r['last_op']['state']}), at {r['line']}" for r in reports if r["last_op"]], quiet=quiet)
    return facts


def gpu_tools() -> dict:
    """What ``NCCL_DEBUG=INFO`` and the NCCL watchdog's flight-recorder dumps add on GPU machines, as text (whether
    this torch has NCCL is reported; nothing runs). Prints the lines; returns ``{"nccl_available", "lines"}``."""
    import torch.distributed as dist

    lines = [
        "On GPU machines (nccl), set before torchrun:",
        "  NCCL_DEBUG=INFO               NCCL logs each rank's set-up: its version, the transport to each peer",
        "                                (P2P, SHM, NET/IB, NET/Socket), its rings and trees, the network interface.",
        "                                NCCL_DEBUG_SUBSYS=INIT,COLL narrows it; NCCL_DEBUG=WARN keeps the errors.",
        "  TORCH_FR_BUFFER_SIZE=2000     the flight recorder keeps each rank's last 2000 collectives: op, sizes,",
        "                                state, stack (its older name: TORCH_NCCL_TRACE_BUFFER_SIZE).",
        "  TORCH_NCCL_DUMP_ON_TIMEOUT=1  when a collective times out, NCCL's watchdog writes every rank's record to",
        "                                TORCH_FR_DUMP_TEMP_FILE + rank (by default /tmp/nccl_trace_rank_0, _1, ...).",
        "  torchfrtrace /tmp --prefix nccl_trace_rank_",
        "                                reads them all and names the first collective the ranks disagree on, and the",
        "                                culprit rank.",
        "On gloo (here) the flight recorder records too, but no watchdog dumps it: flight_recorder() dumps each rank's",
        "record when its hung collective gives up.",
    ]
    available = dist.is_available() and dist.is_nccl_available()
    lines.append(f"This torch {'has' if available else 'has no'} NCCL.")
    print("\n".join(lines))
    return {"nccl_available": available, "lines": lines}
