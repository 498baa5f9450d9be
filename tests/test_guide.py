"""The guide's rules (dtutor.guide): memory first, then the machines and the framework; commands; checks."""

import subprocess
import sys

import pytest

from dtutor import guide
from dtutor.strategies import STRATEGIES

BILLION = 1e9


def test_importing_the_guide_imports_no_framework():
    code = "import sys, dtutor.guide; print(sorted(m for m in ('torch', 'tensorflow') if m in sys.modules))"
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert done.stdout.strip() == "[]"


@pytest.mark.parametrize(
    ("parameters", "gpus", "nodes", "framework", "strategy"),
    [
        (1e8, 1, 1, "torch", "single"),  # 1.6 GB on one 80 GB GPU
        (1e8, 8, 1, "torch", "ddp"),
        (1e8, 8, 4, "torch", "ddp"),  # across machines: DDP, never DataParallel
        (1e8, 0, 1, "torch", "ddp"),  # CPU processes
        (7.5 * BILLION, 8, 1, "torch", "fsdp"),  # 120 GB whole: 15 GB per GPU sharded
        (100 * BILLION, 8, 1, "torch", "deepspeed"),  # 200 GB per GPU even sharded: offload
        (1e8, 4, 1, "tensorflow", "mirrored"),
        (1e8, 4, 2, "tensorflow", "multiworker"),
        (1e8, 0, 1, "tensorflow", "mirrored"),
        (7.5 * BILLION, 8, 1, "tensorflow", "fsdp"),  # no sharded strategy in TensorFlow: move to PyTorch
    ],
)
def test_the_rules_pick_a_registered_strategy(parameters, gpus, nodes, framework, strategy):
    choice = guide.recommend_strategy(parameters, gpus, nodes, framework)
    assert choice.strategy == strategy and choice.strategy in STRATEGIES
    assert choice.reasons and choice.command


def test_the_memory_boundary_is_the_headroom_of_a_gpu():
    # 16 bytes per parameter must fit in 70% of 80 GB = 56 GB: 3.5e9 parameters exactly
    limit = guide.HEADROOM * 80 * guide.GB / guide.BYTES_PER_PARAMETER
    assert guide.recommend_strategy(limit, 2, 1).strategy == "ddp"
    assert guide.recommend_strategy(limit * 1.01, 2, 1).strategy == "fsdp"
    assert guide.recommend_strategy(limit * 1.01, 2, 1, gpu_memory_gb=160).strategy == "ddp"  # a bigger GPU: fits again
    assert guide.recommend_strategy(limit * 2.01, 2, 1).strategy == "deepspeed"  # sharded over 2 no longer fits


def test_reasons_state_the_numbers_they_rest_on():
    choice = guide.recommend_strategy(7.5 * BILLION, 8, 1)
    assert "120.0 GB per whole copy" in choice.reasons[0] and "56.0 GB usable per GPU" in choice.reasons[0]
    assert "15.0 GB each" in choice.reasons[1]


def test_commands_launch_the_course_driver_with_the_right_launcher():
    assert guide.recommend_strategy(1e8, 8, 1).command == ("torchrun --standalone --nproc-per-node=8 -m dtutor.launch "
                                                  "dtutor.pytorch.driver:train strategy=ddp")
    assert "--nnodes=4 --nproc-per-node=8" in guide.recommend_strategy(1e8, 8, 4).command
    offload = guide.recommend_strategy(100 * BILLION, 8, 2).command
    assert offload.startswith("deepspeed --num_gpus=8 --hostfile=hostfile --num_nodes=2")
    assert "zero_stage=3 offload=True" in offload
    assert "replicas=4" in guide.recommend_strategy(1e8, 4, 1, "tensorflow").command
    assert guide.recommend_strategy(1e8, 4, 2, "tensorflow").command.count("TF_CONFIG=") == 2
    assert "--nproc-per-node=2" in guide.recommend_strategy(1e8, 0, 1, cores=2).command  # CPU: one process per core


def test_without_a_gpu_the_speed_up_is_bounded_by_the_cores(monkeypatch):
    eight = guide.recommend_strategy(1e8, 0, 1, cores=8)
    assert "--nproc-per-node=8" in eight.command
    assert "up to 8x one worker's samples/s; workers beyond the 8 cores share them and add no speed" in \
        eight.reasons[1]
    monkeypatch.setattr(guide.os, "sched_getaffinity", lambda pid: {0, 2, 5}, raising=False)  # 3 of more cores
    monkeypatch.setattr(guide.os, "cpu_count", lambda: 8)
    assert guide.cpu_cores() == 3 and "--nproc-per-node=3" in guide.recommend_strategy(1e8, 0, 1).command
    monkeypatch.delattr(guide.os, "sched_getaffinity")  # macOS: no affinity mask
    monkeypatch.setattr(guide.os, "cpu_count", lambda: None)
    assert guide.cpu_cores() == 1


def test_tensorflow_sharding_is_described_as_it_is():
    reason = guide.recommend_strategy(7.5 * BILLION, 8, 1, "tensorflow").reasons[1]
    assert "keep a whole copy of the model on every replica and shard no optimizer state" in reason
    assert "DTensor" in reason and "keras.distribution" in reason


@pytest.mark.parametrize(
    ("arguments", "message"),
    [
        ((0, 1, 1, "torch", 80), "parameters: must be > 0"),
        ((1e6, -1, 1, "torch", 80), "gpus_per_node: must be a whole number >= 0"),
        ((1e6, 1, 0, "torch", 80), "nodes: must be a whole number >= 1"),
        ((1e6, 1, 1, "jax", 80), "framework: must be one of torch, tensorflow"),
        ((1e6, 1, 1, "torch", 0), "gpu_memory_gb: must be > 0"),
    ],
)
def test_bad_input_is_refused_naming_the_field(arguments, message):
    with pytest.raises(ValueError, match=message):
        guide.recommend_strategy(*arguments)


def test_model_state_is_the_zero_papers_16_bytes_per_parameter_whole_or_sharded():
    assert guide.BYTES_PER_PARAMETER == 2 + 2 + 12  # fp16 parameters and gradients, Adam's fp32 master and moments
    assert guide.model_state_gb(1e9) == pytest.approx(16.0) and guide.model_state_gb(1e9, 8) == pytest.approx(2.0)
