"""Tests for dtutor.launch.supervisor: a launch's timeout counts from the moment every rank has started its entry
point, so a slow start-up (here an entry module that takes seconds to import) is not the job's time, yet the
start-up it forgives is bounded; and a rank killed by a signal is shown by its own last lines and Python stack."""

import importlib
import sys
import time

import pytest

from dtutor.launch import LaunchError, supervisor
from dtutor.launch.runners import run_script, run_single

IMPORT_SECONDS = 4.0


@pytest.fixture
def slow_module(tmp_path, monkeypatch):
    """An entry point whose module takes ``IMPORT_SECONDS`` to import, as torch's can on a loaded machine."""
    (tmp_path / "slow_to_import.py").write_text(f"import time\ntime.sleep({IMPORT_SECONDS})\n\n\n"
                                                "def answer():\n    return 42\n")
    monkeypatch.setenv("PYTHONPATH", str(tmp_path))  # for the worker
    monkeypatch.syspath_prepend(tmp_path)  # for the caller, which checks the entry point before the launch
    monkeypatch.delitem(sys.modules, "slow_to_import", raising=False)
    importlib.import_module("slow_to_import")  # imported here once: the timed part is the worker's import
    return "slow_to_import:answer"


def test_start_up_does_not_count_against_the_timeout(slow_module):
    started = time.monotonic()
    assert run_single(slow_module, timeout=2.0) == 42
    assert time.monotonic() - started > IMPORT_SECONDS  # the launch did outlast its 2 s timeout


def test_the_start_up_forgiven_is_bounded(slow_module, monkeypatch):
    monkeypatch.setattr(supervisor, "STARTUP_GRACE", 1.0)
    started = time.monotonic()
    with pytest.raises(LaunchError, match="did not finish within 2 s") as caught:
        run_single(slow_module, timeout=2.0)
    assert caught.value.timed_out and time.monotonic() - started < IMPORT_SECONDS + 3


def test_a_plain_command_counts_its_timeout_from_the_launch(tmp_path):
    started = time.monotonic()
    with pytest.raises(LaunchError, match="did not finish within 1 s"):
        supervisor.supervise([["sleep", "30"]], entry="sleep", timeout=1.0, quiet=True)
    assert time.monotonic() - started < 1.0 + supervisor.STARTUP_GRACE / 2


def test_a_rank_that_crashes_in_c_code_is_named_with_its_python_stack(tmp_path):
    """A rank killed by a signal (here SIGABRT, as a C++ ``std::terminate`` sends) writes no report: the error
    shows its own last lines, faulthandler's stack included, rather than torchrun's traceback about it."""
    script = tmp_path / "aborts.py"
    script.write_text("import os\n\n\ndef crash_here():\n    if os.environ['RANK'] == '1':\n"
                      "        print('rank 1 about to abort', flush=True)\n        os.abort()\n\n\ncrash_here()\n")
    with pytest.raises(LaunchError, match="failed before a rank could report") as caught:
        run_script(script, 2, timeout=60, quiet=True)
    message = str(caught.value)
    assert "rank 1 about to abort" in message and "Fatal Python error: Aborted" in message
    assert "in crash_here" in message and "exitcode: -6" in message
    assert "ChildFailedError" not in message and "Extension modules" not in message


def test_torchruns_own_traceback_and_table_are_left_out_and_every_other_line_kept():
    table = ["=" * 55, "script.py FAILED", "-" * 55, "Failures:", "  <NO_OTHER_FAILURES>", "-" * 55,
             "Root Cause (first observed failure):", "[0]:", "  exitcode  : -6 (pid: 7)", "=" * 55]
    torchrun = ["Traceback (most recent call last):", '  File "torch/distributed/run.py", line 1028, in main',
                "    run(args)", "torch.distributed.elastic.multiprocessing.errors.ChildFailedError: ", *table]
    before = ["[torchrun] failed (exitcode: -6) local_rank: 1 (pid: 7) of binary: python"]
    rank = ["Traceback (most recent call last):", '  File "train.py", line 3, in f', "KeyError: 1"]
    lines = rank + before + torchrun + ["[node 1] a later line"] + torchrun
    assert supervisor.without_launcher_traceback(lines) == rank + before + ["[node 1] a later line"]
