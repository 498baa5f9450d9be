import subprocess
import uuid

import psutil
import pytest

from dtutor import launch


def leftovers(tag: str) -> list[psutil.Process]:
    found = []
    for process in psutil.process_iter(["cmdline"]):
        if any(tag in part for part in (process.info["cmdline"] or [])):
            found.append(process)
    return found


def test_results_come_back_from_every_rank_in_rank_order():
    results = launch.run("dtutor.diagnostics:hello", nprocs=2, timeout=120, quiet=True)
    assert [r["rank"] for r in results] == [0, 1]
    assert all(r["world_size"] == 2 and r["sum_of_ranks"] == 1 for r in results)


def test_output_is_streamed_with_rank_prefixes(capsys):
    launch.run("dtutor.diagnostics:hello", nprocs=2, timeout=120)
    out = capsys.readouterr().out
    assert out.startswith("$ torchrun --standalone --nproc-per-node=2 -m dtutor.launch dtutor.diagnostics:hello")
    assert "[rank 0] hello from rank 0 of 2" in out and "[rank 1] hello from rank 1 of 2" in out


def test_two_nodes_on_localhost_agree():
    results = launch.run("dtutor.diagnostics:hello", nprocs=1, nnodes=2, timeout=180, quiet=True)
    assert sorted(r["rank"] for r in results) == [0, 1]
    assert {r["sum_of_ranks"] for r in results} == {1} and {r["world_size"] for r in results} == {2}


def test_a_crashing_rank_is_named_with_its_traceback_and_nothing_survives():
    tag = uuid.uuid4().hex
    with pytest.raises(launch.LaunchError) as caught:
        launch.run("dtutor.diagnostics:fail_on_rank", nprocs=2, timeout=120, quiet=True, failing_rank=1, tag=tag)
    assert caught.value.rank == 1
    assert "RuntimeError: rank 1 failed on purpose" in caught.value.remote_traceback
    assert "rank 1 of dtutor.diagnostics:fail_on_rank failed" in str(caught.value)
    assert leftovers(tag) == []


def test_a_timeout_ends_every_process():
    tag = uuid.uuid4().hex
    with pytest.raises(launch.LaunchError, match="did not finish within 4 s"):
        launch.run("dtutor.diagnostics:sleep", nprocs=2, timeout=4, quiet=True, seconds=300, tag=tag)
    assert leftovers(tag) == []


@pytest.mark.parametrize(
    ("entry", "options", "message"),
    [
        ("dtutor.diagnostics:hello", {"nprocs": 0}, "nprocs must be a whole number >= 1"),
        ("dtutor.diagnostics:hello", {"nnodes": 0}, "nnodes must be"),
        ("dtutor.diagnostics:hello", {"backend": "carrier-pigeon"}, "unknown backend 'carrier-pigeon'"),
        ("dtutor.diagnostics:hello", {"backend": "nccl", "nprocs": 64}, "'nccl' needs one GPU per rank"),
        ("dtutor.nowhere:hello", {}, "cannot import the entry point's module 'dtutor.nowhere'"),
        ("dtutor.diagnostics:nothing", {}, "has no function 'nothing'"),
        ("dtutor.diagnostics", {}, "must look like 'package.module:function'"),
        ("dtutor.diagnostics:sleep", {"seconds": object()}, "cannot be sent to the workers"),
        ("dtutor.diagnostics:sleep", {"minutes": 3}, "cannot take these arguments"),
        ("dtutor.diagnostics:sleep", {"timeout": 0}, "timeout must be positive"),
    ],
)
def test_bad_input_is_refused_before_any_process_starts(monkeypatch, entry, options, message):
    def no_processes(*args, **kwargs):
        raise AssertionError("a process was started")

    monkeypatch.setattr(subprocess, "Popen", no_processes)
    with pytest.raises(ValueError, match=message):
        launch.run(entry, quiet=True, **options)


def test_commands_shown_for_one_and_two_nodes():
    text = launch.show_commands("dtutor.diagnostics:sleep", 4, seconds=2.5, tag="two words")
    assert "torchrun --standalone --nproc-per-node=4 -m dtutor.launch dtutor.diagnostics:sleep seconds=2.5" in text
    assert "--nnodes=2 --nproc-per-node=4 --rdzv-backend=c10d --rdzv-endpoint=HOST:29400" in text
    assert "'tag='\"'\"'two words'\"'\"''" in text  # strings that are not bare words keep their quotes


def test_arguments_round_trip_through_the_command_line():
    values = {"a": 1, "b": 2.5, "c": "gloo", "d": "10", "e": [1, (2, 3)], "f": {"k": None}, "g": True}
    parsed = {k: launch._parse_value(launch._as_argument(k, v).partition("=")[2]) for k, v in values.items()}
    assert parsed == values


def test_auto_backend_is_gloo_without_gpus():
    if launch.gpu_count() >= 2:
        pytest.skip("this machine has GPUs")
    assert launch.choose_backend("auto", 2) == "gloo"
