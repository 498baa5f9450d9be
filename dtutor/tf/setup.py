"""Before TensorFlow starts: Keras 2 (tf-keras) and the devices; then a ``tf.distribute`` strategy over them.

TensorFlow fixes its device list when it initialises (its first operation), for the life of the process. To
get 2 replicas on a laptop, split the CPU into logical devices first::

    tf = setup_tensorflow(cpu_replicas=2)    # first, before any other TensorFlow code
    strategy = make_strategy(2)              # MirroredStrategy over 2 GPUs if there are 2, else 2 logical CPUs

The course uses Keras 2 (the ``tf_keras`` package, selected by ``TF_USE_LEGACY_KERAS=1`` before ``tf.keras``
is first touched): Horovod's Keras integration predates Keras 3.
"""

from __future__ import annotations

import os
import sys
from types import ModuleType

from dtutor.devices.probes import import_quietly


def keras2() -> ModuleType:
    """The Keras 2 module (``tf_keras``), with ``tf.keras`` pointed at it; ``RuntimeError`` if too late.

    ``TF_USE_LEGACY_KERAS=1`` is read when ``tf.keras`` is first touched; a process where it already resolved
    to Keras 3 has to be restarted.
    """
    os.environ["TF_USE_LEGACY_KERAS"] = "1"
    # the first import writes C++ start-up lines to fd 2 that no log level hides (with oneDNN on: "oneDNN
    # custom operations are on"), so on some CPUs and not others: import_quietly hides them
    tf = import_quietly("tensorflow")
    tf_keras = import_quietly("tf_keras")

    if "tf_keras" not in tf.keras.Model.__module__:
        raise RuntimeError(
            "tf.keras is already Keras 3 in this process (TensorFlow was used before setup_tensorflow). "
            "The course uses Keras 2 (tf-keras): restart the kernel and call setup_tensorflow() first."
        )
    return tf_keras


def quiet_logs() -> None:
    """Hide TensorFlow's info logs: C++ (``TF_CPP_MIN_LOG_LEVEL=2`` unless set) and the Python logger."""
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    if "tensorflow" in sys.modules:
        sys.modules["tensorflow"].get_logger().setLevel("ERROR")  # strategies log every all-reduce at INFO


def setup_tensorflow(cpu_replicas: int = 2, quiet: bool = True) -> ModuleType:
    """Select Keras 2, split the CPU into ``cpu_replicas`` logical devices, return the ``tensorflow`` module.

    Call it first, before any TensorFlow operation: TensorFlow fixes its devices when it initialises.
    Calling it again with the same count is harmless; another count after initialisation raises
    ``RuntimeError`` (restart the kernel), and so does a process where ``tf.keras`` is already Keras 3.
    """
    if not isinstance(cpu_replicas, int) or isinstance(cpu_replicas, bool) or cpu_replicas < 1:
        raise ValueError(f"cpu_replicas must be an integer >= 1, got {cpu_replicas!r}")
    if quiet:
        os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    keras2()
    import tensorflow as tf

    if quiet:
        quiet_logs()
    if not _split_cpu(tf, cpu_replicas):
        have = len(tf.config.list_logical_devices("CPU"))
        if have != cpu_replicas:
            raise RuntimeError(
                f"setup_tensorflow(cpu_replicas={cpu_replicas}) came too late: TensorFlow is already "
                f"initialised with {have} logical CPU device(s), and devices cannot change afterwards. "
                f"Restart the kernel (or start a new process) and call setup_tensorflow() before other "
                f"TensorFlow code."
            )
    return tf


def _split_cpu(tf: ModuleType, count: int) -> bool:
    """Split the CPU into ``count`` logical devices; False if TensorFlow has already started (too late)."""
    cpu = tf.config.list_physical_devices("CPU")[0]
    try:
        tf.config.set_logical_device_configuration(cpu, [tf.config.LogicalDeviceConfiguration()] * count)
    except RuntimeError:  # "Virtual devices cannot be modified after being initialized"
        return False
    return True


def prepare_devices(replicas: int) -> ModuleType:
    """Keras 2, and ``replicas`` logical CPUs unless there are that many GPUs, if TensorFlow has not started.

    Once it has started, the devices stay as they are (``make_strategy`` says when they are too few): a
    notebook that called ``setup_tensorflow(cpu_replicas=2)`` can train on 2 replicas and on 1.
    """
    keras2()
    quiet_logs()
    import tensorflow as tf

    if len(tf.config.list_physical_devices("GPU")) < replicas:
        _split_cpu(tf, replicas)
    return tf


def device_type_for(replicas: int) -> str:
    """"GPU" if this process has at least ``replicas`` GPUs, else "CPU" (logical CPU devices)."""
    import tensorflow as tf

    return "GPU" if len(tf.config.list_logical_devices("GPU")) >= replicas else "CPU"


def make_strategy(replicas: int, device_type: str | None = None):
    """A ``MirroredStrategy`` over ``replicas`` devices: GPUs if there are that many, else logical CPUs.

    ``replicas=1`` gives a ``OneDeviceStrategy``: plain single-device training, the reference. ``device_type``
    ("CPU" or "GPU") overrides the choice. Asking for more devices than the process has raises ``ValueError``
    saying what it has and how to get more.
    """
    import tensorflow as tf

    if not isinstance(replicas, int) or isinstance(replicas, bool) or replicas < 1:
        raise ValueError(f"replicas must be an integer >= 1, got {replicas!r}")
    device_type = device_type or device_type_for(replicas)
    devices = [d.name for d in tf.config.list_logical_devices(device_type)]
    if replicas > len(devices):
        raise ValueError(
            f"asked for {replicas} replicas but this process has only {len(devices)} {device_type} device(s) "
            f"{devices}. On CPU, call setup_tensorflow(cpu_replicas={replicas}) in a fresh process first."
        )
    if replicas == 1:
        return tf.distribute.OneDeviceStrategy(devices[0])
    return tf.distribute.MirroredStrategy(devices[:replicas])
