"""Horovod (PyTorch) on 2 gloo workers through horovodrun, proven equal to one device (fp32, the registry's
tolerance)."""

import subprocess

import pytest
from conftest import SMALL_RUN, require_horovod

from dtutor import devices, launch, max_difference
from dtutor.result import identical
from dtutor.strategies import STRATEGIES

SETUP = SMALL_RUN
TOLERANCE = STRATEGIES["horovod"].tolerance


@pytest.fixture(scope="module")
def two_ranks(shared_train):
    require_horovod("torch")
    return shared_train(2, strategy="horovod", **SETUP)  # the run test_examples_horovod_keras checks its script against


def test_two_workers_equal_one_device_on_the_combined_batch(two_ranks, small_reference):
    reference = small_reference  # the same run as DDP's reference
    assert [r.rank for r in two_ranks] == [0, 1] and two_ranks[0].details["micro_batch"] == 32
    assert max_difference(two_ranks[0], reference) < TOLERANCE and identical(two_ranks[0], two_ranks[1])
    assert two_ranks[0].epochs[0].loss == pytest.approx(reference.epochs[0].loss, rel=1e-5)


def test_stop_and_resume_is_bitwise_equal_to_an_unbroken_run(tmp_path):
    """The unbroken run and the run stopped after epoch 0 train in turn in one horovodrun launch
    (``launch.train_many``); the resumed run in another."""
    require_horovod("torch")
    fields = {"strategy": "horovod", "global_batch": 64, "samples": 128, "epochs": 3, "test_samples": 0}
    checkpoint = str(tmp_path / "horovod.pt")
    unbroken, stopped = launch.train_many(2, [fields, {**fields, "checkpoint": checkpoint, "stop_after_epochs": 1}],
                                          quiet=True, timeout=300)
    assert [e.epoch for e in unbroken[0].epochs] == [0, 1, 2] and [e.epoch for e in stopped[0].epochs] == [0]
    resumed = launch.train(2, checkpoint=checkpoint, **fields, quiet=True, timeout=300)
    assert [e.epoch for e in resumed[0].epochs] == [1, 2] and identical(unbroken[0], resumed[0])


def test_allreduce_average_and_sum_on_known_tensors():
    require_horovod("torch")
    results = launch.run_horovod("dtutor.pytorch.horovod_lessons:allreduce_demo", 2, timeout=120, quiet=True)
    assert [r["mine"] for r in results] == [[1.0, 10.0], [2.0, 20.0]]
    assert all(r["average"] == [1.5, 15.0] and r["sum"] == [3.0, 30.0] for r in results)


def test_broadcast_gives_differently_initialised_workers_rank_0s_weights():
    require_horovod("torch")
    results = launch.run_horovod("dtutor.pytorch.horovod_lessons:broadcast_demo", 2, timeout=120, quiet=True)
    assert [r["different_before"] for r in results] == [True, True]
    assert [r["equal_after"] for r in results] == [True, True]


def test_a_crashing_rank_is_reported():
    require_horovod("torch")
    with pytest.raises(launch.LaunchError) as caught:
        launch.run_horovod("dtutor.pytorch.driver:train", 2, timeout=120, quiet=True, strategy="horovod",
                           global_batch=63)
    assert "global_batch: 63" in caught.value.remote_traceback and caught.value.rank in (0, 1)


def test_more_processes_than_slots_is_refused_before_launch(monkeypatch):
    monkeypatch.setattr(subprocess, "Popen", lambda *a, **k: pytest.fail("a process was started"))
    with pytest.raises(ValueError, match="-np 4 is more than the 2 slot"):
        launch.run_horovod("dtutor.pytorch.driver:train", 4, hosts="localhost:2", strategy="horovod")
    with pytest.raises(ValueError, match="global_batch: 63"):
        launch.train(2, strategy="horovod", global_batch=63)


@pytest.mark.parametrize(("built", "message"), [(None, "Horovod is not installed"),
                                                (["tensorflow"], "built without torch")])
def test_missing_horovod_or_framework_is_refused_before_launch(monkeypatch, built, message):
    monkeypatch.setattr(devices, "horovod_frameworks", lambda: built)
    monkeypatch.setattr(subprocess, "Popen", lambda *a, **k: pytest.fail("a process was started"))
    with pytest.raises(RuntimeError, match=message):
        launch.train(2, strategy="horovod", global_batch=64)


def test_the_command_line_shown_is_the_one_run():
    command = launch.horovodrun_command("dtutor.pytorch.driver:train", 2, {"strategy": "horovod"})
    assert command == ["horovodrun", "-np", "2", "--gloo", "-H", "localhost:2", "python", "-m", "dtutor.launch",
                       "dtutor.pytorch.driver:train", "strategy=horovod"]
