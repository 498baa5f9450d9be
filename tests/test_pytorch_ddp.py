"""DDP on 2 gloo ranks, launched through torchrun, proven equal to one device (fp32, within the registry's tolerance;
measured differences are ~1e-8: the order of the gradient sums differs)."""

import subprocess
from pathlib import Path

import pytest
from conftest import SMALL_RUN

from dtutor import launch, learning_setup, max_difference, models, plots
from dtutor.result import identical
from dtutor.strategies import STRATEGIES

SETUP = SMALL_RUN  # 4 steps; its single-device run is shared with the other strategies' tests
TOLERANCE = STRATEGIES["ddp"].tolerance


@pytest.fixture(scope="module")
def reference(shared_train):
    return shared_train(1, strategy="single", **SETUP)[0]  # conftest's small_reference too


@pytest.fixture(scope="module")
def two_ranks(shared_train):
    """DDP on ``SETUP``; the accumulation test's run trains in the same launch (``shared_train.many``)."""
    return shared_train.many(2, [{"strategy": "ddp", **SETUP}, {"strategy": "ddp", "accumulation": 2, **SETUP}])[0]


def test_two_ranks_equal_one_device_on_the_combined_batch(two_ranks, reference):
    assert [r.rank for r in two_ranks] == [0, 1] and {r.details["micro_batch"] for r in two_ranks} == {32}
    assert two_ranks[0].epochs[0].steps == 4 and two_ranks[0].epochs[0].samples == 256
    assert max_difference(two_ranks[0], reference) < TOLERANCE
    assert identical(two_ranks[0], two_ranks[1])
    assert max_difference(reference, models.seeded(models.mnist_cnn, 0).state_dict()) > 1e-3  # it trained


def test_metrics_are_global_the_same_on_every_rank_and_match_one_device(two_ranks, reference):
    first, second = two_ranks
    assert first.epochs[0].loss == second.epochs[0].loss and first.step_losses == second.step_losses
    assert first.epochs[0].loss == pytest.approx(reference.epochs[0].loss, rel=1e-5)
    assert first.step_losses == pytest.approx(reference.step_losses, rel=1e-5)
    assert first.test_accuracy == pytest.approx(reference.test_accuracy, abs=1e-9)


def test_gradient_accumulation_with_no_sync_equals_the_big_batch(reference, two_ranks, shared_train):
    results = shared_train(2, strategy="ddp", accumulation=2, **SETUP)  # also FSDP's reference with accumulation
    assert {r.details["micro_batch"] for r in results} == {16}
    assert max_difference(results[0], reference) < TOLERANCE


def test_two_nodes_on_localhost_match_the_single_node_run(two_ranks):
    results = launch.train(1, nnodes=2, strategy="ddp", timeout=240, quiet=True, **SETUP)
    assert sorted(r.rank for r in results) == [0, 1]
    assert max_difference(results[0], two_ranks[0]) < TOLERANCE


def test_stop_and_resume_is_bitwise_equal_to_an_unbroken_run(tmp_path, shared_train):
    """The unbroken run and the run stopped after epoch 0 train in turn in one launch (the unbroken run is shared with
    test_failures_elastic's restarts); the resumed run in another."""
    fields = {"strategy": "ddp", "global_batch": 64, "samples": 128, "epochs": 3, "test_samples": 0}
    checkpoint = str(tmp_path / "ddp.pt")
    unbroken, first = shared_train.many(2, [fields, {**fields, "checkpoint": checkpoint, "stop_after_epochs": 1}],
                                        timeout=240)
    assert [e.epoch for e in unbroken[0].epochs] == [0, 1, 2] and [e.epoch for e in first[0].epochs] == [0]
    assert Path(checkpoint).exists()
    resumed = launch.train(2, checkpoint=checkpoint, **fields, timeout=240, quiet=True)
    assert [e.epoch for e in resumed[0].epochs] == [1, 2]
    assert identical(unbroken[0], resumed[0])


@pytest.mark.parametrize(
    ("nprocs", "fields", "message"),
    [
        (2, {"model": "resnet"}, "model: must be one of cnn, mlp, got 'resnet'"),
        (2, {"lr": "fast"}, "lr: must be a number > 0, got 'fast'"),
        (2, {"epochs": -1}, "epochs: must be a whole number >= 1, got -1"),
        (2, {"epochs": 0}, "epochs: must be a whole number >= 1, got 0"),
        (2, {"global_batch": 63}, "global_batch: 63 must be a multiple of data-parallel ranks x accumulation"),
        (2, {"samples": 32}, "samples: 32 cannot fill one global batch of 64"),
        (64, {"backend": "nccl", "global_batch": 64}, "'nccl' needs one GPU per rank"),
    ],
)
def test_bad_input_is_refused_before_any_process_starts(monkeypatch, nprocs, fields, message):
    monkeypatch.setattr(subprocess, "Popen", lambda *a, **k: pytest.fail("a process was started"))
    with pytest.raises(ValueError, match=message):
        launch.train(nprocs, strategy="ddp", **fields)


def test_a_bad_config_under_plain_torchrun_fails_in_the_worker_with_the_same_message():
    with pytest.raises(launch.LaunchError, match="global_batch: 63 must be a multiple") as caught:
        launch.run("dtutor.pytorch.driver:train", 2, timeout=240, quiet=True, strategy="ddp", global_batch=63)
    assert caught.value.remote_traceback.startswith("refused: global_batch: 63")  # one line naming the field
    assert "Traceback" not in caught.value.remote_traceback


def test_the_learning_run_on_two_ranks_learns_and_overlaps_one_device(shared_train):
    """138 steps amplify float rounding (measured: step losses within 2e-5), but the curves must overlap."""
    ranks = launch.train(2, strategy="ddp", timeout=600, quiet=True, **learning_setup())
    alone = shared_train(1, strategy="single", **learning_setup())[0]  # the notebooks' learning run, one device
    assert min(ranks[0].test_accuracy, alone.test_accuracy) >= 0.9
    assert plots.step_loss_gap(ranks[0], alone) < 0.05
