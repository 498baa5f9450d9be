"""The one Keras training driver: every TensorFlow strategy, the same model, data, batch rule and result.

``fit(config, strategy)`` does, the same way for every strategy: join (the strategy starts TensorFlow),
check the batch arithmetic (``config.check_world``, as for PyTorch), seed, build AND compile the CNN inside
the strategy's scope (SGD with ``config.lr`` and ``config.momentum``, cross-entropy on logits, accuracy),
take the first ``config.used_samples()`` training samples in order (the strategy splits them), run
``model.fit`` for ``config.epochs`` epochs of ``config.steps_per_epoch()`` steps, record each epoch's global
loss, accuracy and time (the slowest worker's where the strategy can ask), evaluate on the test split, and
return one ``RunResult`` with the parameters named ``"{layer index}.{weight}"`` (e.g. ``"0.kernel"``).

Launch recipes (``train`` is the entry point; its arguments are ``TrainConfig`` fields, plus ``replicas``
for ``mirrored``)::

    # from Python or a notebook: validated here, then started with the strategy's own launcher
    dtutor.launch.train(2, strategy="mirrored", global_batch=64)        # this process, 2 replicas
    dtutor.launch.train(2, strategy="multiworker", global_batch=64)     # 2 worker processes, TF_CONFIG
    dtutor.launch.train(2, strategy="horovod_keras", global_batch=64)   # horovodrun -np 2
    # the single-device reference, in a fresh process
    python -m dtutor.launch dtutor.tf.driver:train strategy=mirrored replicas=1 global_batch=64
    # Horovod for Keras on this machine
    TF_USE_LEGACY_KERAS=1 horovodrun -np 2 --gloo -H localhost:2 \\
        python -m dtutor.launch dtutor.tf.driver:train strategy=horovod_keras global_batch=64
    # MultiWorkerMirroredStrategy by hand: see dtutor.tf.multiworker (one TF_CONFIG per worker)
"""

from __future__ import annotations

import time
from typing import Any

import numpy as np

from dtutor import data, models, strategies
from dtutor.config import ConfigError, TrainConfig, check_world
from dtutor.progress import Progress, progress
from dtutor.result import EpochStats, RunResult, process_peak_memory
from dtutor.tf.strategy import KerasStrategy

TEST_BATCH = 256


def build_model(config: TrainConfig, strategy: KerasStrategy) -> Any:
    """The CNN, seeded with ``strategy.model_seed()``, created AND compiled inside ``strategy.scope()``.

    The loss keeps Keras' default reduction: under a ``tf.distribute`` strategy Keras averages over each
    replica's batch and divides by the replica count, which is the mean over the global batch.
    """
    from dtutor.tf.setup import keras2

    keras = keras2()
    keras.utils.set_random_seed(strategy.model_seed())
    with strategy.scope():
        model = models.keras_mnist_cnn(keras)
        optimizer = keras.optimizers.SGD(learning_rate=config.lr, momentum=config.momentum)
        model.compile(optimizer=strategy.wrap_optimizer(optimizer), metrics=["accuracy"],
                      loss=keras.losses.SparseCategoricalCrossentropy(from_logits=True))
    # each replica's logged metrics are already global; Keras' default sums them over workers (MWMS: x N)
    model.distribute_reduction_method = "first"
    strategy.after_compile(model)
    return model


def parameters_of(model: Any) -> dict[str, np.ndarray]:
    """The model's weights as ``{"layer index.weight name": array}``: the same names in every model."""
    found = {}
    for index, layer in enumerate(model.layers):
        for weight in layer.weights:
            short = weight.name.rsplit("/", 1)[-1].split(":")[0]
            found[f"{index}.{short}"] = np.array(weight.numpy())
    return found


def initial_parameters(config: TrainConfig) -> dict[str, np.ndarray]:
    """The parameters every run of ``config`` starts from (to show how far training moved them)."""
    return parameters_of(build_model(config, KerasStrategy(config)))


def epoch_recorder(bar: Progress | None = None, name: str = "") -> Any:
    """A Keras callback keeping each epoch's time and logs, and each step's loss (from Keras' running mean).

    It also moves ``bar`` (``dtutor.progress``) one step per batch, labelled ``"{name}, epoch {epoch}"``.
    """
    from dtutor.tf.setup import keras2

    class EpochRecorder(keras2().callbacks.Callback):
        def __init__(self) -> None:
            super().__init__()
            self.epochs: list[tuple[float, dict[str, float]]] = []
            self.step_losses: list[float] = []

        def on_epoch_begin(self, epoch: int, logs: dict | None = None) -> None:
            self._start, self._mean = time.perf_counter(), 0.0
            if bar is not None:
                bar.update(0, label=f"{name}, epoch {epoch}")

        def on_train_batch_end(self, batch: int, logs: dict | None = None) -> None:
            mean = float(logs["loss"])  # the mean over steps 0..batch of this epoch (equal batches)
            self.step_losses.append((batch + 1) * mean - batch * self._mean)
            self._mean = mean
            if bar is not None:
                bar.update(1)

        def on_epoch_end(self, epoch: int, logs: dict | None = None) -> None:
            self.epochs.append((time.perf_counter() - self._start, dict(logs or {})))
            if bar is not None and logs:
                bar.update(0, loss=round(float(logs["loss"]), 4), accuracy=round(float(logs["accuracy"]), 3))

    return EpochRecorder()


def evaluate(model: Any, images: np.ndarray, labels: np.ndarray) -> tuple[float, float]:
    """Mean cross-entropy and accuracy of ``model`` on ``images`` (the same on every worker: all of them)."""
    logits = np.concatenate([model(images[i : i + TEST_BATCH, ..., None], training=False).numpy()
                             for i in range(0, len(images), TEST_BATCH)]).astype(np.float64)
    shifted = logits - logits.max(axis=1, keepdims=True)
    log_probs = shifted - np.log(np.exp(shifted).sum(axis=1, keepdims=True))
    loss = -log_probs[np.arange(len(labels)), labels].mean()
    return float(loss), float((logits.argmax(axis=1) == labels).mean())


def fit(config: TrainConfig, strategy: KerasStrategy | None = None) -> RunResult:
    """Train under ``config`` (or ``strategy``, an instance) on this worker; return its ``RunResult``."""
    strategy = strategy or strategies.load(config.strategy)(config)
    strategy.join()
    try:
        return _run(config, strategy)
    finally:
        strategy.teardown()


def _run(config: TrainConfig, strategy: KerasStrategy) -> RunResult:
    micro_batch = check_world(config, strategy.replicas_in_sync)
    train = data.load_mnist("train", limit=config.used_samples(), verbose=strategy.is_logger)
    model = build_model(config, strategy)
    epochs = min(config.epochs, config.stop_after_epochs or config.epochs)
    started = time.perf_counter()
    with progress(epochs * config.steps_per_epoch(), config.strategy, show=strategy.is_logger) as bar:
        recorder = epoch_recorder(bar, config.strategy)
        model.fit(strategy.dataset(train.images, train.labels), epochs=epochs, verbose=0,
                  steps_per_epoch=config.steps_per_epoch(), callbacks=[*strategy.callbacks(), recorder])
    result = RunResult(strategy.rank, strategy.world_size, config.as_dict(),
                       details={"micro_batch": micro_batch, **strategy.details()})
    steps = config.steps_per_epoch()
    for epoch, (seconds, logs) in enumerate(recorder.epochs):
        result.epochs.append(EpochStats(epoch, steps, steps * config.global_batch, float(logs["loss"]),
                                        float(logs["accuracy"]), strategy.slowest(seconds)))
        if strategy.is_logger:
            print(result.epochs[-1].summary())
    result.step_losses = strategy.average(np.array(recorder.step_losses)).tolist()
    result.seconds = strategy.slowest(time.perf_counter() - started)
    if config.test_samples:
        test = data.load_mnist("test", verbose=False)
        count = min(config.test_samples, len(test))
        result.test_loss, result.test_accuracy = evaluate(model, test.images[:count], test.labels[:count])
    result.peak_memory_bytes, result.peak_memory_kind = process_peak_memory()
    if config.return_parameters:
        result.parameters = parameters_of(model)
    return result


def train(replicas: int = 1, **fields: Any) -> RunResult:
    """Launcher entry point: ``TrainConfig`` fields as keyword arguments (recipes in the module docstring).

    ``replicas`` is the number of devices of this process for ``mirrored`` (1: the single-device reference);
    the other strategies get their world size from their launcher (one replica per process).
    """
    config = TrainConfig.from_kwargs(**fields)
    if strategies.STRATEGIES[config.strategy].framework != "tensorflow":
        raise ConfigError(f"strategy: {config.strategy!r} is a PyTorch strategy; use dtutor.pytorch.driver")
    check_world(config, replicas)
    return fit(config, strategies.load(config.strategy)(config, replicas))
