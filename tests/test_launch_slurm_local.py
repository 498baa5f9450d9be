"""Tests for dtutor.launch.slurm_local and scripts/slurm_cluster.sh: a throwaway Slurm cluster on this machine
runs jobs and leaves nothing behind (no daemon, job step, worker, listening port or folder), also when the
script is interrupted; and where none can start, the reason says why. The cluster tests skip, with the
reason, where Slurm is not installed or this is not root (scripts/install_slurm.sh installs it)."""

from __future__ import annotations

import os
import signal
import subprocess
import time
import uuid
from pathlib import Path

import pytest
from conftest import SLURM_MARK, assert_nothing_left

from dtutor.launch import slurm_local


def require_local_cluster() -> None:
    """Skip, saying why, where a throwaway cluster cannot start."""
    reason = slurm_local.local_unavailable()
    if reason:
        pytest.skip(reason)


def test_the_reason_names_what_is_missing(monkeypatch):
    monkeypatch.setattr(slurm_local.shutil, "which", lambda name: None if name == "munged" else f"/usr/bin/{name}")
    assert slurm_local.local_unavailable().startswith("Slurm is not installed here (munged not found)")
    monkeypatch.setattr(slurm_local.shutil, "which", lambda name: f"/usr/bin/{name}")
    monkeypatch.setattr(slurm_local.os, "geteuid", lambda: 1000)
    assert slurm_local.local_unavailable().startswith("a throwaway Slurm cluster needs root")
    with pytest.raises(RuntimeError, match="needs root"), slurm_local.local_cluster():
        pass


def test_the_cluster_script_runs_a_job_and_leaves_nothing_behind():
    require_local_cluster()
    done = subprocess.run(["bash", str(slurm_local.CLUSTER_SCRIPT), "run", "--", "bash", "-c",
                           'srun -N2 hostname && echo "$SLURM_CONF"'], capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    *hosts, conf = done.stdout.split()
    assert hosts == [os.uname().nodename] * 2
    assert not Path(conf).parent.exists() and slurm_local.leftovers(Path(conf).parent) == []


def _default_interrupt() -> None:
    """In the child: Ctrl-C's default action. A shell that runs the tests in the background hands its children
    SIGINT ignored, and bash cannot trap a signal that was ignored when it started."""
    signal.signal(signal.SIGINT, signal.SIG_DFL)


def test_an_interrupted_cluster_script_leaves_nothing_behind(tmp_path):
    require_local_cluster()
    log, mark = tmp_path / "cluster.log", uuid.uuid4().hex
    command = "sbatch -N2 -o /dev/null --wrap 'srun sleep 300' && sleep 300"
    with log.open("w") as stderr:
        script = subprocess.Popen(["bash", str(slurm_local.CLUSTER_SCRIPT), "run", "--", "bash", "-c", command],
                                  stdout=subprocess.DEVNULL, stderr=stderr, start_new_session=True,
                                  preexec_fn=_default_interrupt, env={**os.environ, SLURM_MARK: mark})
    folder = None
    try:
        conf = slurm_local._wait_ready(script, log, timeout=60)
        env = {**os.environ, "SLURM_CONF": str(conf)}
        folder, ports = conf.parent, slurm_local.LocalCluster(conf, 2, script.pid).ports()
        deadline = time.monotonic() + 60
        while "RUNNING" not in subprocess.run(["squeue", "-h", "-o", "%T"], env=env, capture_output=True,
                                              text=True).stdout:
            assert time.monotonic() < deadline, "the job never ran"
            time.sleep(0.2)
        os.killpg(script.pid, signal.SIGINT)  # what Ctrl-C in its terminal does
        try:
            status = script.wait(timeout=60)
        except subprocess.TimeoutExpired:
            pytest.fail(f"the script did not stop within 60 s of Ctrl-C; its log:\n{log.read_text()[-3000:]}")
        assert status == 130
    finally:
        if script.poll() is None:
            os.killpg(script.pid, signal.SIGKILL)
            if folder is not None:  # its daemons run in sessions of their own: stop them, or they outlive the test
                subprocess.run(["bash", str(slurm_local.CLUSTER_SCRIPT), "stop", str(folder)], capture_output=True,
                               timeout=120)
    assert_nothing_left(folder, ports, mark)
