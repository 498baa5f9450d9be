"""Horovod for Keras (dtutor.tf.horovod_keras, dtutor.tf.horovod_keras_lessons), 2 workers through horovodrun.

Proof: both workers end bitwise equal and within the registry's tolerance of one device with the same global
batch, learning rate and momentum. The late-broadcast demonstration (workers built from different seeds, the callback's
broadcast alone) ends with equal workers that are far (> 1e-3) from the single-device trajectory.
"""

from __future__ import annotations

import numpy as np
import pytest
from conftest import TF_SETUP, require_horovod

from dtutor import launch
from dtutor.result import identical, max_difference
from dtutor.strategies import STRATEGIES


@pytest.fixture(scope="module")
def two_workers():
    require_horovod("tensorflow")
    return launch.train(2, strategy="horovod_keras", timeout=300, quiet=True, **TF_SETUP)


def test_two_keras_workers_equal_one_device_on_the_same_global_batch(two_workers, tf_reference):
    assert [w.rank for w in two_workers] == [0, 1]
    assert [w.details["micro_batch"] for w in two_workers] == [32, 32]
    assert identical(two_workers[0], two_workers[1])  # the broadcasts and the averaged gradients
    assert max_difference(two_workers[0], tf_reference) <= STRATEGIES["horovod_keras"].tolerance


def test_metric_average_and_step_losses_are_global(two_workers, tf_reference):
    reference = tf_reference
    first, second = two_workers
    assert first.epochs[0].loss == pytest.approx(second.epochs[0].loss, rel=1e-6)
    assert first.epochs[0].loss == pytest.approx(reference.epochs[0].loss, rel=1e-5)
    np.testing.assert_allclose(first.step_losses, reference.step_losses, rtol=1e-5)


def test_the_callback_alone_broadcasts_too_late_for_an_exact_first_step(request):
    require_horovod("tensorflow")
    late = launch.run_horovod("dtutor.tf.horovod_keras_lessons:late_broadcast", 2, framework="tensorflow", timeout=300,
                              quiet=True, early_broadcast=False, **TF_SETUP)
    reference = request.getfixturevalue("tf_reference")  # after the skip: no reference run without Horovod
    assert [r.details["broadcast_before_fit"] for r in late] == [False, False]
    assert identical(late[0], late[1])  # equal afterwards...
    assert max_difference(late[0], reference) > 1e-3  # ...but not the single-device trajectory
