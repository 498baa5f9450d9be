"""The course's models: the Alibaba Cloud article's MNIST CNN (PyTorch and Keras, equal parameter counts) and a
wide MLP.

The CNN is the one the Alibaba Cloud article (the first of the source articles) trains with Horovod and splits
over two devices::

    Conv 32 3x3 -> ReLU -> MaxPool 2 -> Conv 64 3x3 -> ReLU -> MaxPool 2 -> Flatten -> Dense 64 -> Dense 10

``wide_mlp`` is a configurable larger model for the memory demonstrations (DataParallel, ZeRO) and tensor
parallelism. ``MODEL_SHAPES`` tells the config check, without torch, how a pipeline or tensor parallelism
can cut each model (``pipeline_layers`` is the cut a pipeline uses).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING

if TYPE_CHECKING:  # torch is imported inside the functions: TensorFlow workers import this module too
    from torch import nn

MNIST_CNN_PARAMETERS = 121_930  # both frameworks; a test checks


def mnist_cnn() -> nn.Module:
    """The Alibaba Cloud article's MNIST CNN in PyTorch: input (N, 1, 28, 28), output logits (N, 10)."""
    from torch import nn

    return nn.Sequential(
        nn.Conv2d(1, 32, kernel_size=3),
        nn.ReLU(),
        nn.MaxPool2d(2),
        nn.Conv2d(32, 64, kernel_size=3),
        nn.ReLU(),
        nn.MaxPool2d(2),
        nn.Flatten(),
        nn.Linear(64 * 5 * 5, 64),
        nn.ReLU(),
        nn.Linear(64, 10),
    )


def mnist_cnn_batchnorm() -> nn.Module:
    """The same CNN with a ``BatchNorm2d`` after each convolution (notebook 02's BatchNorm under DDP).

    The convolutions have no bias: BatchNorm subtracts the batch mean, which removes any bias, and its own shift
    (``bias``) takes its place.
    """
    from torch import nn

    return nn.Sequential(
        nn.Conv2d(1, 32, kernel_size=3, bias=False),
        nn.BatchNorm2d(32),
        nn.ReLU(),
        nn.MaxPool2d(2),
        nn.Conv2d(32, 64, kernel_size=3, bias=False),
        nn.BatchNorm2d(64),
        nn.ReLU(),
        nn.MaxPool2d(2),
        nn.Flatten(),
        nn.Linear(64 * 5 * 5, 64),
        nn.ReLU(),
        nn.Linear(64, 10),
    )


def keras_mnist_cnn(keras=None):
    """The same CNN in Keras: input (N, 28, 28, 1), output logits (N, 10).

    ``keras`` is the Keras module to build with; by default ``tf.keras``, which is Keras 2 (tf-keras) in a
    process started with ``TF_USE_LEGACY_KERAS=1`` and Keras 3 otherwise. Call it inside
    ``strategy.scope()`` when training with a ``tf.distribute`` strategy.
    """
    if keras is None:
        import tensorflow as tf

        keras = tf.keras
    layers = keras.layers
    return keras.Sequential(
        [
            keras.Input(shape=(28, 28, 1)),
            layers.Conv2D(32, 3, activation="relu"),
            layers.MaxPooling2D(2),
            layers.Conv2D(64, 3, activation="relu"),
            layers.MaxPooling2D(2),
            layers.Flatten(),
            layers.Dense(64, activation="relu"),
            layers.Dense(10),
        ]
    )


def wide_mlp(width: int = 1024, depth: int = 4, in_features: int = 28 * 28, classes: int = 10) -> nn.Module:
    """A plain MLP of ``depth`` hidden layers of ``width`` units: big enough to make memory visible.

    Parameters: about ``depth * width**2``; ``wide_mlp(4096, 8)`` has ~138M (0.55 GB in fp32).
    """
    from torch import nn

    if width < 1 or depth < 1:
        raise ValueError(f"width and depth must be >= 1, got width={width}, depth={depth}")
    layers: list[nn.Module] = [nn.Flatten(), nn.Linear(in_features, width), nn.ReLU()]
    for _ in range(depth - 1):
        layers += [nn.Linear(width, width), nn.ReLU()]
    layers.append(nn.Linear(width, classes))
    return nn.Sequential(*layers)


MODELS = {"cnn": mnist_cnn, "mlp": wide_mlp}  # the names a TrainConfig may give as ``model``


@dataclass(frozen=True)
class ModelShape:
    """What model parallelism needs to know of a model before any process starts (no torch needed).

    ``layers``: how many pieces a pipeline may put on different stages (a layer is a child with parameters
    and the parameter-free children after it, see ``pipeline_layers``). ``split_widths``: the output
    widths of the linear layers tensor parallelism splits by columns (each must divide by its ranks).
    """

    layers: int
    split_widths: tuple[int, ...]


# cnn: [conv, relu, pool] [conv, relu, pool, flatten] [linear, relu] [linear]; mlp: 5 linear layers (defaults)
MODEL_SHAPES = {"cnn": ModelShape(4, (64,)), "mlp": ModelShape(5, (1024, 1024))}


def pipeline_layers(model: nn.Sequential) -> list[list[tuple[str, nn.Module]]]:
    """The children of a ``Sequential`` grouped into layers: one with parameters and the ones after it.

    Parameter-free children before the first parametrised one (``Flatten``) join the first layer. Names are
    the children's names in ``model``, so a stage built from them keeps the full model's parameter names.
    """
    layers: list[list[tuple[str, nn.Module]]] = []
    last_has_parameters = False
    for name, child in model.named_children():
        has_parameters = any(True for _ in child.parameters())
        if not layers or (has_parameters and last_has_parameters):
            layers.append([])
            last_has_parameters = False
        layers[-1].append((name, child))
        last_has_parameters |= has_parameters
    return layers


def by_name(name: str):
    """The PyTorch model factory called ``name`` in ``MODELS``."""
    if name not in MODELS:
        raise ValueError(f"model: must be one of {', '.join(MODELS)}, got {name!r}")
    return MODELS[name]


def count_parameters(model: nn.Module) -> int:
    """Number of trainable parameters of a PyTorch model."""
    return sum(p.numel() for p in model.parameters() if p.requires_grad)


def seeded(factory, seed: int = 0, **kwargs) -> nn.Module:
    """``factory(**kwargs)`` built right after ``torch.manual_seed(seed)``: the same initial weights everywhere."""
    import torch

    torch.manual_seed(seed)
    return factory(**kwargs)
