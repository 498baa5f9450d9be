"""Keras with tf.distribute, as one plain script: the source articles' MirroredStrategy code, made to work.

One process: MirroredStrategy, one replica per GPU, or per logical CPU device when there are too few GPUs.
With TF_CONFIG set (one process per worker, each told every worker's address and its own index):
MultiWorkerMirroredStrategy. The articles build the model outside the strategy's scope and leave the batch
unsaid; here the model is built and compiled inside strategy.scope() and --batch is the global batch, which
the strategy splits over the replicas. Worker 0 saves the weights.

    python examples/keras_train.py --replicas 2 --output cnn.h5
    TF_CONFIG='{"cluster": {"worker": ["127.0.0.1:12345", "127.0.0.1:12346"]}, "task": {"type": "worker",
        "index": 0}}' python examples/keras_train.py --output cnn.h5    # and index 1 in a 2nd terminal
"""

import argparse
import json
import os

os.environ["TF_USE_LEGACY_KERAS"] = "1"  # Keras 2 (tf-keras), before TensorFlow is imported
import tensorflow as tf  # noqa: E402

from dtutor.data import load_mnist  # noqa: E402  MNIST, or scikit-learn's digits offline


def make_strategy(replicas: int) -> tf.distribute.Strategy:
    """MultiWorkerMirroredStrategy under TF_CONFIG, else MirroredStrategy over ``replicas`` devices of this process."""
    if "TF_CONFIG" in os.environ:
        return tf.distribute.MultiWorkerMirroredStrategy()  # before any other TensorFlow operation
    if len(tf.config.list_physical_devices("GPU")) >= replicas:
        return tf.distribute.MirroredStrategy([f"/gpu:{i}" for i in range(replicas)])
    cpu = tf.config.list_physical_devices("CPU")[0]  # split the CPU into logical devices, one per replica
    tf.config.set_logical_device_configuration(cpu, [tf.config.LogicalDeviceConfiguration()] * replicas)
    return tf.distribute.MirroredStrategy([f"/cpu:{i}" for i in range(replicas)])


def main() -> None:
    parser = argparse.ArgumentParser(description="Train the MNIST CNN with MirroredStrategy or, under TF_CONFIG, "
                                                 "MultiWorkerMirroredStrategy")
    parser.add_argument("--replicas", type=int, default=2, help="devices of this process (without TF_CONFIG)")
    parser.add_argument("--epochs", type=int, default=1)
    parser.add_argument("--batch", type=int, default=64, help="the global batch: all replicas together")
    parser.add_argument("--samples", type=int, default=1024, help="training images per epoch (whole batches)")
    parser.add_argument("--lr", type=float, default=0.05, help="the learning rate of the global batch")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--output", default="keras_cnn.h5", help="the weights worker 0 saves")
    args = parser.parse_args()

    strategy = make_strategy(args.replicas)
    worker = json.loads(os.environ["TF_CONFIG"])["task"]["index"] if "TF_CONFIG" in os.environ else 0
    keras = tf.keras
    keras.utils.set_random_seed(args.seed)  # the same initial weights on every worker
    with strategy.scope():  # variables created here are mirrored: one copy per replica, kept equal
        model = keras.Sequential([
            keras.Input(shape=(28, 28, 1)),
            keras.layers.Conv2D(32, 3, activation="relu"), keras.layers.MaxPooling2D(2),
            keras.layers.Conv2D(64, 3, activation="relu"), keras.layers.MaxPooling2D(2),
            keras.layers.Flatten(), keras.layers.Dense(64, activation="relu"), keras.layers.Dense(10),
        ])
        model.compile(optimizer=keras.optimizers.SGD(learning_rate=args.lr, momentum=0.9), metrics=["accuracy"],
                      loss=keras.losses.SparseCategoricalCrossentropy(from_logits=True))
    model.distribute_reduction_method = "first"  # the logged loss is already global: one copy, not a sum

    steps = args.samples // args.batch
    train = load_mnist("train", limit=steps * args.batch, verbose=worker == 0)
    dataset = tf.data.Dataset.from_tensor_slices((train.images[..., None], train.labels))
    dataset = dataset.batch(args.batch, drop_remainder=True).repeat()  # global batches; each replica gets a slice
    model.fit(dataset, epochs=args.epochs, steps_per_epoch=steps, verbose=2 if worker == 0 else 0)
    if worker == 0:  # the weights are the same on every worker: one saves them
        model.save_weights(args.output)


if __name__ == "__main__":
    main()
