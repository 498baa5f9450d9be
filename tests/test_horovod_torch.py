import subprocess

import pytest
from conftest import require_horovod

from dtutor import ddp, devices, horovod_torch, launch

SETUP = {"global_batch": 64, "samples": 256, "epochs": 1, "lr": 0.025}
TOLERANCE = 1e-5  # fp32


@pytest.fixture(scope="module")
def two_ranks():
    require_horovod("torch")
    return horovod_torch.run(2, timeout=300, quiet=True, **SETUP)


def test_two_ranks_equal_single_process_training_on_the_combined_batch(two_ranks):
    # each worker's learning rate is scaled by hvd.size(): the single process uses the same effective rate
    reference = ddp.single_process_reference(global_batch=64, samples=256, epochs=1, lr=0.025 * 2)
    assert [r["rank"] for r in two_ranks] == [0, 1] and two_ranks[0]["lr"] == pytest.approx(0.05)
    assert ddp.max_difference(two_ranks[0]["parameters"], reference) < TOLERANCE


def test_broadcast_makes_differently_initialised_workers_equal(two_ranks):
    # rank 1 builds its model from another seed; broadcast_parameters overwrote it with rank 0's
    assert ddp.max_difference(two_ranks[0]["parameters"], two_ranks[1]["parameters"]) == 0.0


def test_metrics_are_averaged_over_workers(two_ranks):
    first, second = (r["epochs"][0] for r in two_ranks)
    assert first["samples"] == second["samples"] == 256 and first["loss"] == pytest.approx(second["loss"])


def test_allreduce_average_and_sum_on_known_tensors():
    require_horovod("torch")
    results = launch.run_horovod("dtutor.horovod_torch:allreduce_demo", 2, timeout=120, quiet=True)
    assert [r["mine"] for r in results] == [[1.0, 10.0], [2.0, 20.0]]
    assert all(r["average"] == [1.5, 15.0] and r["sum"] == [3.0, 30.0] for r in results)


def test_a_crashing_rank_is_reported():
    require_horovod("torch")
    with pytest.raises(launch.LaunchError) as caught:
        launch.run_horovod("dtutor.horovod_torch:train", 2, timeout=120, quiet=True, global_batch=63)
    assert "global batch 63" in caught.value.remote_traceback and caught.value.rank in (0, 1)


def test_more_processes_than_slots_is_refused_before_launch(monkeypatch):
    monkeypatch.setattr(subprocess, "Popen", lambda *a, **k: pytest.fail("a process was started"))
    with pytest.raises(ValueError, match="-np 4 is more than the 2 slot"):
        horovod_torch.run(4, hosts="localhost:2", global_batch=64)
    with pytest.raises(ValueError, match="global batch 63"):
        horovod_torch.run(2, global_batch=63)


@pytest.mark.parametrize(("built", "message"), [(None, "Horovod is not installed"),
                                                (["tensorflow"], "built without torch")])
def test_missing_horovod_or_framework_is_refused_before_launch(monkeypatch, built, message):
    monkeypatch.setattr(devices, "horovod_frameworks", lambda: built)
    monkeypatch.setattr(subprocess, "Popen", lambda *a, **k: pytest.fail("a process was started"))
    with pytest.raises(RuntimeError, match=message):
        horovod_torch.run(2, global_batch=64)


def test_the_command_line_shown_is_the_one_run():
    command = launch.horovodrun_command("dtutor.horovod_torch:train", 2, {"global_batch": 64})
    assert command == ["horovodrun", "-np", "2", "--gloo", "-H", "localhost:2", "python", "-m", "dtutor.launch",
                       "dtutor.horovod_torch:train", "global_batch=64"]
