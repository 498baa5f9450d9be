"""The course's models: the seed's MNIST CNN (PyTorch and Keras, equal parameter counts) and a wide MLP.

The CNN is the one every seed notebook trains::

    Conv 32 3x3 -> ReLU -> MaxPool 2 -> Conv 64 3x3 -> ReLU -> MaxPool 2 -> Flatten -> Dense 64 -> Dense 10

``wide_mlp`` is a configurable larger model for the memory demonstrations (DataParallel, ZeRO).
"""

from __future__ import annotations

from typing import TYPE_CHECKING

if TYPE_CHECKING:  # torch is imported inside the functions: TensorFlow workers import this module too
    from torch import nn

MNIST_CNN_PARAMETERS = 121_930  # both frameworks; a test checks


def mnist_cnn() -> nn.Module:
    """The seed's MNIST CNN in PyTorch: input (N, 1, 28, 28), output logits (N, 10)."""
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
