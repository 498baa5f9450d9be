import numpy as np
import pytest
from conftest import require_horovod

from dtutor import horovod_keras

SETUP = {"global_batch": 64, "samples": 256, "epochs": 1, "lr": 0.025}
TOLERANCE = 1e-5  # fp32 Keras 2 on CPU, 4 SGD steps with momentum


def max_difference(a: list, b: list) -> float:
    assert [w.shape for w in a] == [w.shape for w in b]
    return max(float(np.abs(x - y).max()) for x, y in zip(a, b, strict=True))


@pytest.fixture(scope="module")
def two_ranks():
    require_horovod("tensorflow")
    return horovod_keras.run(2, timeout=300, quiet=True, **SETUP)


def test_two_keras_workers_equal_one_process_on_the_combined_batch(two_ranks):
    reference = horovod_keras.reference(world_size=2, **SETUP)
    assert [r["micro_batch"] for r in two_ranks] == [32, 32]
    assert max_difference(two_ranks[0]["weights"], reference) < TOLERANCE


def test_broadcast_callback_makes_the_workers_equal(two_ranks):
    assert max_difference(two_ranks[0]["weights"], two_ranks[1]["weights"]) == 0.0


def test_metric_average_callback_gives_every_worker_the_same_logged_loss(two_ranks):
    assert two_ranks[0]["history"]["loss"] == pytest.approx(two_ranks[1]["history"]["loss"], rel=1e-6)


def test_the_callback_alone_broadcasts_too_late_for_an_exact_first_step():
    # without the explicit broadcast, worker 1 takes step 1 from its own (differently seeded) weights
    late = horovod_keras.run(2, timeout=300, quiet=True, broadcast_before_fit=False, **SETUP)
    reference = horovod_keras.reference(world_size=2, **SETUP)
    assert max_difference(late[0]["weights"], late[1]["weights"]) == 0.0  # equal afterwards...
    assert max_difference(late[0]["weights"], reference) > 1e-3  # ...but not the big-batch trajectory
