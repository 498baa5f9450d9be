"""Horovod for Keras (notebook 03): the seed's flow, on Keras 2 (tf-keras).

The seed trains the MNIST CNN with ``horovod.tensorflow.keras``: ``hvd.init()``, the learning rate scaled
by ``hvd.size()``, ``hvd.DistributedOptimizer``, ``BroadcastGlobalVariablesCallback(0)`` so every worker
ends up with rank 0's weights, ``MetricAverageCallback`` so logged metrics are averaged over workers, and
checkpoints from rank 0 only.

A pitfall the proof exposed: the callback broadcasts at the END of the first batch (so that the
optimizer's variables, created by the first step, exist). Workers that start from different weights
therefore take their first step from different models, and the average of their gradients is not the
big-batch gradient. ``train`` broadcasts the model's variables once more BEFORE ``fit`` (with
``horovod.tensorflow.broadcast_variables``); the callback still synchronises the optimizer's state.

Horovod 0.28.1 predates Keras 3, so workers run Keras 2 (``tf_keras``, ``TF_USE_LEGACY_KERAS=1``), and
its modules are pointed at ``tf_keras.backend`` (see ``_horovod_keras``).

Data: worker r of N trains on samples r, r+N, r+2N, ... (``dtutor.data.shard``) in order, so one step of
all workers together sees one contiguous global batch: the same as one process with N times the batch.

Launch recipes for ``train``::

    dtutor.horovod_keras.run(nprocs=2, global_batch=64)                       # from Python or a notebook
    TF_USE_LEGACY_KERAS=1 horovodrun -np 2 --gloo -H localhost:2 \\
        python -m dtutor.launch dtutor.horovod_keras:train global_batch=64     # this machine
    TF_USE_LEGACY_KERAS=1 horovodrun -np 8 -H host1:4,host2:4 \\
        python -m dtutor.launch dtutor.horovod_keras:train global_batch=256    # two machines, 4 GPUs each
"""

from __future__ import annotations

import os
import sys
from typing import Any

from dtutor import data, launch, models
from dtutor.ddp import check_config


def _keras2():
    """Import tf_keras with TensorFlow's Keras 2 switch set (it must be set before TensorFlow is imported)."""
    if os.environ.get("TF_USE_LEGACY_KERAS") != "1":
        if "tensorflow" in sys.modules:
            raise RuntimeError("TensorFlow was imported with Keras 3; start the process with TF_USE_LEGACY_KERAS=1")
        os.environ["TF_USE_LEGACY_KERAS"] = "1"
    import tf_keras

    return tf_keras


def _horovod_keras():
    """``horovod.tensorflow.keras``, with its Keras backend pointed at Keras 2.

    Horovod 0.28.1 binds ``keras.backend`` (Keras 3 in TensorFlow 2.16+) as ``K`` in its Keras modules;
    ``MetricAverageCallback`` and the learning-rate callbacks call ``K.get_value``/``K.set_value`` on Keras 2
    variables, so ``K`` must be ``tf_keras.backend``.
    """
    tf_keras = _keras2()
    import horovod._keras.callbacks as horovod_callbacks
    import horovod.tensorflow.keras as hvd
    import horovod.tensorflow.keras.callbacks as keras_callbacks

    for module in (hvd, horovod_callbacks, keras_callbacks):
        if hasattr(module, "K"):
            module.K = tf_keras.backend
    return hvd, tf_keras


def _compile(model, keras, optimizer) -> None:
    model.compile(optimizer=optimizer, loss=keras.losses.SparseCategoricalCrossentropy(from_logits=True),
                  metrics=["accuracy"])


def _arrays(samples: int, world_size: int = 1, rank: int = 0, verbose: bool = False):
    mnist = data.shard(data.load_mnist("train", limit=samples, verbose=verbose), world_size, rank)
    return mnist.images[..., None], mnist.labels


def train(global_batch: int = 64, epochs: int = 1, samples: int = 256, lr: float = 0.025, seed: int = 0,
          checkpoint: str | None = None, broadcast_before_fit: bool = True) -> dict[str, Any]:
    """Horovod Keras entry point (recipes in the module docstring); returns this rank's weights and history."""
    hvd, keras = _horovod_keras()
    import horovod.tensorflow as hvd_tf
    import tensorflow as tf

    hvd.init()
    rank, size = hvd.rank(), hvd.size()
    micro_batch = check_config(size, global_batch, 1, samples)
    gpus = tf.config.list_physical_devices("GPU")
    if gpus:  # one GPU per process
        tf.config.set_visible_devices(gpus[hvd.local_rank()], "GPU")
    keras.utils.set_random_seed(seed + rank)  # different starting weights: the broadcast makes them equal
    model = models.keras_mnist_cnn(keras)
    optimizer = hvd.DistributedOptimizer(keras.optimizers.SGD(learning_rate=lr * size, momentum=0.9))
    _compile(model, keras, optimizer)
    if broadcast_before_fit:  # the callback alone broadcasts after the first step (see the module docstring)
        hvd_tf.broadcast_variables(model.variables, root_rank=0)
    callbacks = [hvd.callbacks.BroadcastGlobalVariablesCallback(0), hvd.callbacks.MetricAverageCallback()]
    if checkpoint and rank == 0:
        callbacks.append(keras.callbacks.ModelCheckpoint(checkpoint, save_weights_only=True))
    images, labels = _arrays(samples, size, rank, verbose=rank == 0)
    history = model.fit(images, labels, batch_size=micro_batch, epochs=epochs, shuffle=False, callbacks=callbacks,
                        verbose=2 if rank == 0 else 0)
    return {"rank": rank, "world_size": size, "micro_batch": micro_batch, "history": history.history,
            "weights": model.get_weights()}


def single_process_reference(global_batch: int = 64, epochs: int = 1, samples: int = 256, lr: float = 0.025,
                             world_size: int = 2, seed: int = 0) -> list:
    """Plain Keras 2 training with the combined batch and the learning rate the workers used; final weights."""
    keras = _keras2()
    check_config(1, global_batch, 1, samples)
    keras.utils.set_random_seed(seed)
    model = models.keras_mnist_cnn(keras)
    _compile(model, keras, keras.optimizers.SGD(learning_rate=lr * world_size, momentum=0.9))
    images, labels = _arrays(samples)
    model.fit(images, labels, batch_size=global_batch, epochs=epochs, shuffle=False, verbose=0)
    return model.get_weights()


def run(nprocs: int = 2, *, hosts: str | None = None, timeout: float = 300.0, quiet: bool = False,
        **options: Any) -> list[dict]:
    """Launch ``train`` with ``horovodrun -np nprocs --gloo``; the configuration is checked first."""
    options.setdefault("global_batch", 64)
    check_config(nprocs, options["global_batch"], 1, options.get("samples", 256))
    return launch.run_horovod("dtutor.horovod_keras:train", nprocs, framework="tensorflow", hosts=hosts,
                              timeout=timeout, quiet=quiet, **options)


def reference(timeout: float = 300.0, **options: Any) -> list:
    """``single_process_reference`` in a fresh Keras 2 process (so this process's TensorFlow is untouched)."""
    return launch.run_single("dtutor.horovod_keras:single_process_reference", timeout=timeout,
                             env={"TF_USE_LEGACY_KERAS": "1", "TF_CPP_MIN_LOG_LEVEL": "2"}, **options)
