"""MultiWorkerMirroredStrategy (dtutor.tf.multiworker): 2 worker processes, each with its own TF_CONFIG.

Proof: both workers end bitwise equal (the all-reduce hands both the same summed gradient) and within 1e-5 of
one device with the same global batch (measured 1.5e-8). A failed worker is named with its traceback and
no process of the launch survives.
"""

from __future__ import annotations

import json
import threading
import time

import numpy as np
import psutil
import pytest
from conftest import TF_SETUP, marked_processes

from dtutor import launch
from dtutor.result import identical, max_difference
from dtutor.strategies import STRATEGIES


@pytest.fixture(scope="module")
def workers(shared_train):
    return shared_train(2, strategy="multiworker", **TF_SETUP)  # test_examples_horovod_keras's script equals it


def test_two_workers_end_bitwise_equal_and_equal_to_one_device(workers, tf_reference):
    reference = tf_reference
    first, second = workers
    assert [w.rank for w in workers] == [0, 1] and [w.world_size for w in workers] == [2, 2]
    assert [w.details["replicas_in_sync"] for w in workers] == [2, 2]
    assert identical(first, second)
    assert max_difference(first, reference) <= STRATEGIES["multiworker"].tolerance
    np.testing.assert_allclose(first.step_losses, reference.step_losses, rtol=1e-5)
    assert first.test_accuracy == pytest.approx(reference.test_accuracy, abs=1e-6)
    assert psutil.Process().children(recursive=True) == []


def test_the_printed_commands_are_a_complete_recipe():
    text = launch.show_tf_worker_commands("dtutor.tf.driver:train", 2, ports=[1111, 2222], strategy="multiworker")
    joined = text.replace(" \\\n    ", " ")  # launch.shell_command wraps long commands with continuations
    lines = [line for line in joined.splitlines() if line.startswith("TF_CONFIG=")]
    assert len(lines) == 2
    for index, line in enumerate(lines):
        assert json.loads(line.split("'")[1]) == {"cluster": {"worker": ["127.0.0.1:1111", "127.0.0.1:2222"]},
                                                  "task": {"type": "worker", "index": index}}
        assert line.endswith("python -m dtutor.launch dtutor.tf.driver:train strategy=multiworker")
        assert "TF_USE_LEGACY_KERAS=1" in line


def test_a_failing_worker_is_named_with_its_traceback_and_no_worker_survives(process_marker):
    outcome: list[BaseException | None] = [None]

    def target():
        try:
            launch.run_tf_workers("dtutor.tf.mirrored_lessons:fail_on_worker", 2, timeout=120, quiet=True,
                                  failing_rank=1)
        except BaseException as error:  # handed to the test
            outcome[0] = error

    thread = threading.Thread(target=target)
    thread.start()
    most = 0
    while thread.is_alive():
        most = max(most, len(marked_processes(process_marker)))
        time.sleep(0.05)
    error = outcome[0]
    assert isinstance(error, launch.LaunchError), error
    assert error.rank == 1
    assert "RuntimeError: worker 1 failed on purpose" in error.remote_traceback
    assert "rank 1 of dtutor.tf.mirrored_lessons:fail_on_worker failed" in str(error)
    assert most >= 1  # the watch saw the workers by their marker, so "none left" looks at the right processes
    assert marked_processes(process_marker) == []
    assert psutil.Process().children(recursive=True) == []
