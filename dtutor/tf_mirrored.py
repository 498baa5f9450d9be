"""TensorFlow ``MirroredStrategy``: the seed's MNIST CNN on N replicas, proven equal to one device.

The recipe the notebook (04) teaches, in the order a training script runs it:

1. ``setup_tensorflow(cpu_replicas=2)`` before anything else touches TensorFlow: it selects Keras 2
   (tf-keras, ``TF_USE_LEGACY_KERAS=1``) and splits the CPU into logical devices, so a laptop gets 2 replicas;
2. ``make_strategy(2)``: a ``MirroredStrategy`` over 2 GPUs if there are 2, else over the logical CPUs;
3. ``train(strategy, ...)``: the model is created and compiled inside ``strategy.scope()``; the global batch
   (per-replica batch x replicas) is cut by ``distributed_dataset`` so that each step sees exactly the
   samples one device would see; ``mode="fit"`` uses ``model.fit``, ``mode="custom"`` a custom training loop
   with ``strategy.run`` and ``strategy.reduce``.

``compare_with_single_device`` is the proof: same initial weights, same samples in the same order, plain SGD,
and the final weights of N replicas equal those of one device within ``TOLERANCE``.

Launch recipe (one machine, in a fresh process, since logical devices are fixed once TensorFlow starts)::

    python -m dtutor.tf_mirrored compare --replicas 2 --mode fit
    python -m dtutor.tf_mirrored compare --replicas 2 --mode custom

Two workers on localhost or on two hosts (``MultiWorkerMirroredStrategy``): see ``dtutor.tf_worker``.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import sys
import time

import numpy as np

TOLERANCE = 1e-5  # max |w_N - w_1| after k fp32 SGD steps; measured 1.5e-8 on CPU (tests/test_tf_mirrored.py)
MODES = ("fit", "custom")


def setup_tensorflow(cpu_replicas: int = 2, quiet: bool = True):
    """Select Keras 2, split the CPU into ``cpu_replicas`` logical devices, return the ``tensorflow`` module.

    Call it first, before any TensorFlow operation: TensorFlow fixes its devices when it initialises.
    Calling it again with the same count is harmless; another count after initialisation raises
    ``RuntimeError`` (restart the kernel), and so does a process where ``tf.keras`` is already Keras 3.
    ``quiet`` hides TensorFlow's info logs: C++ (``TF_CPP_MIN_LOG_LEVEL=2``, unless set) and Python (the
    ``tensorflow`` logger at ERROR; strategies log every all-reduce at INFO).
    """
    if not isinstance(cpu_replicas, int) or cpu_replicas < 1:
        raise ValueError(f"cpu_replicas must be an integer >= 1, got {cpu_replicas!r}")
    os.environ["TF_USE_LEGACY_KERAS"] = "1"  # read when tf.keras is first touched
    if quiet:
        os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    import tensorflow as tf

    if "tf_keras" not in tf.keras.Model.__module__:
        raise RuntimeError(
            "tf.keras is already Keras 3 in this process (TensorFlow was used before setup_tensorflow). "
            "The course uses Keras 2 (tf-keras): restart the kernel and call setup_tensorflow() first."
        )
    if quiet:
        tf.get_logger().setLevel("ERROR")
    cpu = tf.config.list_physical_devices("CPU")[0]
    try:
        logical = [tf.config.LogicalDeviceConfiguration() for _ in range(cpu_replicas)]
        tf.config.set_logical_device_configuration(cpu, logical)
    except RuntimeError as error:  # "Virtual devices cannot be modified after being initialized"
        have = len(tf.config.list_logical_devices("CPU"))
        if have != cpu_replicas:
            raise RuntimeError(
                f"setup_tensorflow(cpu_replicas={cpu_replicas}) came too late: TensorFlow is already "
                f"initialised with {have} logical CPU device(s), and devices cannot change afterwards. "
                f"Restart the kernel (or start a new process) and call setup_tensorflow() before other "
                f"TensorFlow code."
            ) from error
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

    if not isinstance(replicas, int) or replicas < 1:
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


def check_batch(global_batch: int, replicas: int, samples: int, steps: int = 1) -> int:
    """Validate the batch arithmetic and return the per-replica batch (``global_batch // replicas``)."""
    if replicas < 1 or global_batch < 1 or steps < 1:
        raise ValueError(f"need replicas, global_batch, steps >= 1, got {replicas}, {global_batch}, {steps}")
    if global_batch % replicas:
        raise ValueError(
            f"global batch {global_batch} is not divisible by {replicas} replicas: the global batch is "
            f"per-replica batch x replicas, so pick e.g. {global_batch - global_batch % replicas or replicas}"
        )
    if samples < global_batch:
        raise ValueError(f"{samples} samples cannot fill one global batch of {global_batch}")
    return global_batch // replicas


def distributed_dataset(strategy, images: np.ndarray, labels: np.ndarray, global_batch: int):
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


def initial_weights(seed: int = 0) -> list[np.ndarray]:
    """The CNN's initial weights for ``seed``, built outside any strategy: every run starts from these."""
    import tensorflow as tf

    from dtutor.models import keras_mnist_cnn

    tf.keras.utils.set_random_seed(seed)
    return keras_mnist_cnn().get_weights()


def build_model(strategy, weights: list[np.ndarray], lr: float = 0.1):
    """The seed's CNN, created AND compiled inside ``strategy.scope()``, starting from ``weights``.

    Plain SGD (no momentum) keeps the proof exact. The loss keeps Keras' default reduction: under a strategy
    Keras averages over each replica's batch and divides by the replica count, i.e. the global-batch mean.
    """
    import tensorflow as tf

    from dtutor.models import keras_mnist_cnn

    with strategy.scope():
        model = keras_mnist_cnn()
        model.set_weights(weights)
        model.compile(
            optimizer=tf.keras.optimizers.SGD(learning_rate=lr),
            loss=tf.keras.losses.SparseCategoricalCrossentropy(from_logits=True),
        )
    return model


def custom_loop(strategy, model, dataset, global_batch: int, steps: int) -> list[float]:
    """Train ``steps`` steps with ``strategy.run`` and ``strategy.reduce``; return the loss of each step.

    Each replica sums its per-example losses and divides by the GLOBAL batch (``tf.nn.compute_average_loss``);
    the optimizer sums the replicas' gradients (an all-reduce), which gives the gradient of the global mean.
    """
    import tensorflow as tf

    loss_fn = tf.keras.losses.SparseCategoricalCrossentropy(
        from_logits=True, reduction=tf.keras.losses.Reduction.NONE
    )

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


def train(
    strategy, mode: str = "fit", samples: int = 256, global_batch: int = 64, steps: int = 4,
    lr: float = 0.1, seed: int = 0,
) -> tuple[list[np.ndarray], list[float]]:
    """Train the CNN ``steps`` steps under ``strategy`` (``mode``: "fit" or "custom"); return weights, losses.

    Every run starts from ``initial_weights(seed)`` and sees the first ``samples`` images in order.
    """
    from dtutor.data import load_mnist

    if mode not in MODES:
        raise ValueError(f"mode must be one of {MODES}, got {mode!r}")
    check_batch(global_batch, strategy.num_replicas_in_sync, samples, steps)
    data = load_mnist("train", limit=samples, verbose=False)
    model = build_model(strategy, initial_weights(seed), lr)
    dataset = distributed_dataset(strategy, data.images, data.labels, global_batch)
    if mode == "fit":
        history = model.fit(dataset, epochs=steps, steps_per_epoch=1, verbose=0)  # one loss per step
        losses = [float(v) for v in history.history["loss"]]
    else:
        losses = custom_loop(strategy, model, dataset, global_batch, steps)
    return model.get_weights(), losses


def max_abs_diff(a: list[np.ndarray], b: list[np.ndarray]) -> float:
    """Largest absolute difference between two weight lists of the same shapes."""
    return max(float(np.max(np.abs(x - y))) for x, y in zip(a, b, strict=True))


def compare_with_single_device(replicas: int = 2, mode: str = "fit", **kwargs) -> dict:
    """Train on ``replicas`` replicas and on one device (same global batch, samples, start); compare weights.

    Returns replicas, mode, ``max_abs_diff`` of the final weights, ``moved`` (how far training moved them,
    so a match is not just "nothing happened"), ``tolerance``, ``match`` and both runs' losses. Extra keyword
    arguments go to ``train``.
    """
    import tensorflow as tf

    device_type = device_type_for(replicas)
    if device_type == "GPU":  # TensorFloat-32 matmuls would round to ~1e-3: compare in true fp32
        tf.config.experimental.enable_tensor_float_32_execution(False)
    many, losses = train(make_strategy(replicas, device_type), mode, **kwargs)
    one, one_losses = train(make_strategy(1, device_type), mode, **kwargs)
    diff = max_abs_diff(many, one)
    start = initial_weights(kwargs.get("seed", 0))
    return {
        "replicas": replicas, "mode": mode, "max_abs_diff": diff, "moved": max_abs_diff(one, start),
        "tolerance": TOLERANCE, "match": diff <= TOLERANCE, "losses": losses,
        "single_device_losses": one_losses,
    }


def scope_mistake(replicas: int = 2) -> dict:
    """The seed's mistake, then the fix: build the model OUTSIDE ``strategy.scope()`` and compile inside it.

    tf-keras refuses at ``compile`` (``ValueError: Variable ... was not created in the distribution strategy
    scope``); Keras 3 raises ``RuntimeError: Need to be inside "with strategy.scope()"``. The fix creates
    and compiles inside the scope (``build_model``). Returns the error's type, its key sentence, and whether
    the fix trains.
    """
    import tensorflow as tf

    from dtutor.models import keras_mnist_cnn

    strategy = make_strategy(replicas)
    loss = tf.keras.losses.SparseCategoricalCrossentropy(from_logits=True)
    model = keras_mnist_cnn()  # the mistake: variables created outside the scope
    error: Exception | None = None
    try:
        with strategy.scope():
            model.compile(optimizer="sgd", loss=loss)
    except (ValueError, RuntimeError) as caught:
        error = caught
    # the message quotes the variable's values and the strategy's address: keep its key sentence
    message = re.sub(r"\(<.*?>\)", "(...)", str(error), flags=re.S).split(". Try", 1)[0] if error else ""
    fixed, losses = train(strategy, "fit", samples=2 * replicas, global_batch=2 * replicas, steps=1)
    return {"error_type": type(error).__name__ if error else None, "message": message,
            "fix_trains": bool(np.isfinite(losses[0])), "fix_weights": len(fixed)}


def steps_per_second(replicas: int, global_batch: int = 128, steps: int = 20, samples: int = 512) -> float:
    """Measured training steps per second of ``model.fit`` on ``replicas`` replicas (after a warm-up fit)."""
    from dtutor.data import load_mnist

    strategy = make_strategy(replicas)
    check_batch(global_batch, strategy.num_replicas_in_sync, samples, steps)
    data = load_mnist("train", limit=samples, verbose=False)
    model = build_model(strategy, initial_weights(0))
    dataset = distributed_dataset(strategy, data.images, data.labels, global_batch)
    model.fit(dataset, epochs=1, steps_per_epoch=3, verbose=0)  # traces and compiles the step
    start = time.perf_counter()
    model.fit(dataset, epochs=1, steps_per_epoch=steps, verbose=0)
    return steps / (time.perf_counter() - start)


def main(argv: list[str] | None = None) -> None:
    """Command line: ``python -m dtutor.tf_mirrored {compare,mistake,train,benchmark} ...``; prints JSON.

    Each call is a fresh process, so it can choose its logical devices: ``--replicas N`` gives N CPU replicas.
    ``train --save weights.npz`` keeps the final weights (the single-device reference for the workers).
    """
    parser = argparse.ArgumentParser(prog="python -m dtutor.tf_mirrored", description=__doc__.splitlines()[0])
    parser.add_argument("command", choices=("compare", "mistake", "train", "benchmark"))
    parser.add_argument("--replicas", type=int, default=2)
    parser.add_argument("--mode", choices=MODES, default="fit")
    parser.add_argument("--samples", type=int, default=256)
    parser.add_argument("--global-batch", type=int, default=64)
    parser.add_argument("--steps", type=int, default=4)
    parser.add_argument("--save", help="train: write the final weights to this .npz")
    args = parser.parse_args(argv)
    setup_tensorflow(cpu_replicas=max(args.replicas, 1))
    size = {"samples": args.samples, "global_batch": args.global_batch, "steps": args.steps}
    if args.command == "compare":
        result = compare_with_single_device(args.replicas, args.mode, **size)
    elif args.command == "mistake":
        result = scope_mistake(args.replicas)
    elif args.command == "train":
        weights, losses = train(make_strategy(args.replicas), args.mode, **size)
        if args.save:
            np.savez(args.save, *weights)
        result = {"replicas": args.replicas, "losses": losses}
    else:
        result = {"replicas": args.replicas, "steps_per_s": steps_per_second(args.replicas)}
    json.dump(result, sys.stdout)
    print()


if __name__ == "__main__":
    main()
