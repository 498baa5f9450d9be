"""Tests for dtutor.failures.exercises: the hang exercise's check says hung for the provided script (naming where each
rank waits), right for a fix that trains like one device, and wrong for a fix that finishes but stops at another
step; the barrier exercise's check compares a prediction with the ranks the run named.

The three launches run side by side, each from a process of its own (the hung one waits out its timeout).
"""

import contextlib
import io
import os
import uuid

import pytest
from conftest import MARKER, marked_processes, side_by_side

from dtutor.failures import exercises, tool_ranks

BUG = "        if loss.item() < args.target_loss:  # good enough: stop early\n"
FIXES = {  # the provided script's early stop, decided on each rank's own loss, replaced
    "right": ("        mean_loss = loss.detach().clone()\n"
              "        dist.all_reduce(mean_loss)  # the loss over the global batch, the same on every rank\n"
              "        if mean_loss.item() / world_size < args.target_loss:\n"),
    "wrong": ("        stop = torch.tensor(float(loss.item() < args.target_loss))\n"
              "        dist.broadcast(stop, src=0)  # rank 0 decides: no hang, but not the mean\n"
              "        if stop.item():\n"),
}
HUNG_TIMEOUT = 15.0  # seconds the provided script gets before it counts as hung (from its start: its steps take a few)


def marked_check(marker: str, script: str, timeout: float) -> tuple[bool, str]:
    """``check_hang_fix(script)`` in a pool's process whose launches carry ``marker``: the verdict, what it printed."""
    os.environ[MARKER] = marker
    printed = io.StringIO()
    with contextlib.redirect_stdout(printed):
        verdict = exercises.check_hang_fix(script, timeout=timeout)
    return bool(verdict), printed.getvalue()


@pytest.fixture(scope="module")
def marker() -> str:
    """The value every process the module's launches start carries in its environment (``marked_processes``)."""
    return uuid.uuid4().hex


@pytest.fixture(scope="module")
def checked(marker, tmp_path_factory) -> dict:
    """Each script's verdict and what its check printed (the provided script's as "hung")."""
    source = exercises.HANG_SCRIPT.read_text()
    assert source.count(BUG) == 1
    folder = tmp_path_factory.mktemp("fixes")
    scripts = {"hung": (str(exercises.HANG_SCRIPT), HUNG_TIMEOUT)}
    for name, fix in FIXES.items():
        (folder / f"{name}_fix.py").write_text(source.replace(BUG, fix))
        scripts[name] = (str(folder / f"{name}_fix.py"), 120.0)
    return side_by_side({name: (marked_check, marker, *script) for name, script in scripts.items()}, timeout=300)


def test_every_verdict_fits_the_screen(checked):
    assert max(len(line) for name in ("hung", "right", "wrong") for line in checked[name][1].splitlines()) <= 150


def test_the_provided_script_is_reported_hung_with_where_each_rank_waits(checked):
    right, printed = checked["hung"]
    lines = printed.splitlines()
    assert not right and lines[0] == f"hung: hangs_train.py did not finish within {HUNG_TIMEOUT:g} s on 2 ranks; " \
                                      "where each rank waits:"
    # the rank whose own loss fell below the target first left the loop for the barrier; the other is in backward
    assert any("waits in barrier at hangs_train.py" in line for line in lines[1:])
    assert any("waits in backward at hangs_train.py" in line for line in lines[1:])


def test_a_fix_that_decides_on_the_mean_loss_is_right(checked):
    right, printed = checked["right"]
    assert right and printed.startswith("right: right_fix.py finished on 2 ranks and trained like one device")


def test_a_fix_that_finishes_but_stops_at_another_step_is_wrong(checked):
    right, printed = checked["wrong"]
    assert not right
    assert printed.startswith("wrong: wrong_fix.py took 16 steps on 2 ranks; one device fed the whole batch takes 17")


def test_the_barrier_prediction_is_compared_with_the_ranks_the_run_named(capsys):
    # what tools.barrier_report returns for the exercise's layers (test_failures_tools proves a real run names them)
    report = {"named": [1, 2], "message": "[Rank 0]: Ranks 1, 2 failed to pass monitoredBarrier in 2000 ms"}
    assert exercises.BARRIER_LAYERS == tool_ranks.LAYERS
    assert exercises.check_barrier_prediction([2, 1], report=report)  # ranks 1 (compresses) and 2 (40 layers)
    assert not exercises.check_barrier_prediction(2, report=report)
    assert not exercises.check_barrier_prediction(None, report=report)
    assert not exercises.check_barrier_prediction("rank 2", report=report)
    printed = capsys.readouterr().out.splitlines()
    assert [line.split(":")[0] for line in printed if not line.startswith("The real")] == \
        ["right", "not quite", "not attempted yet", "not quite"]
    assert max(len(line) for line in printed) <= 150


def test_no_process_is_left_behind(checked, marker):
    assert marked_processes(marker) == []


def test_a_missing_or_unset_script_starts_nothing(capsys):
    assert not exercises.check_hang_fix(None) and not exercises.check_hang_fix("no/such/script.py")
    assert [line.split(":")[0] for line in capsys.readouterr().out.splitlines()] == ["not attempted yet", "not quite"]
