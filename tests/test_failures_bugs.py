"""Tests for dtutor.failures.bugs: every fix finishes, in one launch, and each returns what plain arithmetic (or one
process training on both ranks' data) says it must. The hangs themselves are proven in test_launch_hang_finder."""

import pytest
import torch
from torch import nn

from dtutor import launch
from dtutor.failures import bugs


@pytest.fixture(scope="module")
def fixed():
    """Each rank's results of ``every_fix`` (one 2-rank launch), by bug name."""
    ranks = launch.run("dtutor.failures.bugs:every_fix", nprocs=2, timeout=120, quiet=True)
    return {name: [rank[name] for rank in ranks] for name in bugs.FIXES}


def reference_weights(model: nn.Module, steps: int, last_step_ranks: int) -> list[float]:
    """``model`` (its ``weight``) trained in one process as DDP trains it on 2 ranks: each step the mean of both
    ranks' losses on their own batches; the last step has only ``last_step_ranks`` rank(s)' batch, still over 2."""
    optimizer = torch.optim.SGD(model.parameters(), lr=0.1)
    generators = [torch.Generator().manual_seed(rank) for rank in range(2)]
    for step in range(steps):
        batches = [(torch.randn(8, 4, generator=g), torch.randn(8, 1, generator=g)) for g in generators]
        if step == steps - 1:
            batches = batches[:last_step_ranks]
        optimizer.zero_grad()
        (sum(nn.functional.mse_loss(model(x), y) for x, y in batches) / 2).backward()
        optimizer.step()
    layer = model.used if isinstance(model, bugs.TwoHeads) else model
    return layer.weight.detach().flatten().tolist()


def test_the_fixed_collectives_agree_on_every_rank(fixed):
    assert fixed["skip_collective"] == [{"rank": 0, "loss_sum": 3.0}, {"rank": 1, "loss_sum": 3.0}]  # 1 + 2
    counts = torch.bincount(torch.tensor([0, 1, 2, 2, 0, 3, 4, 4])).tolist()  # both shards' labels
    assert [rank["counts"] for rank in fixed["mismatched_shapes"]] == [counts, counts] == [[2, 1, 2, 1, 2]] * 2
    assert [rank["received"] for rank in fixed["unmatched_send"]] == [1.0, 0.0]  # each got the other's rank
    assert [(rank["seed"], rank["loss_sum"]) for rank in fixed["wrong_order"]] == [(1234, 3.0)] * 2


def test_find_unused_parameters_trains_as_one_process_would(fixed):
    torch.manual_seed(0)
    expected = reference_weights(bugs.TwoHeads(), steps=3, last_step_ranks=2)
    first, second = fixed["unused_parameter"]
    assert first["weights"] == second["weights"]
    assert first["weights"] == pytest.approx(expected, abs=1e-6)
    assert first["unused_grad_is_none"] and second["unused_grad_is_none"] and first["steps"] == 3


def test_join_lets_the_longer_shard_finish_its_last_step_alone(fixed):
    torch.manual_seed(0)
    expected = reference_weights(nn.Linear(4, 1), steps=3, last_step_ranks=1)  # Join divides by 2 all the same
    first, second = fixed["uneven_inputs"]
    assert (first["batches"], second["batches"]) == (3, 2)
    assert first["weights"] == second["weights"]
    assert first["weights"] == pytest.approx(expected, abs=1e-6)



def launch_raising(monkeypatch, error: Exception) -> None:
    """``launch.run`` raises ``error`` (what ``bugs.show`` makes of a failed launch, without one)."""
    def run(*args, **kwargs):
        raise error

    monkeypatch.setattr(launch, "run", run)


def test_show_names_a_crash_by_its_exception_line_without_the_changing_port(monkeypatch, capsys):
    trace = ('Traceback (most recent call last):\n  File "bugs.py", line 3, in f\n'
             "RuntimeError: [pair.cc:537] Read error [127.0.0.1]:41213: Connection reset by peer.\n"
             " This is typically caused by a remote worker crashing.\n")
    launch_raising(monkeypatch, launch.LaunchError("rank 1 failed", rank=1, remote_traceback=trace))
    line = "RuntimeError: [pair.cc:537] Read error [127.0.0.1]:PORT: Connection reset by peer."
    assert bugs.show("wrong_order") == {"bug": "wrong_order", "outcome": "crashed", "rank": 1, "error": line}
    assert capsys.readouterr().out == f"rank 1 failed: {line}\n"


def test_show_names_a_crash_that_no_rank_reported_as_a_crash(monkeypatch, capsys):
    headline = "dtutor.failures.bugs:mismatched_shapes failed before a rank could report; last output:"
    launch_raising(monkeypatch, launch.LaunchError(headline + "\n[rank 0] terminate called"))
    assert bugs.show("mismatched_shapes") == {"bug": "mismatched_shapes", "outcome": "crashed", "rank": None,
                                              "error": headline}
    assert capsys.readouterr().out == headline + "\n"


def test_show_prints_a_hang_as_the_launch_explains_it(monkeypatch, capsys):
    from dtutor.launch.hang_finder import HangReport

    where = {"op": "recv", "file": "bugs.py", "line": 9, "function": "f", "path": "/x/bugs.py", "code": "dist.recv(t)"}
    launch_raising(monkeypatch, launch.LaunchError("hung", hang=HangReport(stacks={0: "..."}, waiting={0: where})))
    assert bugs.show("unmatched_send") == {"bug": "unmatched_send", "outcome": "hung",
                                           "waiting": {0: {"op": "recv", "line": 9}}}
    assert capsys.readouterr().out == "hung\n"


def test_a_hang_caught_while_the_ranks_were_still_starting_is_launched_again_with_twice_the_time(monkeypatch,
                                                                                                 capsys):
    from dtutor.launch.hang_finder import HangReport

    def hang(op, line):
        where = {"op": op, "file": "bugs.py", "line": line, "function": "f", "path": "/x/bugs.py", "code": "..."}
        return launch.LaunchError("hung", hang=HangReport(stacks={0: "..."}, waiting={0: where, 1: where}))

    timeouts = []

    def run(*args, timeout, **kwargs):
        timeouts.append(timeout)
        raise hang("__init__", 124) if len(timeouts) == 1 else hang("backward", 102)

    monkeypatch.setattr(launch, "run", run)
    found = bugs.show("uneven_inputs", timeout=8)
    assert timeouts == [8, 16] and found["waiting"] == {0: {"op": "backward", "line": 102},
                                                         1: {"op": "backward", "line": 102}}
    assert "(the ranks were still starting when the 8 s ran out: again, with 16 s)" in capsys.readouterr().out
