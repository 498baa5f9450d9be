"""TensorFlow's ``MirroredStrategy`` as a Keras strategy: one process, one replica per device.

What it changes: ``join`` picks ``replicas`` devices (GPUs if there are that many, else logical CPUs, which
``dtutor.tf.setup`` creates if TensorFlow has not started yet) and makes the strategy; the model and optimizer
are created inside its scope; the input goes through ``distribute_datasets_from_function`` so that step s
trains on global batch s, each replica on its slice. ``replicas=1`` is a ``OneDeviceStrategy``: plain
single-device training, the reference every TensorFlow strategy is proven against.

Launch recipes (in-process: no launcher; a fresh process when the CPU must be split into replicas)::

    dtutor.launch.train(2, strategy="mirrored", global_batch=64)              # from Python or a notebook
    dtutor.tf.driver.train(replicas=2, strategy="mirrored", global_batch=64)  # the same, directly
    python -m dtutor.launch dtutor.tf.driver:train strategy=mirrored replicas=2 global_batch=64
"""

from __future__ import annotations

from dtutor.tf import setup
from dtutor.tf.strategy import DistributeStrategy


class Mirrored(DistributeStrategy):
    """``MirroredStrategy`` over ``replicas`` devices of this process (``OneDeviceStrategy`` for 1)."""

    name = "mirrored"
    replicas_in_process = True

    def join(self) -> None:
        """Keras 2 and the devices (see the module docstring); the strategy over ``replicas`` of them."""
        setup.prepare_devices(self.replicas)
        self.tf_strategy = setup.make_strategy(self.replicas)
        self.replicas_in_sync = self.tf_strategy.num_replicas_in_sync
