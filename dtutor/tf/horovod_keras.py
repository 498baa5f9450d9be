"""Horovod for Keras (notebook 03) as a Keras strategy, on Keras 2 (tf-keras).

What it changes, the Alibaba Cloud article's flow: ``hvd.init()`` (one GPU per process, by local rank),
``hvd.DistributedOptimizer`` (gradients averaged over workers at every step),
``BroadcastGlobalVariablesCallback(0)`` so every worker holds rank 0's weights; added here, ``MetricAverageCallback`` so
the logged metrics are averaged over workers, and the data sharded: worker r of N trains on samples
r, r+N, r+2N, ... (``dtutor.data.shard``) with a micro-batch of global_batch / N, so one step of all
workers together sees one contiguous global batch, as one process would.

Why an explicit broadcast before ``fit``: the callback broadcasts at the END of the first batch (so that the
optimizer's variables, created by the first step, exist). Workers that start from different weights
therefore take their first step from different models, and the average of their gradients is not the
big-batch gradient. ``after_compile`` broadcasts the model's variables once more BEFORE ``fit``
(``horovod.tensorflow.broadcast_variables``); the callback still synchronises the optimizer's state.
``dtutor.tf.horovod_keras_lessons.late_broadcast`` shows the difference.

Learning rate: ``config.lr`` is the learning rate of the global batch, as for every strategy; it is not
multiplied by ``hvd.size()``. The Alibaba Cloud article's ``lr * hvd.size()`` is the same rule seen from the
other side: it starts from a rate tuned for one worker's batch and keeps the per-worker batch fixed, so N
workers train on an N times larger global batch, which the linear scaling rule gives an N times larger rate.

Horovod 0.28.1 predates Keras 3, so workers run Keras 2 (``tf_keras``, ``TF_USE_LEGACY_KERAS=1``), and its
modules are pointed at ``tf_keras.backend`` (see ``horovod_keras``).

Launch recipes::

    dtutor.launch.train(2, strategy="horovod_keras", global_batch=64)        # from Python or a notebook
    TF_USE_LEGACY_KERAS=1 horovodrun -np 2 --gloo -H localhost:2 \\
        python -m dtutor.launch dtutor.tf.driver:train strategy=horovod_keras global_batch=64
    TF_USE_LEGACY_KERAS=1 horovodrun -np 8 -H host1:4,host2:4 \\
        python -m dtutor.launch dtutor.tf.driver:train strategy=horovod_keras global_batch=256
"""

from __future__ import annotations

from types import ModuleType
from typing import Any

import numpy as np

from dtutor import data
from dtutor.tf import setup
from dtutor.tf.strategy import KerasStrategy


def horovod_keras() -> ModuleType:
    """``horovod.tensorflow.keras``, with its Keras backend pointed at Keras 2.

    Horovod 0.28.1 binds ``keras.backend`` (Keras 3 in TensorFlow 2.16+) as ``K`` in its Keras modules;
    ``MetricAverageCallback`` and the learning-rate callbacks call ``K.get_value``/``K.set_value`` on Keras 2
    variables, so ``K`` must be ``tf_keras.backend``.
    """
    tf_keras = setup.keras2()
    import horovod._keras.callbacks as horovod_callbacks
    import horovod.tensorflow.keras as hvd
    import horovod.tensorflow.keras.callbacks as keras_callbacks

    for module in (hvd, horovod_callbacks, keras_callbacks):
        if hasattr(module, "K"):
            module.K = tf_keras.backend
    return hvd


class HorovodKeras(KerasStrategy):
    """Horovod's ``DistributedOptimizer`` and callbacks, one process per worker (see the module docstring)."""

    name = "horovod_keras"
    broadcast_before_fit = True  # False only in the late-broadcast demonstration

    def join(self) -> None:
        """``hvd.init()``; pin this worker's GPU by its local rank."""
        self.hvd = horovod_keras()
        setup.quiet_logs()
        import tensorflow as tf

        self.hvd.init()
        self.rank, self.world_size = self.hvd.rank(), self.hvd.size()
        self.replicas_in_sync = self.world_size
        gpus = tf.config.list_physical_devices("GPU")
        if gpus:
            tf.config.set_visible_devices(gpus[self.hvd.local_rank() % len(gpus)], "GPU")

    def wrap_optimizer(self, optimizer: Any) -> Any:
        """``hvd.DistributedOptimizer``: each step applies the gradients averaged over all workers."""
        return self.hvd.DistributedOptimizer(optimizer)

    def after_compile(self, model: Any) -> None:
        """Broadcast rank 0's variables before the first step (the callback alone comes too late)."""
        if self.broadcast_before_fit:
            import horovod.tensorflow as hvd_tf

            hvd_tf.broadcast_variables(model.variables, root_rank=0)

    def dataset(self, images: np.ndarray, labels: np.ndarray) -> Any:
        """This worker's shard r::N, in micro-batches of global_batch / N, in order, repeated."""
        import tensorflow as tf

        mine = data.shard(data.MnistData(images, labels, "training"), self.world_size, self.rank)
        ds = tf.data.Dataset.from_tensor_slices((mine.images[..., None], mine.labels))
        micro_batch = self.config.micro_batch(self.world_size)
        return ds.batch(micro_batch, drop_remainder=True).repeat().prefetch(2)

    def callbacks(self) -> list[Any]:
        """Rank 0's variables (and optimizer state) everywhere after step 1; metrics averaged over workers."""
        return [self.hvd.callbacks.BroadcastGlobalVariablesCallback(0), self.hvd.callbacks.MetricAverageCallback()]

    def average(self, values: np.ndarray) -> np.ndarray:
        """``hvd.allreduce`` (average) of ``values`` over workers."""
        import tensorflow as tf

        return self.hvd.allreduce(tf.constant(values, tf.float64), op=self.hvd.Average, name="dtutor_average").numpy()

    def slowest(self, seconds: float) -> float:
        """The largest of every worker's ``seconds`` (``hvd.allgather``)."""
        import tensorflow as tf

        return float(self.hvd.allgather(tf.constant([seconds], tf.float64), name="dtutor_slowest").numpy().max())

    def details(self) -> dict[str, Any]:
        """Workers, the micro-batch, and whether rank 0's variables were broadcast before ``fit``."""
        return {"replicas_in_sync": self.replicas_in_sync, "micro_batch": self.config.micro_batch(self.world_size),
                "broadcast_before_fit": self.broadcast_before_fit}

    def teardown(self) -> None:
        """``hvd.shutdown()``."""
        if hasattr(self, "hvd"):
            self.hvd.shutdown()
