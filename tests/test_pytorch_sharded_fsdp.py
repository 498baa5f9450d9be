"""PyTorch's FSDP2 on 2 gloo ranks, proven equal to DDP (fp32, the registry's tolerance; measured 0.0)."""

import pytest
from conftest import SMALL_RUN

from dtutor import launch, max_difference
from dtutor.result import identical
from dtutor.strategies import STRATEGIES

SETUP = {**SMALL_RUN, "timeout": 300, "quiet": True}
TOLERANCE = STRATEGIES["fsdp"].tolerance  # reduce-scatter then all-gather sums the same two numbers as DDP's all-reduce


@pytest.mark.parametrize("fields", [{"optimizer": "adam", "lr": 1e-3}, {"accumulation": 2}])
def test_fsdp_reaches_ddps_parameters(fields, shared_train):
    ddp = shared_train(2, strategy="ddp", **fields, **SETUP)[0]  # the same runs as DeepSpeed's and DDP's tests
    results = launch.train(2, strategy="fsdp", **fields, **SETUP)
    assert max_difference(results[0], ddp) < TOLERANCE and identical(results[0], results[1])
    assert results[0].test_accuracy == pytest.approx(ddp.test_accuracy, abs=1e-9)
    assert results[0].epochs[0].loss == pytest.approx(ddp.epochs[0].loss, rel=1e-6)


def test_stop_and_resume_from_sharded_files_is_bitwise_equal_to_an_unbroken_run(tmp_path):
    options = {**SETUP, "strategy": "fsdp", "epochs": 3, "samples": 128, "test_samples": 0}
    unbroken = launch.train(2, **options)[0]
    folder = str(tmp_path / "fsdp")
    first = launch.train(2, checkpoint=folder, stop_after_epochs=1, **options)
    assert [e.epoch for e in first[0].epochs] == [0]
    resumed = launch.train(2, checkpoint=folder, **options)
    assert [e.epoch for e in resumed[0].epochs] == [1, 2]
    assert identical(unbroken, resumed[0])


# bf16 rounds each weight, activation and gradient to 8 significant bits (relative 2^-8 = 4e-3): FSDP2 keeps fp32
# masters and reduces gradients in fp32, DeepSpeed keeps bf16 weights; the same bound as DeepSpeed's own bf16 proof
# against fp32 (test_pytorch_sharded_deepspeed_zero.BF16_TOLERANCE). Measured after 4 Adam steps: see the commit.
BF16_TOLERANCE = 5e-2
BF16_FLOOR = 1e-4  # FSDP's bf16 run must differ from its fp32 run by more: the policy really computed in bf16


def test_bf16_through_fsdps_mixed_precision_policy_is_close_to_deepspeeds_bf16():
    """One launch trains three runs in turn (``bench.runner.run_cases``): FSDP bf16, DeepSpeed bf16, FSDP fp32."""
    common = {"global_batch": 64, "samples": 256, "epochs": 1, "test_samples": 0, "optimizer": "adam", "lr": 1e-3,
              "backend": "gloo"}
    cases = [{"name": "fsdp_bf16", "fields": {**common, "strategy": "fsdp", "precision": "bf16"}},
             {"name": "deepspeed_bf16", "fields": {**common, "strategy": "deepspeed", "zero_stage": 1,
                                                   "precision": "bf16"}},
             {"name": "fsdp_fp32", "fields": {**common, "strategy": "fsdp"}}]
    found = launch.run("dtutor.bench.runner:run_cases", 2, timeout=300, quiet=True, cases=cases)[0]
    assert [case.get("error") for case in found] == [None] * 3
    runs = {case["name"]: case["parameters"] for case in found}
    assert max_difference(runs["fsdp_bf16"], runs["deepspeed_bf16"]) < BF16_TOLERANCE
    assert max_difference(runs["fsdp_bf16"], runs["fsdp_fp32"]) > BF16_FLOOR
