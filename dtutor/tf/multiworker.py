"""TensorFlow's ``MultiWorkerMirroredStrategy`` as a Keras strategy: one process per worker, ``TF_CONFIG``.

Every worker runs the same program; ``TF_CONFIG`` (JSON) lists all workers' ``host:port`` and says which one
this process is. The strategy must be created first in the process, before any other TensorFlow operation.
Each worker has one (CPU) replica here; its input pipeline takes its slice of every global batch, and the
gradients are all-reduced over gRPC, so every worker ends with the same weights as one device would.

Launch recipes::

    dtutor.launch.train(2, strategy="multiworker", global_batch=64)          # from Python or a notebook
    print(dtutor.launch.show_tf_worker_commands("dtutor.tf.driver:train", 2, strategy="multiworker"))

By hand, one terminal per worker (on several hosts: each host's address instead of 127.0.0.1)::

    TF_CONFIG='{"cluster": {"worker": ["127.0.0.1:12345", "127.0.0.1:12346"]},
                "task": {"type": "worker", "index": 0}}' TF_USE_LEGACY_KERAS=1 \\
        python -m dtutor.launch dtutor.tf.driver:train strategy=multiworker global_batch=64
    # and the same with "index": 1 in the second terminal
"""

from __future__ import annotations

import json
import os

from dtutor.tf import setup
from dtutor.tf.strategy import DistributeStrategy


def cluster_place() -> tuple[int, int]:
    """This worker's task index and the number of workers, from ``TF_CONFIG`` (``ValueError`` without it)."""
    text = os.environ.get("TF_CONFIG")
    if not text:
        raise ValueError("TF_CONFIG is not set: see the launch recipe in `pydoc dtutor.tf.multiworker`")
    tf_config = json.loads(text)
    return int(tf_config["task"]["index"]), len(tf_config["cluster"]["worker"])


class MultiWorker(DistributeStrategy):
    """``MultiWorkerMirroredStrategy``: one replica per worker process, all-reduce over gRPC."""

    name = "multiworker"

    def join(self) -> None:
        """Read ``TF_CONFIG``; create the strategy before any other TensorFlow operation."""
        self.rank, self.world_size = cluster_place()
        tf = setup.prepare_devices(1)
        self.tf_strategy = tf.distribute.MultiWorkerMirroredStrategy()
        self.replicas_in_sync = self.tf_strategy.num_replicas_in_sync
