"""Tests for dtutor.launch.recipes: every strategy's sbatch script, checked without Slurm.

The scripts run for real in bash with stand-ins for Slurm's commands (scontrol, srun) and for the launchers,
which record what they were given: so the nodes' addresses, the hostfile, horovodrun's -H list and every
worker's TF_CONFIG are the ones the job would use. The launchers' own argument parsers accept the flags.
(tests/test_launch_slurm.py submits the same scripts to a real Slurm.)
"""

from __future__ import annotations

import json
import os
import re
import shlex
import subprocess
import sys
from pathlib import Path

import pytest
from conftest import launcher_recorder

from dtutor.config import ConfigError
from dtutor.launch import recipes
from dtutor.launch.commands import tf_config
from dtutor.strategies import STRATEGIES

SMALL = {"samples": 256, "global_batch": 32}
MULTI_PROCESS = [name for name, info in STRATEGIES.items() if info.launcher != "inprocess"]

SCONTROL = """#!/bin/bash
# scontrol show hostnames LIST | scontrol show node NAME, for a job on n1 and n2 at ADDRESSES
if [ "$2" = hostnames ]; then echo n1; echo n2; exit; fi
i=${3#n}; set -- $ADDRESSES; eval "address=\\${$i}"
echo "NodeName=n$i Arch=x86_64 CoresPerSocket=1"
echo "   NodeAddr=$address NodeHostName=somewhere Version=22.05.8"
"""
SRUN = """#!/bin/bash
# one task per node, as srun --ntasks-per-node=1 starts them
while [[ $1 == --* ]]; do shift; done
for i in 0 1; do SLURM_NODEID=$i SLURM_PROCID=$i "$@" || exit 1; done
"""
RECORDER = launcher_recorder("SLURM_PROCID", "batch")  # each launcher writes what it was given, per task


def strategy_fields(name: str) -> dict:
    """A small valid config of strategy ``name`` on 2 ranks (1F1B needs a micro-batch per stage)."""
    return {**SMALL, "strategy": name, **({"micro_batches": 2} if STRATEGIES[name].schedule == "1f1b" else {})}


def run_with_stand_ins(script: str, tmp_path: Path, addresses: str = "10.0.0.1 10.0.0.2") -> dict[str, dict]:
    """Run ``script`` in bash with the stand-ins; what each launcher was given, by "launcher-task"."""
    bin_dir, records = tmp_path / "bin", tmp_path / "records"
    bin_dir.mkdir()
    records.mkdir()
    for name, text in [("scontrol", SCONTROL), ("srun", SRUN)] + [
            (launcher, RECORDER) for launcher in ("torchrun", "deepspeed", "horovodrun", "python")]:
        (bin_dir / name).write_text(text)
        (bin_dir / name).chmod(0o755)
    script = script.replace(recipes.SETUP, f"export PATH={bin_dir}:$PATH")
    env = {"PATH": os.environ["PATH"], "SLURM_JOB_NODELIST": "n[1-2]", "SLURM_JOB_ID": "123",
           "SLURM_SUBMIT_DIR": str(tmp_path), "ADDRESSES": addresses, "RECORDS": str(records)}
    done = subprocess.run(["bash", "-c", script], env=env, capture_output=True, text=True, timeout=60)
    assert done.returncode == 0, done.stderr
    return {path.stem: json.loads(path.read_text()) for path in records.glob("*.json")}


@pytest.mark.parametrize("name", MULTI_PROCESS)
def test_every_launched_strategy_gets_a_script_for_its_launcher(name):
    script = recipes.training_sbatch(2, **strategy_fields(name))
    assert recipes.sbatch_options(script)["nodes"] == "2" and f" strategy={name} " in script + " "
    launcher = STRATEGIES[name].launcher
    assert {"torchrun": "srun --ntasks-per-node=1 --kill-on-bad-exit=1 torchrun --nnodes=2",
            "deepspeed": "bash -c 'exec deepspeed --hostfile=\"$HOSTFILE\" --no_ssh",
            "horovodrun": 'horovodrun -np 2 --gloo -H "$HOSTS"', "tf_workers": "TF_CONFIG="}[launcher] in script
    assert subprocess.run(["bash", "-n"], input=script, text=True).returncode == 0


def test_gpu_and_cpu_variants():
    gpu = recipes.training_sbatch(2, gpus_per_node=4, strategy="ddp", global_batch=256)
    cpu = recipes.training_sbatch(2, strategy="ddp", global_batch=256)
    assert recipes.sbatch_options(gpu) == {"job-name": "dtutor-ddp", "nodes": "2", "ntasks-per-node": "1",
                                           "gpus-per-node": "4", "cpus-per-task": "4", "time": "00:30:00",
                                           "output": "%x-%j.out"}
    assert "--nproc-per-node=4" in gpu and "backend=nccl" in gpu
    assert "gpus-per-node" not in recipes.sbatch_options(cpu) and "--nproc-per-node=1" in cpu and "backend=gloo" in cpu
    horovod = recipes.sbatch_options(recipes.training_sbatch(2, gpus_per_node=4, strategy="horovod", global_batch=256))
    assert horovod["ntasks-per-node"] == "4" and horovod["cpus-per-task"] == "1"  # one task per rank: its slots


def test_torchrun_on_every_node_meets_at_the_first_nodes_address(tmp_path):
    seen = run_with_stand_ins(recipes.training_sbatch(2, strategy="ddp", **SMALL), tmp_path)
    assert sorted(seen) == ["torchrun-0", "torchrun-1"] and seen["torchrun-0"] == seen["torchrun-1"]
    argv = seen["torchrun-0"]["argv"]
    assert "--rdzv-endpoint=10.0.0.1:20123" in argv and "--rdzv-id=123" in argv and "--nnodes=2" in argv


def test_deepspeed_gets_a_hostfile_from_the_job_and_its_node_rank(tmp_path):
    script = recipes.training_sbatch(2, strategy="ddp", launcher="deepspeed", **SMALL)
    seen = run_with_stand_ins(script, tmp_path)
    for rank in (0, 1):
        argv = seen[f"deepspeed-{rank}"]["argv"]
        assert f"--node_rank={rank}" in argv and "--master_addr=10.0.0.1" in argv and "--no_ssh" in argv
        assert seen[f"deepspeed-{rank}"]["hostfile"] == "n1 slots=1\nn2 slots=1\n"
        assert argv[argv.index("--module") + 1:][:2] == ["dtutor.launch", "dtutor.pytorch.driver:train"]


@pytest.mark.parametrize(("addresses", "hosts"), [("10.0.0.1 10.0.0.2", "10.0.0.1:2,10.0.0.2:2"),
                                                  ("127.0.0.1 127.0.0.1", "127.0.0.1:4")])
def test_horovodrun_gets_the_jobs_hosts_and_slots(tmp_path, addresses, hosts):
    script = recipes.training_sbatch(2, procs_per_node=2, strategy="horovod", **SMALL)
    argv = run_with_stand_ins(script, tmp_path, addresses)["horovodrun-batch"]["argv"]
    assert argv[:5] == ["-np", "4", "--gloo", "-H", hosts]


def test_each_tensorflow_worker_gets_its_tf_config(tmp_path):
    seen = run_with_stand_ins(recipes.training_sbatch(2, strategy="multiworker", **SMALL), tmp_path)
    workers = ["10.0.0.1:20123", "10.0.0.2:20124"]
    for index in (0, 1):
        assert json.loads(seen[f"python-{index}"]["TF_CONFIG"]) == json.loads(tf_config(workers, index))


def _launcher_words(script: str) -> list[str]:
    """The launcher's arguments in the script's last command (inside ``bash -c`` when there is one), with the
    variables the job would expand set to sample values."""
    sample = {"SLURM_NODEID": "1", "PORT": "20123", "HEAD_ADDR": "10.0.0.1", "SLURM_JOB_ID": "123"}
    last = re.sub(r" \\\n\s*", " ", script).strip().splitlines()[-1]  # the last command, its continuations joined
    line = re.sub(r"\$(\w+)", lambda found: sample.get(found.group(1), found.group(0)), last)
    words = shlex.split(line)
    if "bash" in words:
        words = shlex.split(words[words.index("-c") + 1])[1:]  # after "exec"
    return words[words.index(next(w for w in words if w in ("torchrun", "deepspeed", "horovodrun"))) + 1:]


def test_the_launchers_own_parsers_accept_the_flags(monkeypatch):
    from torch.distributed.run import get_args_parser

    torchrun = get_args_parser().parse_args(_launcher_words(recipes.training_sbatch(2, strategy="ddp", **SMALL)))
    assert (torchrun.nnodes, torchrun.rdzv_backend, torchrun.module) == ("2", "c10d", True)
    deepspeed_runner = pytest.importorskip("deepspeed.launcher.runner")
    words = _launcher_words(recipes.training_sbatch(2, strategy="ddp", launcher="deepspeed", **SMALL))
    deepspeed = deepspeed_runner.parse_args(words)
    assert deepspeed.no_ssh and deepspeed.no_local_rank and deepspeed.module
    assert deepspeed.user_script == "dtutor.launch" and deepspeed.node_rank == 1
    horovod_launch = pytest.importorskip("horovod.runner.launch")
    words = _launcher_words(recipes.training_sbatch(2, strategy="horovod", **SMALL))
    monkeypatch.setattr(sys, "argv", ["horovodrun", *words])
    horovod = horovod_launch.parse_args()
    assert horovod.num_proc == 2 and horovod.use_gloo and horovod.command[:3] == ["python", "-m", "dtutor.launch"]


@pytest.mark.parametrize(
    ("options", "message"),
    [
        ({"strategy": "single"}, "strategy: 'single' runs in one process"),
        ({"strategy": "ddp", "backend": "nccl"}, "backend: nccl needs GPUs"),
        ({"strategy": "ddp", "global_batch": 63}, "global_batch: 63 must be a multiple"),
        ({"strategy": "ddp", "gpus_per_node": 4, "procs_per_node": 2}, "procs_per_node: one rank per GPU"),
        ({"strategy": "multiworker", "procs_per_node": 2}, "procs_per_node: TensorFlow runs one worker per node"),
        ({"strategy": "horovod", "launcher": "torchrun"}, "launcher: 'horovod' is started by horovodrun"),
        ({"strategy": "ddp", "launcher": "mpirun"}, "launcher: must be one of"),
        ({"strategy": "ddp", "time": "30 minutes"}, "time must look like 'HH:MM:SS'"),
        ({"strategy": "ddp", "nodes": 0}, "nodes must be a whole number >= 1"),
        ({"strategy": "ddp", "gpus_per_node": -1}, "gpus_per_node must be a whole number >= 0"),
        ({"strategy": "ddp", "lr": "fast"}, "lr: must be a number > 0"),
    ],
)
def test_bad_input_is_refused_naming_the_field(options, message):
    options = {"nodes": 2, **options}
    with pytest.raises(ValueError) as caught:
        recipes.training_sbatch(options.pop("nodes"), **options)
    assert str(caught.value).startswith(message)
    assert isinstance(caught.value, ConfigError) == (message.split(":")[0] in ("backend", "global_batch", "lr"))


def test_the_exercise_check_accepts_the_answer_and_names_each_mistake():
    answer = recipes.training_sbatch(2, gpus_per_node=2, strategy="ddp", backend="nccl")
    assert recipes.check_recipe(answer, nodes=2, gpus_per_node=2, backend="nccl") == []
    problems = recipes.check_recipe(recipes.training_sbatch(1, strategy="ddp"), nodes=2, gpus_per_node=2,
                                    backend="nccl")
    assert problems == ["#SBATCH --nodes should be 2, is 1", "#SBATCH --gpus-per-node should be 2, is None",
                        "the ranks should get backend=nccl", "torchrun should start 2 rank(s) per node (one per GPU)"]


def test_long_lines_are_wrapped_within_the_notebooks_width():
    for launcher, strategy in [("torchrun", "ddp"), ("deepspeed", "ddp"), (None, "horovod"), (None, "multiworker")]:
        script = recipes.training_sbatch(2, gpus_per_node=4, strategy=strategy, launcher=launcher, global_batch=256)
        assert " \\\n" in script and max(map(len, script.splitlines())) <= 150, launcher or strategy


def test_launcher_lines_are_the_part_after_the_shared_prologue():
    script = recipes.training_sbatch(2, strategy="ddp", **SMALL)
    assert recipes.launcher_lines(script).splitlines()[-1] == script.splitlines()[-1]
    assert "#SBATCH" not in recipes.launcher_lines(script) and script.endswith(recipes.launcher_lines(script))


def test_shell_words_leave_variables_to_the_shell_and_quote_the_rest():
    words = ["--x=$A:$B", "$C", "a b", "lr=0.1"]
    assert [recipes._shell_word(word) for word in words] == ['--x="$A:$B"', '"$C"', "'a b'", "lr=0.1"]
