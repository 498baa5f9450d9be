"""Horovod-Keras's late broadcast (notebook 03): workers deliberately built from different seeds.

``BroadcastGlobalVariablesCallback(0)`` broadcasts rank 0's variables at the end of the first batch. When
the workers start from different weights, their first step is taken from different models, so the run
leaves the single-device trajectory, even though all workers hold equal weights afterwards. The driver's
Horovod strategy broadcasts once more before ``fit``, which puts every worker on rank 0's start.

Launch recipes (each worker returns its ``RunResult``; compare with the single-device reference,
``dtutor.tf.driver.train(replicas=1, strategy="mirrored", ...)`` of the same fields)::

    dtutor.launch.run_horovod("dtutor.tf.horovod_keras_lessons:late_broadcast", 2, framework="tensorflow",
                              early_broadcast=False, global_batch=64)
    TF_USE_LEGACY_KERAS=1 horovodrun -np 2 --gloo -H localhost:2 \\
        python -m dtutor.launch dtutor.tf.horovod_keras_lessons:late_broadcast early_broadcast=False
"""

from __future__ import annotations

from typing import Any

from dtutor.config import TrainConfig
from dtutor.result import RunResult
from dtutor.tf.driver import fit
from dtutor.tf.horovod_keras import HorovodKeras


class DifferentStarts(HorovodKeras):
    """Horovod-Keras whose worker r builds its model from ``seed + r``, with or without the early broadcast."""

    def __init__(self, config: TrainConfig, early_broadcast: bool):
        super().__init__(config)
        self.broadcast_before_fit = early_broadcast

    def model_seed(self) -> int:
        """A different start on every worker (the thing the broadcasts must repair)."""
        return self.config.seed + self.rank


def late_broadcast(early_broadcast: bool = False, **fields: Any) -> RunResult:
    """Horovod-Keras entry point: train ``fields`` from different starts per worker (see the module docstring).

    ``early_broadcast=False`` relies on the callback alone (too late for step 1); ``True`` adds the driver's
    broadcast before ``fit``, which gives the single-device trajectory again.
    """
    config = TrainConfig.from_kwargs(**{"strategy": "horovod_keras", **fields})
    return fit(config, DifferentStarts(config, early_broadcast))
