"""The Keras strategy interface: what a way of distributing Keras training may change, and the defaults.

The driver (``dtutor.tf.driver``) owns what every strategy shares: the batch arithmetic, seeding, the model
(built and compiled inside ``scope()``), the data, ``model.fit``, metrics, evaluation and the result. A
strategy overrides only what it changes:

=====================  =================================  ==================================================
hook                   default                            e.g.
=====================  =================================  ==================================================
``join``               rank 0 of 1, one replica           MWMS: read ``TF_CONFIG``; Horovod: ``hvd.init()``
``scope``              nothing                            ``tf.distribute``: ``strategy.scope()``
``model_seed``         ``config.seed`` on every worker    a demo: a different start on every worker
``wrap_optimizer``     unchanged                          Horovod: ``hvd.DistributedOptimizer``
``after_compile``      nothing                            Horovod: broadcast rank 0's variables
``dataset``            global batches, in order           r::N shards; ``distribute_datasets_from_function``
``callbacks``          none                               Horovod: broadcast and metric-average callbacks
``average/slowest``    one worker: nothing to combine     Horovod: ``hvd.allreduce``/``hvd.allgather``
``teardown``           nothing                            Horovod: ``hvd.shutdown()``
=====================  =================================  ==================================================
"""

from __future__ import annotations

import contextlib
from typing import Any

import numpy as np

from dtutor.config import ConfigError, TrainConfig


class KerasStrategy:
    """Plain Keras in one process on one device: the defaults every strategy starts from."""

    name = ""
    replicas_in_process = False  # True: ``replicas`` devices in this process (MirroredStrategy)

    def __init__(self, config: TrainConfig, replicas: int = 1):
        if replicas != 1 and not self.replicas_in_process:
            raise ConfigError(f"replicas: {config.strategy!r} gets its world size from its launcher "
                              f"(one replica per process); replicas={replicas} is for 'mirrored' only")
        self.config = config
        self.replicas = replicas
        self.rank, self.world_size, self.replicas_in_sync = 0, 1, 1

    @property
    def is_logger(self) -> bool:
        """The one worker that prints."""
        return self.rank == 0

    def join(self) -> None:
        """Start TensorFlow as this strategy needs it; set ``rank``, ``world_size``, ``replicas_in_sync``."""

    def scope(self) -> contextlib.AbstractContextManager:
        """Where the model and optimizer are created and compiled."""
        return contextlib.nullcontext()

    def model_seed(self) -> int:
        """The random seed the model is built from: the same on every worker, so every replica starts equal."""
        return self.config.seed

    def wrap_optimizer(self, optimizer: Any) -> Any:
        """The optimizer ``compile`` gets."""
        return optimizer

    def after_compile(self, model: Any) -> None:
        """Anything to do between ``compile`` and ``fit``."""

    def dataset(self, images: np.ndarray, labels: np.ndarray) -> Any:
        """What ``fit`` consumes: global batch s at step s, in order, repeated (images get a channel axis)."""
        import tensorflow as tf

        ds = tf.data.Dataset.from_tensor_slices((images[..., None], labels))
        return ds.batch(self.config.global_batch, drop_remainder=True).repeat().prefetch(2)

    def callbacks(self) -> list[Any]:
        """Keras callbacks ``fit`` runs, before the driver's own."""
        return []

    def average(self, values: np.ndarray) -> np.ndarray:
        """``values`` averaged over workers (default: already global)."""
        return values

    def slowest(self, seconds: float) -> float:
        """The largest of every worker's ``seconds`` (default: this worker's)."""
        return seconds

    def details(self) -> dict[str, Any]:
        """Strategy facts for ``RunResult.details``."""
        return {"replicas_in_sync": self.replicas_in_sync}

    def teardown(self) -> None:
        """Leave the job."""


class DistributeStrategy(KerasStrategy):
    """A ``tf.distribute`` strategy (``self.tf_strategy``, set by ``join``) does the scope and the input."""

    tf_strategy: Any = None

    def scope(self) -> contextlib.AbstractContextManager:
        """``tf_strategy.scope()``: variables created inside are mirrored, one copy per replica."""
        return self.tf_strategy.scope()

    def dataset(self, images: np.ndarray, labels: np.ndarray) -> Any:
        """``distributed_dataset``: every replica gets its slice of each global batch."""
        return distributed_dataset(self.tf_strategy, images, labels, self.config.global_batch)

    def details(self) -> dict[str, Any]:
        """Replicas in sync, and the devices of this process's replicas."""
        return {"replicas_in_sync": self.replicas_in_sync,
                "devices": list(self.tf_strategy.extended.worker_devices)}


def distributed_dataset(strategy: Any, images: np.ndarray, labels: np.ndarray, global_batch: int) -> Any:
    """The ``tf.data`` input, distributed by the strategy: step s trains on global batch s, in order.

    Each input pipeline (one per worker) takes its contiguous slice of every global batch and cuts it into
    per-replica batches; the strategy hands them to its replicas. No shuffling, repeated forever.
    """
    import tensorflow as tf

    def dataset_fn(context: tf.distribute.InputContext) -> tf.data.Dataset:
        per_replica = context.get_per_replica_batch_size(global_batch)
        width = global_batch // context.num_input_pipelines
        start = context.input_pipeline_id * width
        ds = tf.data.Dataset.from_tensor_slices((images[..., None], labels)).repeat()
        ds = ds.batch(global_batch, drop_remainder=True)
        ds = ds.map(lambda x, y: (x[start : start + width], y[start : start + width]))
        return ds.unbatch().batch(per_replica, drop_remainder=True).prefetch(2)

    return strategy.distribute_datasets_from_function(dataset_fn)
