"""The DeepSpeed configuration builder: what it writes, and what it refuses before any process starts."""

import json

import pytest
from conftest import marked_processes

from dtutor import launch
from dtutor.config import ConfigError, TrainConfig
from dtutor.pytorch.sharded.deepspeed_config import check_batch_arithmetic, deepspeed_config, write_deepspeed_config


def config(**fields) -> TrainConfig:
    return TrainConfig(strategy="deepspeed", global_batch=64, **fields)


def test_batch_sizes_multiply_out_and_clipping_is_stated():
    settings = deepspeed_config(config(accumulation=2, zero_stage=2), world_size=2)
    assert settings["train_batch_size"] == 64 and settings["train_micro_batch_size_per_gpu"] == 16
    assert settings["gradient_accumulation_steps"] == 2
    assert settings["gradient_clipping"] == 0.0  # DeepSpeed's own default, 1.0, would differ from DDP
    assert settings["zero_optimization"] == {"stage": 2}
    assert "bf16" not in settings and "fp16" not in settings
    check_batch_arithmetic(settings, 2)


def test_offload_and_precision_are_written_where_deepspeed_reads_them():
    settings = deepspeed_config(config(zero_stage=3, offload=True, precision="bf16"), world_size=2)
    assert settings["zero_optimization"]["offload_optimizer"] == {"device": "cpu", "pin_memory": False}
    assert settings["bf16"] == {"enabled": True}
    gpu = deepspeed_config(config(zero_stage=1, offload=True, precision="fp16"), world_size=2, device="cuda")
    assert gpu["fp16"] == {"enabled": True} and gpu["zero_optimization"]["offload_optimizer"]["pin_memory"]


def test_the_json_file_is_what_deepspeed_initialize_reads(tmp_path):
    path = write_deepspeed_config(tmp_path / "ds.json", config(zero_stage=1), world_size=2)
    assert json.loads(path.read_text()) == deepspeed_config(config(zero_stage=1), world_size=2)


@pytest.mark.parametrize(
    ("fields", "world_size", "device", "message"),
    [
        ({"precision": "fp16"}, 2, "cpu", "precision: fp16 training needs GPUs"),
        ({}, 3, "cpu", "global_batch: 64 must be a multiple of data-parallel ranks x accumulation = 3 x 1"),
        ({}, 2, "tpu", "device: must be one of cpu, cuda"),
    ],
)
def test_what_cannot_work_is_refused_naming_the_field(fields, world_size, device, message):
    with pytest.raises(ConfigError, match=message):
        deepspeed_config(config(**fields), world_size, device)


def test_a_hand_edited_file_whose_batches_do_not_multiply_out_is_refused():
    settings = deepspeed_config(config(), world_size=2) | {"train_batch_size": 96}
    with pytest.raises(ConfigError, match="train_batch_size: 96 must equal .* = 64"):
        check_batch_arithmetic(settings, 2)


def test_another_strategys_config_is_refused():
    with pytest.raises(ConfigError, match="strategy: a DeepSpeed configuration is for strategy='deepspeed'"):
        deepspeed_config(TrainConfig(strategy="ddp"), 2)


def test_fp16_on_a_cpu_is_refused_by_the_launcher_before_any_process_starts(process_marker):
    with pytest.raises(ConfigError, match="precision: fp16 training needs GPUs .* use precision='bf16'"):
        launch.train(2, strategy="deepspeed", precision="fp16", backend="gloo")
    assert marked_processes(process_marker) == []
