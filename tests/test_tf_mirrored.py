"""MirroredStrategy (dtutor.tf.mirrored, dtutor.tf.mirrored_lessons): 2 logical-CPU replicas equal one device.

One child process with 2 logical CPU devices runs every in-process check (TensorFlow starts once). Every
comparison is against the single-device run (``mirrored``, replicas=1) of the same config, and training
must have moved the weights, so that a match is not "nothing happened". Measured on CPU: 1.5e-8 for fit
and for the custom loop, while training moves the weights by ~1.3e-2.
"""

from __future__ import annotations

import numpy as np
import pytest
from conftest import TF_SETUP, run_child

from dtutor.result import identical, max_difference
from dtutor.strategies import STRATEGIES

TOLERANCE = STRATEGIES["mirrored"].tolerance  # the registry's: mirrored against one Keras device

PROOF = """
    import pickle, sys
    from dtutor.config import TrainConfig
    from dtutor.tf import driver, mirrored_lessons, setup
    from dtutor import launch

    def error_of(call):
        try:
            call()
        except Exception as error:
            return [type(error).__name__, str(error)]
        return None

    setup_ = dict(eval(sys.argv[2]))
    tf = setup.setup_tensorflow(cpu_replicas=2)
    config = TrainConfig(strategy="mirrored", **setup_)
    out = {
        "devices": len(tf.config.list_logical_devices("CPU")),
        "two": launch.train(2, strategy="mirrored", **setup_)[0],
        "one": driver.train(replicas=1, strategy="mirrored", **setup_),
        "one_again": driver.train(replicas=1, strategy="mirrored", **setup_),
        "start": driver.initial_parameters(config),
        "custom": mirrored_lessons.train_with_custom_loop(config, replicas=2),
        "mistake": mirrored_lessons.scope_mistake(2),
        "same_setup_again": error_of(lambda: setup.setup_tensorflow(cpu_replicas=2)),
        "late_setup": error_of(lambda: setup.setup_tensorflow(cpu_replicas=4)),
        "too_many_replicas": error_of(lambda: driver.train(replicas=4, strategy="mirrored", **setup_)),
        "zero_replicas": error_of(lambda: setup.make_strategy(0)),
    }
    pickle.dump(out, open(sys.argv[1], "wb"))
"""


@pytest.fixture(scope="module")
def proof(tmp_path_factory):
    """The in-process checks, run once in a child with 2 logical CPUs (about 30 s)."""
    return run_child(PROOF, str(tmp_path_factory.mktemp("tf") / "proof.pkl"), repr(TF_SETUP))


def test_two_logical_cpu_devices_give_two_replicas(proof):
    assert proof["devices"] == 2
    assert proof["two"].details["replicas_in_sync"] == 2 and proof["two"].details["micro_batch"] == 32
    assert proof["one"].details["replicas_in_sync"] == 1 and proof["one"].details["micro_batch"] == 64


def test_training_moved_the_weights_and_repeats_exactly(proof):
    assert max_difference(proof["one"], proof["start"]) > 1000 * TOLERANCE  # a match below is not "nothing"
    assert identical(proof["one"], proof["one_again"])  # seeded: a second run in the same process is bitwise equal
    assert len(proof["one"].step_losses) == 4 and proof["one"].epochs[0].steps == 4


def test_two_replicas_with_fit_equal_one_device_with_the_same_global_batch(proof):
    assert max_difference(proof["two"], proof["one"]) <= TOLERANCE
    np.testing.assert_allclose(proof["two"].step_losses, proof["one"].step_losses, rtol=1e-5)
    assert proof["two"].epochs[0].accuracy == pytest.approx(proof["one"].epochs[0].accuracy, abs=1e-6)
    assert proof["two"].test_accuracy == pytest.approx(proof["one"].test_accuracy, abs=1e-6)


def test_the_custom_loop_on_two_replicas_equals_one_device(proof):
    assert max_difference(proof["custom"], proof["one"]) <= TOLERANCE
    np.testing.assert_allclose(proof["custom"].step_losses, proof["one"].step_losses, rtol=1e-5)


def test_the_in_process_reference_equals_a_fresh_process_reference(proof, tf_reference):
    assert identical(proof["one"], tf_reference)


def test_the_result_reports_time_memory_and_test_accuracy(proof):
    one = proof["one"]
    assert one.seconds > 0 and one.epochs[0].samples_per_second > 0
    assert one.peak_memory_kind == "process peak RSS" and one.peak_memory_bytes > 100 * 2**20
    assert 0 <= one.test_accuracy <= 1 and one.test_loss > 0
    assert sorted(one.parameters) == ["0.bias", "0.kernel", "2.bias", "2.kernel", "5.bias", "5.kernel",
                                      "6.bias", "6.kernel"]


def test_model_built_outside_the_scope_is_refused_and_the_fix_trains(proof):
    mistake = proof["mistake"]
    assert mistake["error_type"] == "ValueError"
    assert "was not created in the distribution strategy scope" in mistake["message"]
    assert "0x" not in mistake["message"] and "array(" not in mistake["message"]  # short and stable
    assert mistake["fix_trains"] and mistake["fix_weights"] == 8


def test_bad_input_in_tensorflow_gets_clear_errors(proof):
    assert proof["same_setup_again"] is None  # re-running the notebook's first cell is harmless
    kind, message = proof["late_setup"]
    assert kind == "RuntimeError" and "already initialised with 2 logical CPU" in message
    assert "Restart the kernel" in message
    kind, message = proof["too_many_replicas"]
    assert kind == "ValueError" and "asked for 4 replicas" in message
    assert "setup_tensorflow(cpu_replicas=4)" in message
    assert proof["zero_replicas"][0] == "ValueError"


def test_the_speed_title_states_what_was_measured():
    from dtutor.tf import mirrored_lessons

    title = mirrored_lessons.speed_title({1: 27.6, 2: 32.4}, "logical CPU devices")
    assert title == "logical CPU devices: 2 replicas ran 1.17x the steps/s of 1 (32.4 against 27.6)"
