"""PyTorch's FSDP2 on 2 gloo ranks, proven equal to DDP (fp32, the registry's tolerance; measured 0.0)."""

import pytest
from conftest import SMALL_RUN

from dtutor import TrainConfig, launch, max_difference
from dtutor.result import identical
from dtutor.strategies import STRATEGIES

SETUP = {**SMALL_RUN, "timeout": 300, "quiet": True}
TOLERANCE = STRATEGIES["fsdp"].tolerance  # reduce-scatter then all-gather sums the same two numbers as DDP's all-reduce
FIELDS = [{"optimizer": "adam", "lr": 1e-3}, {"accumulation": 2}]


@pytest.mark.parametrize("fields", FIELDS)
def test_fsdp_reaches_ddps_parameters(fields, shared_train):
    """DDP's runs are DeepSpeed's and DDP's tests' (shared); both FSDP runs train in one launch, on first use."""
    shared_train.many(2, [{"strategy": name, **each, **SETUP} for name in ("ddp", "fsdp") for each in FIELDS])
    ddp = shared_train(2, strategy="ddp", **fields, **SETUP)[0]
    results = shared_train(2, strategy="fsdp", **fields, **SETUP)
    assert max_difference(results[0], ddp) < TOLERANCE and identical(results[0], results[1])
    assert results[0].test_accuracy == pytest.approx(ddp.test_accuracy, abs=1e-9)
    assert results[0].epochs[0].loss == pytest.approx(ddp.epochs[0].loss, rel=1e-6)


def test_stop_and_resume_from_sharded_files_is_bitwise_equal_to_an_unbroken_run(tmp_path):
    """The unbroken run and the run stopped after epoch 0 train in turn in one launch; the resumed run in another."""
    fields = {**SMALL_RUN, "strategy": "fsdp", "epochs": 3, "samples": 128, "test_samples": 0}
    folder = str(tmp_path / "fsdp")
    unbroken, first = launch.train_many(2, [fields, {**fields, "checkpoint": folder, "stop_after_epochs": 1}],
                                        timeout=300, quiet=True)
    assert [e.epoch for e in unbroken[0].epochs] == [0, 1, 2] and [e.epoch for e in first[0].epochs] == [0]
    resumed = launch.train(2, checkpoint=folder, **fields, timeout=300, quiet=True)
    assert [e.epoch for e in resumed[0].epochs] == [1, 2]
    assert identical(unbroken[0], resumed[0])


# bf16 keeps 8 significant bits: DeepSpeed stores the weights in bf16 (a weight near 0.5 to within 2^-9 x 0.5 = 1e-3),
# FSDP2 computes in bf16 from fp32 masters and reduces the gradients in fp32. After 4 SGD steps (momentum 0.9) they
# were measured 1.04e-3 apart (FSDP bf16 to fp32: 3.8e-4); the same FSDP bf16 run at twice the learning rate (as if
# the gradients were summed, not averaged) lies 1.2e-2 from DeepSpeed's, the whole training's move 1.3e-2.
BF16_TOLERANCE = 4e-3
BF16_FLOOR = 1e-4  # FSDP's bf16 run differs from its fp32 run by more: the policy really computed in bf16


def test_bf16_through_fsdps_mixed_precision_policy_is_close_to_deepspeeds_bf16():
    """One launch trains the runs in turn (``launch.train_many``); DeepSpeed's bf16 is the reference."""
    common = {"global_batch": 64, "samples": 256, "epochs": 1, "test_samples": 0, "backend": "gloo"}
    fields = {"fsdp_bf16": {"strategy": "fsdp", "precision": "bf16"},
              "deepspeed_bf16": {"strategy": "deepspeed", "zero_stage": 1, "precision": "bf16"},
              "fsdp_fp32": {"strategy": "fsdp"}, "fsdp_bf16_twice_the_rate": {"strategy": "fsdp", "precision": "bf16",
                                                                              "lr": 2 * TrainConfig().lr}}
    trained = launch.train_many(2, [{**common, **more} for more in fields.values()], timeout=300, quiet=True)
    runs = {name: results[0] for name, results in zip(fields, trained, strict=True)}
    distance = {name: max_difference(runs[name], runs["deepspeed_bf16"]) for name in runs}
    assert distance["fsdp_bf16"] < BF16_TOLERANCE < distance["fsdp_bf16_twice_the_rate"], distance
    assert max_difference(runs["fsdp_bf16"], runs["fsdp_fp32"]) > BF16_FLOOR
