"""Tests for dtutor.launch.slurm: the generated recipes submitted to a real Slurm.

The cluster is scripts/slurm_cluster.sh's throwaway cluster on this machine (three one-CPU nodes: two for the
jobs, one for a job left to run past its time limit meanwhile). Every launcher's job must end with the
parameters of the same run started locally by dtutor.launch; a failing rank must end its job FAILED and be
named with its traceback; Slurm must end a job at its time limit; and after the module no daemon, job step,
worker or listening port may remain (checked when the cluster fixture ends). The tests skip, with the
reason, where Slurm is not installed or this is not root (scripts/install_slurm.sh installs it)."""

from __future__ import annotations

import os
import pickle
import time
import uuid
from types import SimpleNamespace

import pytest
from conftest import SLURM_MARK, SMALL_RUN, assert_nothing_left, require_horovod

from dtutor import max_difference
from dtutor.launch import recipes, slurm, slurm_local

SMALL = {"samples": 256, "global_batch": 32, "epochs": 1, "test_samples": 0}
TOLERANCE = 1e-6  # Slurm's run against the local run: the same ranks, data and reductions (measured: 0.0)
FAILS_WITHIN = 90.0  # seconds from submission to FAILED when a rank raises at once (measured: 20-30 s, loaded)


OUTPUT = """[2026-11-23 22:48:11,780] [INFO] [runner.py:618:main] cmd = ...
[rank 0] epoch 0: loss 2.3000
[rank 1] Traceback (most recent call last):
[rank 1]   File "dtutor/pytorch/ddp_lessons.py", line 38, in fail_on_rank
[rank 1] RuntimeError: rank 1 failed on purpose
[1]<stderr>:[rank 0] Traceback (most recent call last):
[1]<stderr>:[rank 0] ValueError: afterwards
"""


def test_failed_ranks_and_their_tracebacks_are_read_from_the_output_in_order():
    failures = slurm.rank_failures(OUTPUT)
    assert list(failures) == [1, 0]
    assert failures[1].splitlines() == ["Traceback (most recent call last):",
                                        '  File "dtutor/pytorch/ddp_lessons.py", line 38, in fail_on_rank',
                                        "RuntimeError: rank 1 failed on purpose"]
    assert failures[0].splitlines()[-1] == "ValueError: afterwards"


@pytest.mark.parametrize(
    ("state", "output", "results", "message"),
    [
        ("FAILED", OUTPUT, 0, "rank 1 of job 7 failed (job FAILED):\nTraceback"),
        ("TIMEOUT", OUTPUT, 0, "job 7 ran past its time limit (00:01:00); Slurm ended it (state TIMEOUT)"),
        ("FAILED", "srun: error: n2: task 1: Exited with exit code 1\n", 0, "job 7 FAILED on n[1-2] after 3.0 s"),
        ("COMPLETED", "", 0, "no rank wrote a result into"),
    ],
)
def test_a_job_that_did_not_complete_is_explained(tmp_path, state, output, results, message):
    (tmp_path / "job.out").write_text(output)
    job = slurm.Job(7, tmp_path / "job.out", state=state, time_limit="00:01:00", nodes="n[1-2]", seconds=3.0)
    with pytest.raises(slurm.SlurmJobError) as caught:
        slurm.verdict(job, tmp_path / "results")
    assert message in str(caught.value) and caught.value.job is job
    assert caught.value.rank == (1 if message.startswith("rank 1") else None)


def test_the_first_failed_rank_is_the_earliest_report_not_the_first_in_the_output(tmp_path):
    (tmp_path / "job.out").write_text("[rank 0] Traceback (most recent call last):\n[rank 0] RuntimeError: closed\n"
                                      "[rank 1] Traceback (most recent call last):\n[rank 1] RuntimeError: first\n")
    (tmp_path / "results").mkdir()
    (tmp_path / "results" / "rank0.err").write_text("200.0\nTraceback (most recent call last):\nRuntimeError: closed\n")
    (tmp_path / "results" / "rank1.err").write_text("100.0\nTraceback (most recent call last):\nRuntimeError: first\n")
    with pytest.raises(slurm.SlurmJobError) as caught:
        slurm.verdict(slurm.Job(7, tmp_path / "job.out", state="FAILED"), tmp_path / "results")
    assert caught.value.rank == 1
    assert caught.value.remote_traceback == "Traceback (most recent call last):\nRuntimeError: first\n"


class FakeSlurm:
    """Stands in for scontrol and scancel: the job's states in turn, the last one for good (scancel: CANCELLED)."""

    def __init__(self, monkeypatch, states: list[str]):
        self.states, self.calls = list(states), []
        monkeypatch.setattr(slurm, "job_fields", self.fields)
        monkeypatch.setattr(slurm, "_slurm", lambda *arguments, env=None, cwd=None: self.calls.append(arguments))

    def fields(self, job_id: int) -> dict[str, str]:
        if self.calls and self.calls[-1][0] == "scancel":
            self.states = ["CANCELLED"]
        state = self.states.pop(0) if len(self.states) > 1 else self.states[0]
        return {"JobState": state, "Reason": "Resources" if state == "PENDING" else "None", "NodeList": "n[1-2]"}


def test_wait_prints_the_states_and_the_ranks_lines(tmp_path, monkeypatch, capsys):
    FakeSlurm(monkeypatch, ["PENDING", "RUNNING", "RUNNING", "COMPLETED"])
    (tmp_path / "job.out").write_text("[INFO] a launcher's line\n[rank 0] epoch 0: loss 2.3\n[1]<stdout>:[rank 1] hi\n")
    job = slurm.wait(slurm.Job(7, tmp_path / "job.out"), timeout=30, poll=0.01)
    lines = capsys.readouterr().out.splitlines()
    assert job.state == "COMPLETED"
    assert [line.split(" at ")[0] for line in lines[:4]] == ["[slurm] job 7 PENDING (Resources)",
                                                              "[rank 0] epoch 0: loss 2.3", "[rank 1] hi",
                                                              "[slurm] job 7 RUNNING"]
    assert lines[4].startswith("[slurm] job 7 COMPLETED on n[1-2] after") and len(lines) == 5


def test_wait_cancels_a_job_still_running_at_the_timeout(tmp_path, monkeypatch):
    fake = FakeSlurm(monkeypatch, ["RUNNING"])
    with pytest.raises(slurm.SlurmJobError, match=r"job 7 did not finish within 0.2 s; it was cancelled \(CANCELLED\)"):
        slurm.wait(slurm.Job(7, tmp_path / "job.out"), timeout=0.2, quiet=True, poll=0.01)
    assert ("scancel", "7") in fake.calls


def test_a_completed_jobs_results_come_back_in_rank_order(tmp_path):
    (tmp_path / "results").mkdir()
    for rank in (1, 0):
        (tmp_path / "results" / f"rank{rank}.pkl").write_bytes(pickle.dumps({"rank": rank}))
    job = slurm.Job(7, tmp_path / "job.out", state="COMPLETED")
    assert slurm.verdict(job, tmp_path / "results") == [{"rank": 0}, {"rank": 1}]


@pytest.fixture(scope="module")
def cluster(tmp_path_factory):
    """A three-node throwaway cluster for the module, with a one-minute job already running on one node."""
    reason = slurm_local.local_unavailable()
    if reason:
        pytest.skip(reason)
    mark = os.environ[SLURM_MARK] = uuid.uuid4().hex
    workdir = tmp_path_factory.mktemp("slurm-jobs")
    try:
        with slurm_local.local_cluster(3) as local:
            folder, ports = local.folder, local.ports()
            sleeper = recipes.sbatch_script("dtutor.pytorch.ddp_lessons:sleep", nodes=1, time="00:01:00",
                                            setup=slurm.this_environment(), seconds=600)
            yield SimpleNamespace(local=local, workdir=workdir, overtime=slurm.submit(sleeper, workdir))
    finally:
        del os.environ[SLURM_MARK]
    assert_nothing_left(folder, ports, mark)  # after the module: no Slurm, munge or worker process remains


def beside_the_local_run(cluster, shared_train, launcher: str | None = None, **fields) -> tuple[list, list]:
    """The ranks of the Slurm job and of the same run started locally (while the job runs; launched once for
    the tests that compare the same run under different launchers)."""
    fields = {**SMALL, **fields}
    submitted = slurm.start(slurm.training_script(2, launcher=launcher, **fields), workdir=cluster.workdir,
                            quiet=True)
    local = shared_train(2, **fields)
    return slurm.collect(submitted, timeout=300, quiet=True), local


def assert_equal_runs(ranks: list, local: list) -> None:
    assert [r.rank for r in ranks] == [0, 1] and {r.world_size for r in ranks} == {2}
    assert max(max_difference(rank, local[0]) for rank in ranks) <= TOLERANCE


def test_ddp_through_torchrun_on_two_nodes_equals_the_local_run(cluster, shared_train):
    assert_equal_runs(*beside_the_local_run(cluster, shared_train, strategy="ddp"))


def test_the_deepspeed_launcher_with_a_hostfile_starts_the_same_run(cluster, shared_train):
    assert_equal_runs(*beside_the_local_run(cluster, shared_train, "deepspeed", strategy="ddp"))


def test_deepspeed_zero_through_the_deepspeed_launcher_equals_the_local_run(cluster, shared_train):
    """The local run is test_pytorch_sharded_deepspeed_zero's stage-2 run (4 steps, Adam), launched once for both."""
    fields = {**SMALL_RUN, "strategy": "deepspeed", "zero_stage": 2, "optimizer": "adam", "lr": 1e-3}
    assert_equal_runs(*beside_the_local_run(cluster, shared_train, "deepspeed", **fields))


def test_horovod_with_hosts_from_the_job_equals_the_local_run(cluster, shared_train):
    require_horovod("torch")
    assert_equal_runs(*beside_the_local_run(cluster, shared_train, strategy="horovod"))


def test_multiworker_with_tf_config_from_the_job_equals_the_local_run(cluster, shared_train):
    assert_equal_runs(*beside_the_local_run(cluster, shared_train, strategy="multiworker"))


PROBE = '''
import os
import time


def fail_or_sleep(failing_rank=1):
    """Rank ``failing_rank`` raises; the others sleep, in no collective that would notice it."""
    if int(os.environ["RANK"]) == failing_rank:
        raise RuntimeError(f"rank {failing_rank} failed on purpose")
    time.sleep(600)
'''


def test_a_failing_rank_ends_the_job_failed_at_once_and_is_named_with_its_traceback(cluster, tmp_path, monkeypatch):
    (tmp_path / "slurm_probe.py").write_text(PROBE)
    monkeypatch.setenv("PYTHONPATH", os.pathsep.join([str(tmp_path), os.environ.get("PYTHONPATH", "")]))
    monkeypatch.syspath_prepend(str(tmp_path))
    script = recipes.sbatch_script("slurm_probe:fail_or_sleep", nodes=2, setup=slurm.this_environment())
    with pytest.raises(slurm.SlurmJobError) as caught:
        slurm.run_script(script, timeout=180, quiet=True, workdir=cluster.workdir)
    error = caught.value
    assert error.job.state == "FAILED" and error.rank == 1
    assert "RuntimeError: rank 1 failed on purpose" in error.remote_traceback
    assert f"rank 1 of job {error.job.job_id} failed (job FAILED)" in str(error)
    assert error.job.seconds < FAILS_WITHIN  # rank 0 sleeps 600 s: only srun --kill-on-bad-exit ends it early


def test_a_job_still_running_at_the_timeout_says_where_each_rank_waited_before_it_is_cancelled(cluster):
    """The job's two ranks sleep (a stand-in for a hung job); once both have started, ``collect`` waits 3 s."""
    script = recipes.sbatch_script("dtutor.pytorch.ddp_lessons:sleep", nodes=2, setup=slurm.this_environment())
    submitted = slurm.start(script, workdir=cluster.workdir, quiet=True)
    started = time.monotonic()
    while len(list(submitted.result_dir.glob("rank*.started"))) < 2 and time.monotonic() - started < FAILS_WITHIN:
        time.sleep(0.5)
    with pytest.raises(slurm.SlurmJobError) as caught:
        slurm.collect(submitted, timeout=3, quiet=True)
    error = caught.value
    assert "did not finish within 3 s; it was cancelled" in str(error)
    assert sorted(error.stacks) == [0, 1], str(error)
    assert {(where["file"], where["function"]) for where in error.waiting.values()} == {("ddp_lessons.py", "sleep")}


def test_a_job_past_its_time_limit_is_ended_by_slurm(cluster):
    """Last: the fixture's one-minute job has run beside the others (Slurm checks limits every 30 s)."""
    job = slurm.wait(cluster.overtime, timeout=240, quiet=True)
    assert job.state == "TIMEOUT" and job.time_limit == "00:01:00"
    with pytest.raises(slurm.SlurmJobError, match=r"ran past its time limit \(00:01:00\); Slurm ended it"):
        slurm.verdict(job, cluster.workdir / "no-results")
