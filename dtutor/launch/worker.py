"""What every worker process runs: ``python -m dtutor.launch ENTRY key=value ...``.

The worker finds its rank (from whichever launcher started it), prefixes its output lines with
``[rank N]`` (not under horovodrun, which prefixes them itself), calls the entry point with the arguments,
and reports to the supervisor through the folder in ``DTUTOR_RESULT_DIR``: that it started the entry point, the
pickled return value, or the
time and traceback of the failure (one line for a refused value, ``ConfigError``); and, asked by the hang finder
(``SIGUSR1``), its stacks. Started by hand in a terminal (no such folder), rank 0 prints a one-line
``result: ...`` instead.
"""

from __future__ import annotations

import io
import json
import os
import pickle
import reprlib
import sys
import time
import traceback
from pathlib import Path
from typing import Any, TextIO

from dtutor.config import ConfigError
from dtutor.launch import hang_finder
from dtutor.launch.arguments import parse_arguments, resolve_entry

RESULT_DIR_ENV = "DTUTOR_RESULT_DIR"
STARTED_SUFFIX = ".started"  # rankN.started: this rank imported its entry point and calls it now
RANK_VARIABLES = ("DTUTOR_RANK", "RANK", "HOROVOD_RANK", "OMPI_COMM_WORLD_RANK", "PMI_RANK")
RESTART_COUNT_ENV = "TORCHELASTIC_RESTART_COUNT"  # torchrun --max-restarts: how often it restarted the group so far
RESULT_WIDTH = 200  # characters of a terminal run's result line: RunResult's one-line repr fits whole
CLEAR_TO_END = "\x1b[K"  # the terminal's "erase to the end of the line"


class _Prefixed(io.TextIOBase):
    """A text stream that prefixes every line and writes whole lines at once, so ranks don't interleave.

    A line still open after a carriage return (a terminal progress bar redrawing itself) is written at once,
    prefixed, after clearing the terminal line.
    """

    def __init__(self, stream: TextIO, prefix: str):
        self._stream, self._prefix, self._pending, self._live = stream, prefix, "", False

    def write(self, text: str) -> int:
        self._pending += text
        if "\n" in self._pending:
            done, _, self._pending = self._pending.rpartition("\n")
            lines = [line.rpartition("\r")[2] for line in done.split("\n")]
            if self._live and not lines[0]:  # a bar's own line ends: no empty prefixed line after it
                self._stream.write("\n")
                lines = lines[1:]
            self._stream.write("".join(f"{self._prefix}{line}\n" for line in lines))
            self._live = False
        if "\r" in self._pending:
            live = self._pending.rpartition("\r")[2]
            self._stream.write("\r" + (self._prefix + live if live.strip() else "") + CLEAR_TO_END)
            self._pending, self._live = "", bool(live.strip())
        self._stream.flush()
        return len(text)

    def flush(self) -> None:
        self._stream.flush()

    def isatty(self) -> bool:
        return self._stream.isatty()

    def finish(self) -> None:
        """Write out a last line that has no newline."""
        if self._pending:
            self.write("\n")


def worker_rank() -> int:
    """This worker's global rank, from whichever launcher started it (torchrun, horovodrun, mpirun, dtutor),
    or its task index in ``TF_CONFIG`` for a TensorFlow worker started by hand."""
    for name in RANK_VARIABLES:
        if name in os.environ:
            return int(os.environ[name])
    if "TF_CONFIG" in os.environ:
        return int(json.loads(os.environ["TF_CONFIG"]).get("task", {}).get("index", 0))
    return 0


def restart_count() -> int:
    """How many times torchrun (``--max-restarts``) restarted this worker's group before it: 0 on the first attempt."""
    return int(os.environ.get(RESTART_COUNT_ENV, "0"))


def _begin_restart(result_dir: Path | None, rank: int) -> None:
    """After a torchrun restart: drop this rank's failure report from the attempt before (a launch's verdict is
    its last attempt's) and, on rank 0, say which restart this is."""
    restart = restart_count()
    if restart == 0:
        return
    if result_dir is not None:
        (result_dir / f"rank{rank}.err").unlink(missing_ok=True)
    if rank == 0:
        print(f"torchrun restarted every rank: restart {restart} of at most "
              f"{os.environ.get('TORCHELASTIC_MAX_RESTARTS', '?')}")


def short_repr(value: Any, width: int = RESULT_WIDTH) -> str:
    """A one-line repr of at most about ``width`` characters (results may hold whole weight tensors)."""
    shortener = reprlib.Repr()
    shortener.maxstring = shortener.maxother = width
    return " ".join(shortener.repr(value).split())[:width]


def _error_file_message(text: str) -> None:
    """Give torchrun's failure summary ``text`` as this worker's error (instead of a link to its docs)."""
    path = os.environ.get("TORCHELASTIC_ERROR_FILE")
    if path:
        with open(path, "w") as file:
            json.dump({"message": {"message": text, "extraInfo": {"timestamp": str(int(time.time()))}}}, file)


def _report_failure(result_dir: Path | None, rank: int, error: BaseException) -> None:
    """Say why this rank failed and leave it, timed, for the supervisor.

    A refused value (``ConfigError``: a config field, the backend) is one line naming the field; anything
    else is the whole traceback.
    """
    refused = isinstance(error, ConfigError)
    text = f"refused: {error}\n" if refused else traceback.format_exc()
    if result_dir is not None:
        (result_dir / f"rank{rank}.err").write_text(f"{time.time()}\n{text}")
        _drop_start_mark(result_dir, rank)
    _error_file_message(text.strip() if refused else f"{type(error).__name__}: {error}")
    print(text, file=sys.stderr, end="" if refused else "\n")
    sys.stdout.flush()
    sys.stderr.flush()


def _report_result(result_dir: Path | None, rank: int, result: Any) -> None:
    """Pickle the result for the supervisor (written, then renamed: never read half-written)."""
    if result_dir is not None:
        partial = result_dir / f"rank{rank}.tmp"
        partial.write_bytes(pickle.dumps(result))
        partial.rename(result_dir / f"rank{rank}.pkl")
        _drop_start_mark(result_dir, rank)
    elif rank == 0:
        print(f"result: {short_repr(result)}")


def drop_local_rank(argv: list[str]) -> list[str]:
    """``argv`` without the ``--local_rank=N`` DeepSpeed's launcher adds (it also sets ``LOCAL_RANK``)."""
    words, skip_next = [], False
    for word in argv:
        if skip_next:
            skip_next = False
        elif word == "--local_rank":
            skip_next = True
        elif not word.startswith("--local_rank="):
            words.append(word)
    return words


def _mark_started(result_dir: Path | None, rank: int) -> None:
    """The entry point is imported and about to run: ``rankN.started`` tells the supervisor, whose timeout counts
    from the moment every rank has started (start-up and imports are not the job's time). The rank's report
    (``rankN.pkl`` or ``rankN.err``) replaces it."""
    if result_dir is not None:
        (result_dir / f"rank{rank}{STARTED_SUFFIX}").touch()


def _drop_start_mark(result_dir: Path, rank: int) -> None:
    """Once this rank's report is written, which says it started too: a result folder holds only results."""
    (result_dir / f"rank{rank}{STARTED_SUFFIX}").unlink(missing_ok=True)


def _finished(result_dir: Path | None, rank: int) -> None:
    """The entry point returned or raised: the hang finder's files go (a result folder holds only results)."""
    if result_dir is not None:
        hang_finder.disarm(result_dir, rank)


def main(argv: list[str]) -> None:
    """Run ``ENTRY key=value ...`` (``argv``) as this rank; exit with status 1 if the entry point raises."""
    argv = drop_local_rank(argv)
    if not argv:
        raise SystemExit("usage: python -m dtutor.launch package.module:function [key=value ...]")
    entry, kwargs = argv[0], parse_arguments(argv[1:])
    rank = worker_rank()
    prefix = "" if "HOROVOD_RANK" in os.environ else f"[rank {rank}] "  # horovodrun prefixes lines itself
    stdout, stderr = _Prefixed(sys.stdout, prefix), _Prefixed(sys.stderr, prefix)
    sys.stdout, sys.stderr = stdout, stderr
    result_dir = Path(os.environ[RESULT_DIR_ENV]) if RESULT_DIR_ENV in os.environ else None
    if result_dir is not None:
        hang_finder.arm(result_dir, rank)  # on SIGUSR1 this rank's stacks go to rankN.stack (a hung launch)
    _begin_restart(result_dir, rank)
    try:
        function = resolve_entry(entry)
        _mark_started(result_dir, rank)
        result = function(**kwargs)
        stdout.finish()
    except BaseException as error:
        _finished(result_dir, rank)
        _report_failure(result_dir, rank, error)
        raise SystemExit(1) from None
    _finished(result_dir, rank)
    _report_result(result_dir, rank, result)
    stdout.finish()
    stderr.finish()
