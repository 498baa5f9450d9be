"""Tests for dtutor.launch.supervisor's deadline: a launch's timeout counts from the moment every rank has started its
entry point, so a slow start-up (here an entry module that takes seconds to import) is not the job's time, yet the
start-up it forgives is bounded."""

import importlib
import sys
import time

import pytest

from dtutor.launch import LaunchError, supervisor
from dtutor.launch.runners import run_single

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
