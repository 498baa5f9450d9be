"""TensorFlow MirroredStrategy / MultiWorkerMirroredStrategy (dtutor.tf_mirrored, dtutor.tf_worker).

TensorFlow fixes its logical devices when it initialises, for the whole process, so every test that runs
TensorFlow does it in a fresh child process; this pytest process never imports TensorFlow.

Tolerance: max |w_2 replicas - w_1 device| <= tf_mirrored.TOLERANCE (1e-5) after 4 SGD steps (256 samples,
global batch 64, lr 0.1). Measured on CPU: 1.5e-8 for fit, custom loop and two workers, while training moves
the weights by ~8.6e-3: only the order of the fp32 gradient sums differs.
"""

import json
import os
import subprocess
import sys
import textwrap
import threading
import time
import uuid

import numpy as np
import psutil
import pytest

from dtutor import tf_mirrored, tf_worker
from dtutor.launch import LaunchError


def run_python(code: str, *args: str, timeout: float = 240) -> dict:
    """Run ``code`` (with ``args`` in ``sys.argv``) in a fresh Python; return the JSON of its last line."""
    environ = {**os.environ, "DTUTOR_OFFLINE": "1", "TF_CPP_MIN_LOG_LEVEL": "2"}
    environ.pop("TF_USE_LEGACY_KERAS", None)  # the code under test must set it itself
    command = [sys.executable, "-c", textwrap.dedent(code), *args]
    done = subprocess.run(command, capture_output=True, text=True, timeout=timeout, env=environ)
    if done.returncode != 0:
        pytest.fail(f"child failed with exit code {done.returncode}:\n{done.stderr[-3000:]}")
    return json.loads(done.stdout.strip().splitlines()[-1])


PROOF = """
    import json, sys
    import numpy as np
    from dtutor import tf_mirrored as m

    def error_of(call):
        try:
            call()
        except Exception as error:
            return [type(error).__name__, str(error)]
        return None

    tf = m.setup_tensorflow(cpu_replicas=2)
    result = {
        "devices": len(tf.config.list_logical_devices("CPU")),
        "replicas": m.make_strategy(2).num_replicas_in_sync,
        "fit": m.compare_with_single_device(2, "fit"),
        "custom": m.compare_with_single_device(2, "custom"),
        "mistake": m.scope_mistake(2),
        "same_setup_again": error_of(lambda: m.setup_tensorflow(cpu_replicas=2)),
        "late_setup": error_of(lambda: m.setup_tensorflow(cpu_replicas=4)),
        "too_many_replicas": error_of(lambda: m.make_strategy(3)),
        "zero_replicas": error_of(lambda: m.make_strategy(0)),
        "indivisible_batch": error_of(lambda: m.train(m.make_strategy(2), global_batch=63)),
        "bad_mode": error_of(lambda: m.train(m.make_strategy(2), mode="keras")),
    }
    weights, _ = m.train(m.make_strategy(1), "fit")
    np.savez(sys.argv[1], *weights)
    print(json.dumps(result))
"""


@pytest.fixture(scope="module")
def proof(tmp_path_factory):
    """One child process with 2 logical CPUs runs all in-process checks (TensorFlow starts once: ~15 s)."""
    reference = tmp_path_factory.mktemp("tf") / "reference.npz"
    result = run_python(PROOF, str(reference))
    with np.load(reference) as saved:
        result["reference"] = [saved[f"arr_{i}"] for i in range(len(saved.files))]
    return result


def test_two_logical_cpu_devices_give_two_replicas(proof):
    assert proof["devices"] == 2 and proof["replicas"] == 2


@pytest.mark.parametrize("mode", ["fit", "custom"])
def test_two_replicas_equal_one_device_with_the_same_global_batch(proof, mode):
    result = proof[mode]
    assert result["match"] and result["max_abs_diff"] <= tf_mirrored.TOLERANCE
    assert result["moved"] > 100 * tf_mirrored.TOLERANCE  # training really changed the weights
    np.testing.assert_allclose(result["losses"], result["single_device_losses"], rtol=1e-5)


def test_fit_and_custom_loop_train_identically(proof):
    np.testing.assert_allclose(proof["fit"]["losses"], proof["custom"]["losses"], rtol=1e-5)


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
    assert kind == "ValueError" and "asked for 3 replicas" in message
    assert "setup_tensorflow(cpu_replicas=3)" in message
    assert proof["zero_replicas"][0] == "ValueError"
    kind, message = proof["indivisible_batch"]
    assert kind == "ValueError" and "not divisible by 2 replicas" in message
    assert proof["bad_mode"][0] == "ValueError"


def test_keras_3_already_loaded_is_refused():
    result = run_python("""
        import json
        import tensorflow as tf
        tf.keras.Model  # resolves tf.keras to Keras 3: TF_USE_LEGACY_KERAS is not set
        from dtutor.tf_mirrored import setup_tensorflow
        try:
            setup_tensorflow(2)
        except RuntimeError as error:
            print(json.dumps(str(error)))
    """)
    assert "already Keras 3" in result and "restart the kernel" in result


@pytest.mark.parametrize(
    "kwargs, match",
    [
        ({"cpu_replicas": 0}, "cpu_replicas must be an integer >= 1"),
        ({"cpu_replicas": 1.5}, "cpu_replicas must be an integer >= 1"),
    ],
)
def test_setup_refuses_bad_replica_counts_before_touching_anything(kwargs, match, monkeypatch):
    monkeypatch.delenv("TF_USE_LEGACY_KERAS", raising=False)
    with pytest.raises(ValueError, match=match):
        tf_mirrored.setup_tensorflow(**kwargs)
    assert "TF_USE_LEGACY_KERAS" not in os.environ  # refused before changing the process


@pytest.mark.parametrize(
    "kwargs, match",
    [
        ({"num_workers": 0}, "num_workers must be an integer >= 1"),
        ({"global_batch": 63}, "not divisible by 2 replicas"),
        ({"samples": 10}, "cannot fill one global batch of 64"),
        ({"steps": 0}, "steps >= 1"),
        ({"mode": "keras"}, "mode must be one of"),
        ({"timeout": 0}, "timeout must be positive"),
        ({"fault": {2: "crash"}}, "fault must map task indices"),
    ],
)
def test_launch_refuses_bad_input_before_starting_anything(kwargs, match):
    with pytest.raises(ValueError, match=match):
        tf_worker.launch_workers(**{"num_workers": 2, "verbose": False, **kwargs})
    assert psutil.Process().children(recursive=True) == []


def test_two_workers_on_localhost_end_with_equal_weights_equal_to_one_device(proof, capsys):
    result = tf_worker.launch_workers(2, timeout=240)
    printed = capsys.readouterr().out
    assert printed.count("TF_CONFIG=") == 2
    assert "python -m dtutor.launch dtutor.tf_worker:run_worker mode=fit" in printed
    assert result.replicas_in_sync == [2, 2]
    first, second = result.weights
    # the all-reduce hands every worker the same summed gradient: bit-identical weights
    assert all(np.array_equal(a, b) for a, b in zip(first, second, strict=True))
    assert tf_mirrored.max_abs_diff(first, proof["reference"]) <= tf_mirrored.TOLERANCE
    np.testing.assert_allclose(result.losses[0], proof["fit"]["single_device_losses"], rtol=1e-5)
    assert psutil.Process().children(recursive=True) == []


def tagged_processes(tag: str) -> list[psutil.Process]:
    """Every live process on this machine with ``tag`` in its command line."""
    found = []
    for process in psutil.process_iter(["cmdline"]):
        if any(tag in part for part in process.info["cmdline"] or ()):
            found.append(process)
    return found


def launch_and_watch(tag: str, **kwargs) -> tuple[BaseException | None, int]:
    """Run ``launch_workers(tag=tag, ...)`` in a thread; return what it raised and the most tagged processes
    seen alive at once while it ran (so that "none are left" afterwards is known to look at the right ones)."""
    outcome: list[BaseException | None] = [None]

    def target():
        try:
            tf_worker.launch_workers(2, tag=tag, verbose=False, **kwargs)
        except BaseException as error:  # handed to the test
            outcome[0] = error

    thread = threading.Thread(target=target)
    thread.start()
    most = 0
    while thread.is_alive():
        most = max(most, len(tagged_processes(tag)))
        time.sleep(0.05)
    thread.join()
    return outcome[0], most


def test_a_failing_worker_is_named_and_no_worker_survives():
    tag = f"crash{uuid.uuid4().hex}"
    error, most = launch_and_watch(tag, timeout=120, fault={1: "crash"})
    assert isinstance(error, LaunchError), error
    assert error.rank == 1
    assert "RuntimeError: worker 1 failed on purpose (injected fault)" in error.remote_traceback
    assert "rank 1 of dtutor.tf_worker:run_worker failed" in str(error)
    assert most >= 1  # the watch saw the workers' processes by their tag
    assert tagged_processes(tag) == []
    assert psutil.Process().children(recursive=True) == []


def test_a_timeout_ends_every_worker():
    tag = f"hang{uuid.uuid4().hex}"
    error, most = launch_and_watch(tag, timeout=8, fault={1: "hang"})
    assert isinstance(error, LaunchError), error
    assert error.rank is None and "did not finish within 8 s" in str(error)
    assert most == 2  # both workers were alive until the timeout
    assert tagged_processes(tag) == []
    assert psutil.Process().children(recursive=True) == []


def test_the_printed_commands_are_a_complete_recipe():
    text = tf_worker.show_commands(2, ports=[1111, 2222])
    lines = [line for line in text.splitlines() if line.startswith("TF_CONFIG=")]
    assert len(lines) == 2
    for index, line in enumerate(lines):
        config = json.loads(line.split("'")[1])
        assert config == {"cluster": {"worker": ["127.0.0.1:1111", "127.0.0.1:2222"]},
                          "task": {"type": "worker", "index": index}}
        assert line.endswith("TF_USE_LEGACY_KERAS=1 python -m dtutor.launch dtutor.tf_worker:run_worker "
                             "mode=fit samples=256 global_batch=64 steps=4")
