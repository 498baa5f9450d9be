"""The Keras driver (dtutor.tf.driver): input refused before anything starts, and no framework at import.

TensorFlow fixes its devices when it initialises, for the whole process, so every test that runs TensorFlow
does it in a fresh child process (conftest's ``run_child``); this pytest process never imports TensorFlow.
"""

from __future__ import annotations

import os
import subprocess
import sys

import pytest
from conftest import run_child

from dtutor import launch
from dtutor.config import ConfigError
from dtutor.tf import driver, setup


def test_importing_the_tensorflow_package_imports_neither_framework():
    code = ("import sys, dtutor.tf.driver, dtutor.tf.mirrored, dtutor.tf.multiworker, dtutor.tf.horovod_keras, "
            "dtutor.tf.mirrored_lessons, dtutor.tf.horovod_keras_lessons, dtutor.launch; "
            "print(sorted(m for m in ('tensorflow', 'torch', 'horovod') if m in sys.modules))")
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert done.stdout.strip() == "[]"


@pytest.mark.parametrize(
    "nprocs, fields, match",
    [
        (2, {"strategy": "multiworker", "accumulation": 2}, "accumulation: 'multiworker' does not accumulate"),
        (2, {"strategy": "horovod_keras", "model": "mlp"}, "model: 'horovod_keras' trains the Keras CNN only"),
        (2, {"strategy": "multiworker", "global_batch": 63}, "global_batch: 63 must be a multiple of"),
        (2, {"strategy": "horovod_keras", "samples": 32}, "samples: 32 cannot fill one global batch of 64"),
        (2, {"strategy": "mirrored", "global_batch": 63}, "global_batch: 63 must be a multiple of"),
        (2, {"strategy": "multiworker", "lr": 0}, "lr: must be a number > 0"),
    ],
)
def test_launch_refuses_bad_input_before_any_process_starts(no_process_may_start, nprocs, fields, match):
    with pytest.raises(ConfigError, match=match):
        launch.train(nprocs, quiet=True, **fields)


@pytest.mark.parametrize(
    "kwargs, match",
    [
        ({"replicas": 2, "strategy": "multiworker"}, "replicas: 'multiworker' gets its world size from its launcher"),
        ({"replicas": 2, "strategy": "horovod_keras"}, "replicas: 'horovod_keras' gets its world size"),
        ({"strategy": "ddp"}, "strategy: 'ddp' is a PyTorch strategy"),
        ({"strategy": "mirrored", "checkpoint": "w.ckpt"}, "checkpoint: the Keras driver keeps no checkpoints"),
        ({"replicas": 4, "strategy": "mirrored", "global_batch": 66}, "global_batch: 66 .* = 4 x 1"),
        ({"strategy": "mirrored", "steps": 4}, "steps: not a TrainConfig field"),
    ],
)
def test_the_driver_refuses_bad_input_before_tensorflow_starts(no_process_may_start, kwargs, match):
    with pytest.raises(ConfigError, match=match):
        driver.train(**kwargs)


@pytest.mark.parametrize("cpu_replicas", [0, 1.5, True])
def test_setup_refuses_bad_replica_counts_before_touching_anything(cpu_replicas, monkeypatch):
    monkeypatch.delenv("TF_USE_LEGACY_KERAS", raising=False)
    with pytest.raises(ValueError, match="cpu_replicas must be an integer >= 1"):
        setup.setup_tensorflow(cpu_replicas=cpu_replicas)
    assert "TF_USE_LEGACY_KERAS" not in os.environ  # refused before changing the process


def test_keras_3_already_loaded_is_refused(tmp_path):
    result = run_child("""
        import pickle, sys
        import tensorflow as tf
        tf.keras.Model  # resolves tf.keras to Keras 3: TF_USE_LEGACY_KERAS is not set
        from dtutor.tf.setup import setup_tensorflow
        try:
            setup_tensorflow(2)
            message = None
        except RuntimeError as error:
            message = str(error)
        pickle.dump({"message": message}, open(sys.argv[1], "wb"))
    """, str(tmp_path / "out.pkl"))
    assert "already Keras 3" in result["message"] and "restart the kernel" in result["message"]


def test_the_learning_setup_learns_in_keras_too():
    """The notebooks' run long enough to learn, on one Keras device: over 90% test accuracy (measured 0.96)."""
    from dtutor import learning_setup

    result = launch.run_single("dtutor.tf.driver:train", timeout=600, replicas=1, strategy="mirrored",
                               **learning_setup())
    assert result.test_accuracy >= 0.9 and result.epochs[-1].loss < result.epochs[0].loss / 5
