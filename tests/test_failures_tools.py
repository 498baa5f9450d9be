"""Tests for dtutor.failures.tools: each diagnostic tool, run for real on gloo ranks, names the culprit (the rank that
never joined, each rank's op and shapes, the ranks that never reached the barrier, the failed rank's error file and
line, the rank that skipped a collective), and no process of theirs is left behind.

The five launches run side by side, each in a process of its own (most of each is start-up and ranks waiting out a
timeout; a tool may set environment variables for its launch), so the file takes about as long as its slowest one.
"""

import linecache
import os
import uuid

import pytest
from conftest import MARKER, marked_processes, side_by_side

from dtutor.failures import bugs, tool_ranks, tools

CALLS = {  # each tool with short waits: what the tests read
    "init": (tools.init_timeout, {"wait": 2.0}),
    "detail": (tools.debug_detail, {"bug": "mismatched_shapes"}),
    "barrier": (tools.barrier_report, {}),  # the exercise's layers, tool_ranks.LAYERS = (2, 3, 40, 8), and wait 2 s
    "error_file": (tools.error_file, {}),
    "recorder": (tools.flight_recorder, {"bug": "skip_collective", "wait": 2.0}),
}


@pytest.fixture(scope="module")
def marker() -> str:
    """The value every process the module's launches start carries in its environment (``marked_processes``)."""
    return uuid.uuid4().hex


def marked_call(marker: str, function, kwargs: dict):
    """``function(quiet=True, **kwargs)`` in a pool's process, whose launches carry ``marker`` (the pool's own
    processes do not: they are not the launches')."""
    os.environ[MARKER] = marker
    return function(quiet=True, **kwargs)


@pytest.fixture(scope="module")
def found(marker) -> dict:
    """What each tool returned, by the names of ``CALLS``; all launched at once, each from a fresh process."""
    return side_by_side({name: (marked_call, marker, function, kwargs) for name, (function, kwargs) in CALLS.items()},
                        timeout=240)


def code_at(line: str, module) -> str:
    """The source text at ``file.py:N in function`` (a tool's ``line``) in ``module`` (a module, or a file's path)."""
    number = int(line.split(" ")[0].split(":")[1])
    return linecache.getline(str(getattr(module, "__file__", module)), number).strip()


def test_an_init_timeout_names_the_rank_that_never_joined(found):
    init = found["init"]
    assert (init["rank"], init["waited_for"], init["error"]) == (0, 1, "DistStoreError")  # rank 1 never called it
    assert 2.0 <= init["waited_s"] < 30.0  # the group's timeout, not torch's default of 30 minutes
    assert "timeout after 2000ms" in init["message"]
    assert init["line"].startswith("tool_ranks.py:") and "init_process_group" in code_at(init["line"], tool_ranks)


def test_debug_detail_names_the_op_and_each_ranks_shape(found):
    detail = found["detail"]
    # rank 0's labels go up to 2 and rank 1's up to 4: bincount gives 3 and 5 counts
    assert detail["collectives"] == {0: {"op": "ALLREDUCE", "shapes": "[3]", "sequence": 0},
                                     1: {"op": "ALLREDUCE", "shapes": "[5]", "sequence": 0}}
    assert "shapes: 3vs 5" in detail["differ"] or "shapes: 5vs 3" in detail["differ"]  # from the side of either
    assert detail["line"].endswith("in mismatched_shapes")
    assert code_at(detail["line"], bugs) == "dist.all_reduce(counts)"


def test_the_monitored_barrier_names_the_late_ranks(found):
    barrier = found["barrier"]
    # rank 0 arrives at 0.2 s and waits 2 s; rank 1 compresses its 3 layers (4.3 s), rank 2 saves 40 (4.0 s),
    # rank 3 arrives at 0.8 s
    assert barrier["named"] == [1, 2]
    assert "failed to pass monitoredBarrier in 2000 ms" in barrier["message"]
    assert "monitored_barrier" in code_at(barrier["line"], tool_ranks)


def test_torchruns_error_file_holds_the_failed_ranks_error_and_line(found):
    error = found["error_file"]
    assert (error["rank"], error["message"], error["attempt_path"]) == (1, "KeyError: 1", "attempt_0/1/error.json")
    assert error["extra_info"] == ["py_callstack", "timestamp"]
    assert error["line"].endswith("in load_shard")
    assert code_at(error["line"], tools.EXAMPLES / "record_error.py") == "return SHARDS[rank]"


def test_the_flight_recorder_names_the_rank_that_skipped_the_collective(found):
    recorder = found["recorder"]
    assert (recorder["culprit"], recorder["error_type"], recorder["sequence"]) == (1, "COLLECTIVE_TYPE_MISMATCH", 1)
    assert "'all_reduce' does not match found collective type: 'barrier'" in recorder["explanation"]
    ops = {rank: report["last_op"]["profiling_name"] for rank, report in recorder["ranks"].items()}
    assert ops == {0: "gloo:all_reduce", 1: "gloo:barrier"}
    lines = {rank: code_at(report["line"], bugs) for rank, report in recorder["ranks"].items()}
    assert lines == {0: "dist.all_reduce(loss)", 1: "dist.barrier()  # e.g. before saving a checkpoint"}


def test_no_process_is_left_behind(found, marker):
    assert marked_processes(marker) == []


def test_py_spy_command_and_bad_input():
    assert tools.py_spy_command(1234) == "py-spy dump --pid 1234"
    assert tools.py_spy_command(1234, native=True) == "py-spy dump --pid 1234 --native"
    with pytest.raises(ValueError, match="pid"):
        tools.py_spy_command(0)
    with pytest.raises(ValueError, match="mismatched_shapes"):
        tools.debug_detail("skip_collective")  # refused before any process starts


def test_gpu_tools_text_fits_the_screen(capsys):
    facts = tools.gpu_tools()
    printed = capsys.readouterr().out.splitlines()
    assert printed == facts["lines"] and max(len(line) for line in printed) <= tools.WIDTH
    assert any("NCCL_DEBUG=INFO" in line for line in printed) and any("torchfrtrace" in line for line in printed)
