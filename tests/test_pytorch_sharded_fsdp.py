"""PyTorch's FSDP2 on 2 gloo ranks, proven equal to DDP (fp32, the registry's tolerance; measured 0.0)."""

import pytest

from dtutor import launch, max_difference
from dtutor.result import identical
from dtutor.strategies import STRATEGIES

SETUP = {"global_batch": 64, "samples": 256, "epochs": 1, "test_samples": 64, "timeout": 300, "quiet": True}
TOLERANCE = STRATEGIES["fsdp"].tolerance  # reduce-scatter then all-gather sums the same two numbers as DDP's all-reduce


@pytest.mark.parametrize("fields", [{"optimizer": "adam", "lr": 1e-3}, {"accumulation": 2}])
def test_fsdp_reaches_ddps_parameters(fields):
    ddp = launch.train(2, strategy="ddp", **fields, **SETUP)[0]
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
