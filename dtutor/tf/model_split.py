"""The Alibaba Cloud article's Keras model split (notebook 05, step 1): ``part1`` on device 0, ``part2`` on
device 1, and proof.

The article builds ``part1`` (Conv 32 + MaxPool) inside ``with tf.device("/gpu:0")``, ``part2`` (the rest) inside
``with tf.device("/gpu:1")``, and chains them into a ``Sequential``. Measured here, that places the
VARIABLES only: ``tf.device`` around a layer's construction fixes where its weights live, not where its
call runs, so every forward, backward and update op runs on device 0 and part2's weights travel to it at
every step. Model parallelism needs three things on each part's device (``split_model``, ``train_step``):

- the forward: each part is called under its ``tf.device`` (``on_device``, a wrapper layer);
- the backward: ``tf.gradients`` colocates each gradient op with its forward op (``GradientTape`` in a
  ``tf.function`` does not: its gradient ops go to the default device, measured here);
- the update: one optimizer per part, its slots and update ops on that part's device.

Then only the activation between the parts crosses forward, and its gradient backward.

Devices: two GPUs when TensorFlow sees two, else two logical CPU devices (``setup_tensorflow(cpu_replicas=2)``,
as in notebook 04). TensorFlow's soft placement silently runs ops for a device that does not exist on another
one; ``require_devices`` refuses such a name before anything runs. Each entry point starts TensorFlow, so
it runs in a fresh process (the notebook's kernel never imports TensorFlow)::

    run_fresh("inspect_split", variant="article")   # from Python: checks the input, then one fresh process
    python -m dtutor.launch dtutor.tf.model_split:inspect_split variant=article
    python -m dtutor.launch dtutor.tf.model_split:prove_split steps=3
"""

from __future__ import annotations

import contextlib
from typing import Any

import numpy as np

from dtutor.tf.placement import check_device_names, normal_name, placement, require_devices

ACTIVATION_SHAPE = (13, 13, 32)  # part1's output per sample: 28x28 -> conv 3x3 -> 26x26 -> max-pool 2 -> 13x13


def split_devices(devices: list[str] | None = None) -> list[str]:
    """Start TensorFlow (Keras 2, two logical CPUs unless there are two GPUs); return the two devices to use.

    ``devices`` names them explicitly (checked to exist); by default "/GPU:0" and "/GPU:1" when TensorFlow
    sees two GPUs, else "/CPU:0" and "/CPU:1".
    """
    from dtutor.tf.setup import prepare_devices

    tf = prepare_devices(2)
    if devices is None:
        kind = "GPU" if len(tf.config.list_logical_devices("GPU")) >= 2 else "CPU"
        devices = [f"/{kind}:0", f"/{kind}:1"]
    return require_devices(devices)


def build_parts(devices: list[str], seed: int = 0) -> tuple[Any, Any]:
    """The article's ``part1`` (Conv 32 + MaxPool) and ``part2`` (the rest), each built under its ``tf.device``.

    Together: the layers and weight shapes of ``models.keras_mnist_cnn``, in the same order.
    """
    import tensorflow as tf

    from dtutor.tf.setup import keras2

    keras = keras2()
    layers = keras.layers
    keras.utils.set_random_seed(seed)
    with tf.device(devices[0]):
        part1 = keras.Sequential([keras.Input(shape=(28, 28, 1)), layers.Conv2D(32, 3, activation="relu"),
                                  layers.MaxPooling2D(2)], name="part1")
    with tf.device(devices[1]):
        part2 = keras.Sequential([keras.Input(shape=ACTIVATION_SHAPE), layers.Conv2D(64, 3, activation="relu"),
                                  layers.MaxPooling2D(2), layers.Flatten(), layers.Dense(64, activation="relu"),
                                  layers.Dense(10)], name="part2")
    return part1, part2


def on_device(inner: Any, device: str) -> Any:
    """A Keras layer that calls ``inner`` under ``tf.device(device)``: its forward ops run there."""
    import tensorflow as tf

    from dtutor.tf.setup import keras2

    class OnDevice(keras2().layers.Layer):
        def __init__(self) -> None:
            super().__init__(name=f"{inner.name}_on_device")
            self.inner = inner  # tracked: the wrapper's weights are inner's

        def call(self, inputs: Any, training: Any = None) -> Any:
            with tf.device(device):
                return self.inner(inputs, training=training)

    return OnDevice()


def split_model(devices: list[str], pinned: bool = True, seed: int = 0) -> tuple[Any, list[Any]]:
    """The two parts chained into a ``Sequential``, and the parts: the article's (``pinned=False``) or working.

    ``pinned=False`` is the article's ``Sequential([part1, part2])``: variables on two devices, calls on the
    default one. ``pinned=True`` wraps each part in ``on_device``, so its forward runs on its device.
    """
    from dtutor.tf.setup import keras2

    keras = keras2()
    parts = list(build_parts(devices, seed))
    chained = [on_device(part, device) for part, device in zip(parts, devices, strict=True)] if pinned else parts
    return keras.Sequential([keras.Input(shape=(28, 28, 1)), *chained], name="split"), parts


def _device_scope(device: str | None) -> Any:
    """``tf.device(device)``, or no scope at all for None (TensorFlow's default placement)."""
    import tensorflow as tf

    return tf.device(device) if device else contextlib.nullcontext()


def _sgd_on(device: str | None, variables: list[Any], lr: float, momentum: float) -> Any:
    """An SGD optimizer built for ``variables``, its slots (momentum) created on ``device`` (None: default)."""
    from dtutor.tf.setup import keras2

    with _device_scope(device):
        optimizer = keras2().optimizers.SGD(learning_rate=lr, momentum=momentum)
        optimizer.build(variables)
    return optimizer


def train_step(model: Any, parts: list[Any], devices: list[str], colocated: bool = True, lr: float = 0.05,
               momentum: float = 0.9) -> Any:
    """One SGD step as a ``tf.function(images, labels) -> loss``; ``colocated`` puts backward and update on
    each part's device.

    ``colocated=False`` is Keras' own ``train_step``: a ``GradientTape`` and one optimizer for every variable
    (the gradient and update ops land on the default device). ``colocated=True``: the loss on the last
    device, ``tf.gradients`` (each gradient op colocated with its forward op), and one optimizer per part,
    applied under that part's device. The same arithmetic either way: mean cross-entropy, SGD with momentum.
    """
    import tensorflow as tf

    from dtutor.tf.setup import keras2

    loss_fn = keras2().losses.SparseCategoricalCrossentropy(from_logits=True)
    groups = [part.trainable_variables for part in parts] if colocated else [model.trainable_variables]
    places = devices if colocated else [None]
    optimizers = [_sgd_on(device, group, lr, momentum) for device, group in zip(places, groups, strict=True)]

    @tf.function
    def step(images: tf.Tensor, labels: tf.Tensor) -> tf.Tensor:
        if not colocated:
            with tf.GradientTape() as tape:
                loss = loss_fn(labels, model(images, training=True))
            gradients = [tape.gradient(loss, groups[0])]
        else:
            logits = model(images, training=True)
            with tf.device(devices[-1]):
                loss = loss_fn(labels, logits)
            flat = tf.gradients(loss, [v for group in groups for v in group])
            sizes = np.cumsum([0, *map(len, groups)])
            gradients = [flat[start:end] for start, end in zip(sizes[:-1], sizes[1:], strict=True)]
        for optimizer, device, group, grads in zip(optimizers, places, groups, gradients, strict=True):
            with _device_scope(device):
                optimizer.apply_gradients(zip(grads, group, strict=True))
        return loss

    return step


VARIANTS = {  # name: (forward pinned to each part's device, backward and update colocated)
    "article": (False, False),  # the article's code: tf.device around construction only, Keras' train_step
    "forward": (True, False),   # each part called under its device; Keras' GradientTape step
    "split": (True, True),      # and tf.gradients + one optimizer per part: the working split
}


def _batch(size: int, start: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """MNIST training images (with a channel axis) and labels ``start`` to ``start + size``."""
    from dtutor import data

    train = data.load_mnist("train", limit=start + size, verbose=False)
    return train.images[start:, ..., None].astype(np.float32), train.labels[start:].astype(np.int64)


def inspect_split(variant: str = "split", batch: int = 32, devices: list[str] | None = None) -> dict[str, Any]:
    """Entry point: build ``variant`` (a ``VARIANTS`` name), run one training step, report where it ran.

    Returns plain data: the two devices, each variable's device, the ops per device and phase, and every
    tensor that crossed between the devices (``placement``), for a batch of ``batch`` images.
    """
    if variant not in VARIANTS:
        raise ValueError(f"variant: must be one of {', '.join(VARIANTS)}, got {variant!r}")
    devices = split_devices(check_device_names(devices))
    pinned, colocated = VARIANTS[variant]
    model, parts = split_model(devices, pinned=pinned)
    step = train_step(model, parts, devices, colocated=colocated)
    report = placement(step, *_batch(batch))
    variables = {f"{part.name}/{index}.{v.name.rsplit('/', 1)[-1].split(':')[0]}": normal_name(v.device)
                 for part in parts for index, layer in enumerate(part.layers) for v in layer.weights}
    return {"variant": variant, "devices": [normal_name(d) for d in devices], "batch": batch,
            "variables": variables, **report}


def _largest_difference(first: list[np.ndarray], second: list[np.ndarray]) -> float:
    """max |a - b| over matching arrays."""
    return max(float(np.max(np.abs(a - b))) for a, b in zip(first, second, strict=True))


def prove_split(steps: int = 3, batch: int = 64, devices: list[str] | None = None, seed: int = 0) -> dict[str, Any]:
    """Entry point: the working split against the unsplit CNN from the same weights; returns the differences.

    The unsplit ``models.keras_mnist_cnn`` lives on device 0 and trains with Keras' own ``train_on_batch``
    (SGD, lr 0.05, momentum 0.9); the split model gets a copy of its initial weights and trains with
    ``train_step``. Compared: the logits of one forward pass, each step's loss, and every weight after
    ``steps`` steps on the same batches; ``moved`` is how far training moved the weights.
    """
    import tensorflow as tf

    from dtutor import models
    from dtutor.tf.setup import keras2

    devices = split_devices(check_device_names(devices))
    keras = keras2()
    keras.utils.set_random_seed(seed)
    with tf.device(devices[0]):
        unsplit = models.keras_mnist_cnn(keras)
        unsplit.compile(optimizer=keras.optimizers.SGD(learning_rate=0.05, momentum=0.9),
                        loss=keras.losses.SparseCategoricalCrossentropy(from_logits=True))
    model, parts = split_model(devices, pinned=True, seed=seed + 1)  # other initial weights, then a copy
    start = unsplit.get_weights()
    model.set_weights(start)
    images, labels = _batch(batch * steps)
    forward = _largest_difference([model(images[:batch]).numpy()], [unsplit(images[:batch]).numpy()])
    step = train_step(model, parts, devices)
    split_losses, unsplit_losses = [], []
    for index in range(steps):
        x, y = images[index * batch : (index + 1) * batch], labels[index * batch : (index + 1) * batch]
        split_losses.append(float(step(x, y)))
        unsplit_losses.append(float(unsplit.train_on_batch(x, y)))
    return {"devices": [normal_name(d) for d in devices], "steps": steps, "batch": batch,
            "forward_difference": forward, "loss_difference": _largest_difference(split_losses, unsplit_losses),
            "weight_difference": _largest_difference(model.get_weights(), unsplit.get_weights()),
            "moved": _largest_difference(unsplit.get_weights(), start), "losses": split_losses,
            "weight_shapes": [tuple(w.shape) for w in model.get_weights()]}


def run_fresh(entry: str, timeout: float = 300.0, quiet: bool = False, **kwargs: Any) -> Any:
    """Run this module's ``entry`` ("inspect_split", "prove_split") in a fresh process; return its result.

    Device names in ``kwargs`` are checked before the process starts; the process starts TensorFlow with
    its own devices (this one never imports it). Unless ``quiet``, prints the equivalent terminal command.
    """
    from dtutor import launch
    from dtutor.launch.commands import TF_WORKER_ENV

    if entry not in ("inspect_split", "prove_split"):
        raise ValueError(f"entry: must be 'inspect_split' or 'prove_split', got {entry!r}")
    if kwargs.get("variant", "split") not in VARIANTS:
        raise ValueError(f"variant: must be one of {', '.join(VARIANTS)}, got {kwargs['variant']!r}")
    check_device_names(kwargs.get("devices"))
    return launch.run_single(f"dtutor.tf.model_split:{entry}", timeout=timeout, env=dict(TF_WORKER_ENV),
                             quiet=quiet, **kwargs)
