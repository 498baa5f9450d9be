"""Notebook 04's lessons beyond ``fit``: a custom loop, the model-parallel primer's scope mistake, a speed measurement,
a worker that fails on purpose.

The first three run in the process that called ``setup_tensorflow`` (see ``dtutor.tf.setup``) and reuse the driver's
model, data and parameter names, so its results compare with ``dtutor.tf.driver.train``'s::

    tf = setup_tensorflow(cpu_replicas=2)
    loop = train_with_custom_loop(TrainConfig(strategy="mirrored"), replicas=2)
    max_difference(loop, driver.train(replicas=1, strategy="mirrored"))   # <= 1e-5

``fail_on_worker`` shows what a launch does when a worker dies: the failed worker is named with its traceback
and every other worker is ended (they wait, as they would for a dead worker in an all-reduce)::

    dtutor.launch.run_tf_workers("dtutor.tf.mirrored_lessons:fail_on_worker", 2, failing_rank=1)
"""

from __future__ import annotations

import re
import time
from typing import Any

import numpy as np

from dtutor import data, models
from dtutor.config import TrainConfig, check_world
from dtutor.result import RunResult
from dtutor.tf.driver import build_model, parameters_of
from dtutor.tf.mirrored import Mirrored
from dtutor.tf.multiworker import cluster_place
from dtutor.tf.strategy import distributed_dataset


def custom_training_loop(strategy: Any, model: Any, dataset: Any, global_batch: int, steps: int) -> list[float]:
    """Train ``steps`` steps with ``strategy.run`` and ``strategy.reduce``; return the loss of each step.

    Each replica sums its per-example losses and divides by the GLOBAL batch (``tf.nn.compute_average_loss``);
    the optimizer sums the replicas' gradients (an all-reduce), which gives the gradient of the global mean.
    """
    import tensorflow as tf

    loss_fn = tf.keras.losses.SparseCategoricalCrossentropy(from_logits=True,
                                                            reduction=tf.keras.losses.Reduction.NONE)

    def replica_step(x, y):
        with tf.GradientTape() as tape:
            per_example = loss_fn(y, model(x, training=True))
            loss = tf.nn.compute_average_loss(per_example, global_batch_size=global_batch)
        grads = tape.gradient(loss, model.trainable_variables)
        model.optimizer.apply_gradients(zip(grads, model.trainable_variables, strict=True))
        return loss

    @tf.function
    def train_step(batch):
        per_replica_loss = strategy.run(replica_step, args=batch)
        return strategy.reduce(tf.distribute.ReduceOp.SUM, per_replica_loss, axis=None)

    batches = iter(dataset)
    return [float(train_step(next(batches))) for _ in range(steps)]


def train_with_custom_loop(config: TrainConfig, replicas: int = 2) -> RunResult:
    """``config``'s training on ``replicas`` devices with ``custom_training_loop`` instead of ``fit``.

    The same model (built and compiled in the scope by the driver), data, steps and parameter names as
    ``driver.train(replicas=..., **config.as_dict())``; returns a ``RunResult`` with the step losses.
    """
    micro_batch = check_world(config, replicas)
    strategy = Mirrored(config, replicas)
    strategy.join()
    train = data.load_mnist("train", limit=config.used_samples(), verbose=False)
    model = build_model(config, strategy)
    dataset = distributed_dataset(strategy.tf_strategy, train.images, train.labels, config.global_batch)
    steps = config.epochs * config.steps_per_epoch()
    losses = custom_training_loop(strategy.tf_strategy, model, dataset, config.global_batch, steps)
    return RunResult(0, 1, config.as_dict(), step_losses=losses, parameters=parameters_of(model),
                     details={"micro_batch": micro_batch, "loop": "custom", **strategy.details()})


def scope_mistake(replicas: int = 2) -> dict[str, Any]:
    """The model-parallel primer's mistake and its fix: the model built OUTSIDE ``strategy.scope()``, compiled inside.

    tf-keras refuses at ``compile`` (``ValueError: Variable ... was not created in the distribution strategy
    scope``); Keras 3 raises ``RuntimeError: Need to be inside "with strategy.scope()"``. The fix creates and
    compiles inside the scope (``driver.build_model``). Returns the error's type, its key sentence, and
    whether the fix trains.
    """
    import tensorflow as tf

    config = TrainConfig(strategy="mirrored", samples=2 * replicas, global_batch=2 * replicas, test_samples=0)
    strategy = Mirrored(config, replicas)
    strategy.join()
    model = models.keras_mnist_cnn()  # the mistake: variables created outside the scope
    error: Exception | None = None
    try:
        with strategy.scope():
            model.compile(optimizer="sgd", loss=tf.keras.losses.SparseCategoricalCrossentropy(from_logits=True))
    except (ValueError, RuntimeError) as caught:
        error = caught
    # the message quotes the variable's values and the strategy's address: keep its key sentence
    message = re.sub(r"\(<.*?>\)", "(...)", str(error), flags=re.S).split(". Try", 1)[0] if error else ""
    fixed = build_model(config, strategy)
    train = data.load_mnist("train", limit=config.samples, verbose=False)
    history = fixed.fit(strategy.dataset(train.images, train.labels), epochs=1, steps_per_epoch=1, verbose=0)
    return {"error_type": type(error).__name__ if error else None, "message": message,
            "fix_trains": bool(np.isfinite(history.history["loss"][0])), "fix_weights": len(fixed.get_weights())}


def steps_per_second(replicas: int, global_batch: int = 128, steps: int = 20, samples: int = 512) -> float:
    """Measured training steps per second of ``model.fit`` on ``replicas`` replicas (after a warm-up fit)."""
    config = TrainConfig(strategy="mirrored", global_batch=global_batch, samples=samples, test_samples=0)
    check_world(config, replicas)
    strategy = Mirrored(config, replicas)
    strategy.join()
    train = data.load_mnist("train", limit=config.used_samples(), verbose=False)
    model = build_model(config, strategy)
    dataset = strategy.dataset(train.images, train.labels)
    model.fit(dataset, epochs=1, steps_per_epoch=3, verbose=0)  # traces and compiles the step
    start = time.perf_counter()
    model.fit(dataset, epochs=1, steps_per_epoch=steps, verbose=0)
    return steps / (time.perf_counter() - start)


def speed_title(rates: dict[int, float], devices: str) -> str:
    """A title stating what was measured: ``rates`` (steps/s by replica count) and the ratio of the last to 1."""
    counts = sorted(rates)
    most = counts[-1]
    ratio = rates[most] / rates[counts[0]]
    return (f"{devices}: {most} replicas ran {ratio:.2f}x the steps/s of {counts[0]} "
            f"({rates[most]:.1f} against {rates[counts[0]]:.1f})")


def fail_on_worker(failing_rank: int = 1, wait_seconds: float = 3600.0) -> int:
    """Worker ``failing_rank`` (its ``TF_CONFIG`` task index) raises; the others wait ``wait_seconds``."""
    rank, _ = cluster_place()
    if rank == failing_rank:
        raise RuntimeError(f"worker {rank} failed on purpose")
    time.sleep(wait_seconds)
    return rank
