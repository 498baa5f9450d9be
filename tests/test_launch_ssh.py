"""Tests for dtutor.launch.ssh: the commands for machines reached by ssh, run in bash with a stand-in ``ssh`` (it
runs the remote command here) and launchers that record what they were given."""

from __future__ import annotations

import json
import os
import subprocess
from pathlib import Path

import pytest
from conftest import launcher_recorder

from dtutor.launch import ssh
from dtutor.launch.commands import tf_config

SMALL = {"samples": 256, "global_batch": 32}
SSH = """#!/bin/bash
# ssh HOST COMMAND: run COMMAND here, as HOST would, and say where it ran
HOST=$1 exec bash -c "$2"
"""


def run_with_stand_ins(commands: str, tmp_path: Path) -> dict[str, dict]:
    """Run ``commands`` from ``tmp_path`` with the stand-ins; what each launcher was given, by "launcher-host"."""
    bin_dir, records = tmp_path / "bin", tmp_path / "records"
    bin_dir.mkdir()
    records.mkdir()
    for name, text in [("ssh", SSH)] + [(name, launcher_recorder("HOST", "here"))
                                        for name in ("torchrun", "deepspeed", "horovodrun", "python")]:
        (bin_dir / name).write_text(text)
        (bin_dir / name).chmod(0o755)
    env = {"PATH": f"{bin_dir}:{os.environ['PATH']}", "RECORDS": str(records)}
    done = subprocess.run(["bash", "-c", commands], cwd=tmp_path, env=env, capture_output=True, text=True,
                          timeout=60)
    assert done.returncode == 0, done.stderr
    return {path.stem: json.loads(path.read_text()) for path in records.glob("*.json")}


def test_torchrun_runs_on_every_machine_and_meets_at_the_first(tmp_path):
    commands = ssh.training_commands(("h1", "h2"), strategy="ddp", setup="cd $PWD", port=1234, **SMALL)
    seen = run_with_stand_ins(commands, tmp_path)
    assert sorted(seen) == ["torchrun-h1", "torchrun-h2"] and seen["torchrun-h1"] == seen["torchrun-h2"]
    argv = seen["torchrun-h1"]["argv"]
    assert " \\\n" in commands and max(map(len, commands.splitlines())) <= 100  # wrapped, and still one command
    assert "--rdzv-endpoint=h1:1234" in argv and "--nnodes=2" in argv and "backend=gloo" in argv


def test_each_tensorflow_worker_gets_its_tf_config(tmp_path):
    commands = ssh.training_commands(("h1", "h2"), strategy="multiworker", setup="cd $PWD", port=1234, **SMALL)
    seen = run_with_stand_ins(commands, tmp_path)
    assert " \\\n" in commands and max(map(len, commands.splitlines())) <= 150
    for index, host in enumerate(("h1", "h2")):
        assert json.loads(seen[f"python-{host}"]["TF_CONFIG"]) == json.loads(tf_config(["h1:1234", "h2:1234"], index))


def test_deepspeed_gets_a_hostfile_of_every_machine(tmp_path):
    commands = ssh.training_commands(("h1", "h2"), gpus_per_node=2, strategy="ddp", launcher="deepspeed", **SMALL)
    seen = run_with_stand_ins(commands, tmp_path)
    argv = seen["deepspeed-here"]["argv"]
    assert (tmp_path / "hostfile").read_text() == "h1 slots=2\nh2 slots=2\n"
    assert "--hostfile=hostfile" in argv and "--master_addr=h1" in argv and "backend=nccl" in argv


def test_horovodrun_names_every_machines_slots(tmp_path):
    commands = ssh.training_commands(("h1", "h2"), procs_per_node=2, strategy="horovod", **SMALL)
    assert run_with_stand_ins(commands, tmp_path)["horovodrun-here"]["argv"][:5] == ["-np", "4", "--gloo", "-H",
                                                                                     "h1:2,h2:2"]


def test_bad_input_is_refused_as_for_slurm():
    with pytest.raises(ValueError, match="strategy: 'single' runs in one process"):
        ssh.training_commands(strategy="single")
