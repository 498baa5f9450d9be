import pytest

from dtutor import ConfigError, TrainConfig, learning_setup
from dtutor.config import check_world, choose_backend, gpu_count


def test_defaults_are_valid_and_the_arithmetic_follows():
    config = TrainConfig(global_batch=64, samples=1000, accumulation=2)
    assert config.steps_per_epoch() == 15 and config.used_samples() == 960
    assert check_world(config, 2) == 16  # 64 = 16 per micro-batch x 2 accumulation x 2 ranks


@pytest.mark.parametrize(
    ("fields", "message"),
    [
        ({"lr": "fast"}, "lr: must be a number > 0, got 'fast'"),
        ({"lr": 0}, "lr: must be a number > 0"),
        ({"lr": float("nan")}, "lr: must be a number > 0"),
        ({"epochs": 0}, "epochs: must be a whole number >= 1, got 0"),
        ({"epochs": -1}, "epochs: must be a whole number >= 1, got -1"),
        ({"epochs": 2.0}, "epochs: must be a whole number >= 1, got 2.0"),
        ({"epochs": True}, "epochs: must be a whole number >= 1, got True"),
        ({"model": "resnet"}, "model: must be one of cnn, mlp, got 'resnet'"),
        ({"strategy": "zero4"}, "strategy: must be one of single, dataparallel, ddp"),
        ({"backend": "carrier-pigeon"}, "backend: must be one of auto, gloo, nccl, mpi"),
        ({"momentum": 1.5}, r"momentum: must be a number in \[0, 1\)"),
        ({"global_batch": 0}, "global_batch: must be a whole number >= 1"),
        ({"accumulation": "2"}, "accumulation: must be a whole number >= 1, got '2'"),
        ({"micro_batches": 0}, "micro_batches: must be a whole number >= 1, got 0"),
        ({"strategy": "ddp", "micro_batches": 2}, "micro_batches: only pipeline strategies cut a batch"),
        ({"strategy": "pipeline_1f1b", "accumulation": 2}, "accumulation: a pipeline accumulates over its"),
        ({"strategy": "tensor_parallel", "checkpoint": "x.pt"}, "checkpoint: 'tensor_parallel' keeps no checkpoints"),
        ({"samples": -5}, "samples: must be a whole number >= 1"),
        ({"seed": -1}, "seed: must be a whole number >= 0"),
        ({"test_samples": None}, "test_samples: must be a whole number >= 0"),
        ({"checkpoint": ""}, "checkpoint: must be None or a file path"),
        ({"stop_after_epochs": 0}, "stop_after_epochs: must be None or a whole number >= 1"),
        ({"return_parameters": "yes"}, "return_parameters: must be True or False"),
        ({"strategy": "mirrored", "model": "mlp"}, "model: 'mirrored' trains the Keras CNN only"),
        ({"strategy": "horovod_keras", "accumulation": 2}, "accumulation: 'horovod_keras' does not accumulate"),
        ({"strategy": "multiworker", "checkpoint": "x.pt"}, "checkpoint: the Keras driver keeps no checkpoints"),
        ({"optimizer": "lamb"}, "optimizer: must be one of sgd, adam, got 'lamb'"),
        ({"strategy": "mirrored", "optimizer": "adam"}, "optimizer: the Keras driver trains with SGD"),
        ({"strategy": "deepspeed", "zero_stage": 4}, "zero_stage: must be 0, 1, 2 or 3, got 4"),
        ({"strategy": "deepspeed", "offload": "cpu"}, "offload: must be True or False, got 'cpu'"),
        ({"strategy": "deepspeed", "offload": True}, "offload: DeepSpeed offloads a partitioned optimizer only"),
        ({"strategy": "deepspeed", "precision": "fp8"}, "precision: must be one of fp32, bf16, fp16"),
        ({"strategy": "ddp", "zero_stage": 2}, "zero_stage: only strategy='deepspeed' uses it"),
        ({"strategy": "ddp", "precision": "bf16"}, "precision: only strategy='deepspeed' or 'fsdp' uses it"),
        ({"strategy": "fsdp", "precision": "fp16"}, "precision: FSDP trains in 'fp32' or 'bf16' here"),
        ({"strategy": "fsdp", "zero_stage": 1}, "zero_stage: only strategy='deepspeed' uses it"),
    ],
)
def test_every_bad_field_is_refused_with_its_name(fields, message):
    with pytest.raises(ConfigError, match=message):
        TrainConfig(**fields)


def test_an_unknown_field_is_refused_with_the_closest_name():
    with pytest.raises(ConfigError, match="epoch: not a TrainConfig field; did you mean 'epochs'"):
        TrainConfig.from_kwargs(epoch=2)


@pytest.mark.parametrize(
    ("fields", "world", "message"),
    [
        ({"global_batch": 63}, 2, "global_batch: 63 must be a multiple of data-parallel ranks x accumulation = 2 x 1"),
        ({"global_batch": 64, "accumulation": 3}, 2, "= 2 x 3"),
        ({"global_batch": 64, "samples": 32}, 1, "samples: 32 cannot fill one global batch of 64"),
        ({}, 0, "world size: must be a whole number >= 1, got 0"),
        ({"strategy": "pipeline_gpipe", "micro_batches": 5}, 2, "micro_batches: 5 must divide the batch of each step"),
        ({"strategy": "pipeline_gpipe", "model": "mlp"}, 6, "world size: 6 pipeline stages"),
        ({"strategy": "pipeline_1f1b", "micro_batches": 2}, 4, "micro_batches: 1F1B needs .* >= 4 stages, got 2"),
        ({"strategy": "tensor_parallel", "model": "mlp"}, 3, "world size: tensor parallelism over 3 ranks"),
    ],
)
def test_batch_arithmetic_is_checked_for_the_world_size(fields, world, message):
    with pytest.raises(ConfigError, match=message):
        check_world(TrainConfig(**fields), world)


def test_the_short_form_keeps_the_strategy_and_what_differs_from_the_defaults():
    config = TrainConfig(strategy="ddp", epochs=3, backend="gloo")
    assert config.as_arguments() == {"strategy": "ddp", "epochs": 3, "backend": "gloo"}
    assert TrainConfig(**config.as_arguments()) == config


def test_replace_validates_again_and_config_travels_as_literals():
    config = TrainConfig().replace(epochs=3)
    assert config.epochs == 3 and TrainConfig(**config.as_dict()) == config
    with pytest.raises(ConfigError, match="epochs"):
        config.replace(epochs=0)


def test_the_config_module_imports_no_framework():
    import subprocess
    import sys

    code = "import sys, dtutor.config, dtutor.result, dtutor.strategies; " \
           "print(sorted(m for m in ('torch', 'tensorflow') if m in sys.modules))"
    assert subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout == "[]\n"


def test_the_learning_setup_is_checked_field_by_field():
    assert learning_setup(micro_batches=4, epochs=1)["micro_batches"] == 4
    with pytest.raises(ConfigError, match="lr: must be a number > 0"):
        learning_setup(lr=0)
    with pytest.raises(ConfigError, match="epoch: not a TrainConfig field"):
        learning_setup(epoch=2)


def test_auto_backend_is_gloo_without_gpus():
    if gpu_count() >= 2:
        pytest.skip("this machine has GPUs")
    assert choose_backend("auto", 2) == "gloo"


def test_an_unknown_backend_is_refused_naming_the_field():
    with pytest.raises(ConfigError, match="backend: unknown backend 'carrier-pigeon'; choose one of auto, gloo"):
        choose_backend("carrier-pigeon", 1)
