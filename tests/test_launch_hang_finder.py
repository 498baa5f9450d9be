"""Tests for dtutor.launch.hang_finder: a hung launch (three of dtutor.failures.bugs' hangs, under torchrun and under
DeepSpeed's launcher) ends within its timeout, leaves nothing behind, and its LaunchError names the collective and
the line each rank waits on, as py-spy or (with py-spy taken away) each worker's faulthandler found it."""

import inspect
import pickle
import socket
import time
from pathlib import Path

import pytest
import torch
from conftest import marked_processes, require_horovod

from dtutor import launch
from dtutor.failures import bugs
from dtutor.launch import hang_finder, runners, supervisor
from dtutor.launch.ports import free_ports
from dtutor.pytorch import ddp_lessons

TIMEOUT = 5  # seconds from the start of the entry point: the ranks are in their collectives after about 1


def line_of(function, code: str, occurrence: int) -> int:
    """The number (in its file) of the ``occurrence``-th line of ``function``'s source that starts with ``code``."""
    lines, first = inspect.getsourcelines(function)
    return [first + i for i, line in enumerate(lines) if line.strip().startswith(code)][occurrence]


# bug -> rank -> (the torch.distributed call it waits in, the start of its line of code, which such line: the
# buggy branch's, after the fix's or the other rank's)
HANGS = {
    "skip_collective": {0: ("all_reduce", "dist.all_reduce(loss)", 0), 1: ("barrier", "dist.barrier()", 0)},
    "unmatched_send": {0: ("recv", "dist.recv(theirs, src=peer)", -1), 1: ("recv", "dist.recv(theirs, src=peer)", -1)},
    "wrong_order": {0: ("broadcast", "dist.broadcast(seed, src=0)", 0), 1: ("all_reduce", "dist.all_reduce(loss)", -1)},
}


def port_is_free(port: int) -> bool:
    """Whether a server could listen on ``port`` of 127.0.0.1 now: no process of the job still holds it (closed
    connections that linger in TIME_WAIT do not count, as for any server that sets SO_REUSEADDR)."""
    with socket.socket() as probe:
        probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            probe.bind(("127.0.0.1", port))
        except OSError:
            return False
    return True


LAUNCHERS = {"torchrun": launch.run, "deepspeed": launch.run_deepspeed}


@pytest.mark.parametrize(("bug", "tool", "launcher"), [("skip_collective", "py-spy dump", "torchrun"),
                                                       ("unmatched_send", "faulthandler", "deepspeed"),
                                                       ("wrong_order", "py-spy dump", "torchrun")])
def test_a_hung_launch_names_where_each_rank_waits(bug, tool, launcher, process_marker, monkeypatch):
    if tool == "faulthandler":
        monkeypatch.setattr(hang_finder, "py_spy", lambda: None)
    ports = []  # the ports the launch layer gave the job (DeepSpeed's --master_port): free again afterwards
    monkeypatch.setattr(runners, "free_ports", lambda count: ports.extend(free_ports(count)) or ports[-count:])
    monkeypatch.setenv("CLICOLOR_FORCE", "1")  # as in a Jupyter kernel: py-spy would colour its frames
    started = time.monotonic()
    with pytest.raises(launch.LaunchError) as caught:
        LAUNCHERS[launcher](f"dtutor.failures.bugs:{bug}", nprocs=2, timeout=TIMEOUT, quiet=True)
    assert time.monotonic() - started < TIMEOUT + supervisor.STARTUP_GRACE  # start-up is forgiven, up to that
    assert marked_processes(process_marker) == []
    assert all(port_is_free(port) for port in ports) and len(ports) == (launcher == "deepspeed")
    function, error = getattr(bugs, bug), caught.value
    expected = {rank: {"op": op, "file": "bugs.py", "line": line_of(function, code, which), "function": bug}
                for rank, (op, code, which) in HANGS[bug].items()}
    assert {rank: {key: where[key] for key in expected[0]} for rank, where in error.waiting.items()} == expected
    message = str(error).splitlines()
    assert message[:2] == [f"{function.__module__}:{bug} did not finish within {TIMEOUT} s; all its processes were "
                           "ended.", f"Before that, {tool} found each rank here:"]
    for rank, where in expected.items():
        assert message[2 + rank].startswith(f"  rank {rank} waits in {where['op']} at bugs.py:{where['line']} ({bug}): "
                                            f"{HANGS[bug][rank][1]}")
    assert all(len(line) <= 150 for line in message) and len(message) == 4
    stack_marks = {"py-spy dump": '"MainThread"', "faulthandler": "(most recent call first)"}
    assert sorted(error.stacks) == [0, 1] and all(stack_marks[tool] in stack for stack in error.stacks.values())


@pytest.mark.parametrize("launcher", ["horovodrun", "tf_workers"])
def test_a_hung_launch_under_the_other_launchers_reports_each_ranks_stack(launcher, process_marker):
    """``ddp_lessons.sleep`` stands in for a hung job (its ranks wait outside any collective): horovodrun's ranks and
    TensorFlow's worker processes are found, and their stacks taken, as torchrun's are."""
    if launcher == "horovodrun":
        require_horovod("torch")
    run = {"horovodrun": launch.run_horovod, "tf_workers": launch.run_tf_workers}[launcher]
    with pytest.raises(launch.LaunchError) as caught:
        run("dtutor.pytorch.ddp_lessons:sleep", 2, timeout=3, quiet=True)
    error, line = caught.value, line_of(ddp_lessons.sleep, "time.sleep(seconds)", 0)
    assert error.timed_out and sorted(error.stacks) == [0, 1]
    assert {rank: (where["file"], where["line"], where["function"]) for rank, where in error.waiting.items()} == \
        {rank: ("ddp_lessons.py", line, "sleep") for rank in (0, 1)}
    assert marked_processes(process_marker) == []


def test_outside_torch_distributed_the_call_its_own_code_made_is_named():
    torch_dir = Path(torch.__file__).parent
    stack = f"""Thread 0x00007f0000000001 (most recent call first):
  File "{torch_dir}/utils/data/_utils/worker.py", line 10 in _worker_loop

Current thread 0x00007f0000000002 (most recent call first):
  File "{torch_dir}/autograd/graph.py", line 829 in _engine_run_backward
  File "{torch_dir}/autograd/__init__.py", line 364 in backward
  File "{torch_dir}/_tensor.py", line 630 in backward
  File "/nowhere/train.py", line 42 in train_step
  File "/nowhere/train.py", line 50 in <module>
"""
    assert hang_finder.where_it_waits(stack) == {"op": "backward", "file": "train.py", "line": 42,
                                                 "function": "train_step", "path": "/nowhere/train.py", "code": ""}
    assert hang_finder.where_it_waits(stack.replace(f"{torch_dir}/autograd/graph.py", "/nowhere/io.py")) == {
        "op": None, "file": "io.py", "line": 829, "function": "_engine_run_backward", "path": "/nowhere/io.py",
        "code": ""}


def test_a_finished_rank_and_a_rank_on_another_host_are_said_so(tmp_path, no_process_may_start):
    (tmp_path / "rank0.pkl").write_bytes(pickle.dumps({"done": True}))
    (tmp_path / "rank0.pid").write_text(f"{socket.gethostname()} 1\n")
    (tmp_path / "rank1.pid").write_text("node7 4242\n")
    report = hang_finder.find_hang(tmp_path, timeout=0.1)
    assert report.lines() == ["rank 0 finished (its result is in)",
                              "rank 1 runs on node7: take its stack there (py-spy dump --pid 4242)"]
    assert report.stacks == report.waiting == {}
