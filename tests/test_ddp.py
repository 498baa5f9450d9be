import subprocess

import pytest
import torch

from dtutor import ddp, launch

SETUP = {"global_batch": 64, "samples": 256, "epochs": 1}
TOLERANCE = 1e-5  # fp32; measured differences are ~1e-8


@pytest.fixture(scope="module")
def reference():
    return ddp.single_process_reference(**SETUP)


@pytest.fixture(scope="module")
def two_ranks():
    return ddp.run(2, timeout=240, quiet=True, **SETUP)


def test_two_ranks_equal_single_process_training_on_the_combined_batch(two_ranks, reference):
    assert [r["rank"] for r in two_ranks] == [0, 1] and {r["micro_batch"] for r in two_ranks} == {32}
    assert two_ranks[0]["epochs"][0]["steps"] == 4 and two_ranks[0]["epochs"][0]["samples"] == 256
    assert ddp.max_difference(two_ranks[0]["parameters"], reference) < TOLERANCE
    assert ddp.max_difference(two_ranks[0]["parameters"], two_ranks[1]["parameters"]) == 0.0


def test_training_moved_the_parameters(two_ranks):
    start = {k: v for k, v in ddp.make_model().state_dict().items()}
    assert ddp.max_difference(two_ranks[0]["parameters"], start) > 1e-3


def test_metrics_are_averaged_across_ranks(two_ranks):
    epoch = two_ranks[0]["epochs"][0]
    assert epoch == two_ranks[1]["epochs"][0] | {"history": epoch["history"], "seconds": epoch["seconds"],
                                                  "samples_per_second": epoch["samples_per_second"]}
    local = [r["epochs"][0]["history"] for r in two_ranks]  # each rank's own step losses
    assert local[0] != local[1]
    assert epoch["loss"] == pytest.approx((sum(local[0]) + sum(local[1])) / 8, rel=1e-6)


def test_gradient_accumulation_with_no_sync_equals_the_big_batch(reference):
    results = ddp.run(2, timeout=240, quiet=True, accumulation=2, **SETUP)
    assert {r["micro_batch"] for r in results} == {16}
    assert ddp.max_difference(results[0]["parameters"], reference) < TOLERANCE


def test_two_nodes_on_localhost_match_the_single_node_run(two_ranks):
    results = ddp.run(1, nnodes=2, timeout=240, quiet=True, **SETUP)
    assert sorted(r["rank"] for r in results) == [0, 1]
    assert ddp.max_difference(results[0]["parameters"], two_ranks[0]["parameters"]) < TOLERANCE


def test_stop_and_resume_is_bitwise_equal_to_an_unbroken_run(tmp_path):
    options = {"global_batch": 64, "samples": 128, "epochs": 3, "timeout": 240, "quiet": True}
    unbroken = ddp.run(2, **options)[0]["parameters"]
    checkpoint = str(tmp_path / "ddp.pt")
    first = ddp.run(2, checkpoint=checkpoint, stop_after_epochs=1, **options)
    assert [e["epoch"] for e in first[0]["epochs"]] == [0]
    assert torch.load(checkpoint, weights_only=False)["epoch"] == 0
    resumed = ddp.run(2, checkpoint=checkpoint, **options)
    assert [e["epoch"] for e in resumed[0]["epochs"]] == [1, 2]
    for name, value in unbroken.items():
        assert torch.equal(value, resumed[0]["parameters"][name]), name


@pytest.mark.parametrize(
    ("nprocs", "options", "message"),
    [
        (2, {"global_batch": 63}, "must be a positive multiple of world size x accumulation = 2 x 1"),
        (2, {"global_batch": 64, "accumulation": 3}, "world size x accumulation = 2 x 3"),
        (2, {"global_batch": 64, "samples": 100}, "must be a positive multiple of the global batch"),
        (0, {}, "world size must be >= 1"),
        (64, {"global_batch": 64, "backend": "nccl", "samples": 128}, "'nccl' needs one GPU per rank"),
        (2, {"model": "resnet"}, "unknown model 'resnet'"),
    ],
)
def test_bad_configurations_are_refused_before_launch(monkeypatch, nprocs, options, message):
    monkeypatch.setattr(subprocess, "Popen", lambda *a, **k: pytest.fail("a process was started"))
    if "model" in options:
        with pytest.raises(ValueError, match=message):
            ddp.make_model(options["model"])
        return
    with pytest.raises(ValueError, match=message):
        ddp.run(nprocs, **options)


def test_a_bad_configuration_under_plain_torchrun_fails_with_the_same_message():
    with pytest.raises(launch.LaunchError, match="global batch 63 must be a positive multiple"):
        launch.run("dtutor.ddp:train", 2, timeout=240, quiet=True, global_batch=63)
