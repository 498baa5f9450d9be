"""Every strategy in the course, by name: where its code lives, which launcher starts it, what it changes.

This registry is what the launcher, the config check and the benchmarks read; it imports no framework.
A strategy's class is loaded only when it runs (``load``), so a TensorFlow worker never imports torch.

Launchers:
- ``inprocess``: one process, this one (single device, DataParallel, TensorFlow's MirroredStrategy);
- ``torchrun``: one process per rank through PyTorch's launcher (DDP; later FSDP, pipelines, tensor parallel);
- ``horovodrun``: one process per rank through Horovod's launcher;
- ``tf_workers``: one process per worker, each told its place by ``TF_CONFIG``.
"""

from __future__ import annotations

import importlib
from dataclasses import dataclass


@dataclass(frozen=True)
class StrategyInfo:
    """One registry entry: the class implementing it ("module:Class"), its framework and launcher."""

    name: str
    implementation: str
    framework: str  # "torch" or "tensorflow"
    launcher: str  # "inprocess", "torchrun", "horovodrun" or "tf_workers"
    summary: str


STRATEGIES: dict[str, StrategyInfo] = {
    info.name: info
    for info in (
        StrategyInfo("single", "dtutor.pytorch.single:SingleDevice", "torch", "inprocess",
                     "one device, no communication: the reference every strategy is proven against"),
        StrategyInfo("dataparallel", "dtutor.pytorch.dataparallel:DataParallel", "torch", "inprocess",
                     "nn.DataParallel: one process, threads, the batch scattered over the GPUs"),
        StrategyInfo("ddp", "dtutor.pytorch.ddp:DDP", "torch", "torchrun",
                     "DistributedDataParallel: one process per GPU, gradients all-reduced during backward"),
        StrategyInfo("horovod", "dtutor.pytorch.horovod:Horovod", "torch", "horovodrun",
                     "Horovod's DistributedOptimizer: gradients all-reduced by Horovod's background thread"),
        StrategyInfo("mirrored", "dtutor.tf.mirrored:Mirrored", "tensorflow", "inprocess",
                     "tf.distribute.MirroredStrategy: one process, one replica per device"),
        StrategyInfo("multiworker", "dtutor.tf.multiworker:MultiWorker", "tensorflow", "tf_workers",
                     "tf.distribute.MultiWorkerMirroredStrategy: one process per worker, TF_CONFIG"),
        StrategyInfo("horovod_keras", "dtutor.tf.horovod_keras:HorovodKeras", "tensorflow", "horovodrun",
                     "Horovod for Keras: DistributedOptimizer and broadcast callbacks"),
    )
}


def load(name: str) -> type:
    """The class implementing strategy ``name`` (imports its framework)."""
    if name not in STRATEGIES:
        raise ValueError(f"strategy: must be one of {', '.join(STRATEGIES)}, got {name!r}")
    module_name, _, class_name = STRATEGIES[name].implementation.partition(":")
    return getattr(importlib.import_module(module_name), class_name)


def names(framework: str | None = None) -> list[str]:
    """The registered strategy names, of one ``framework`` ("torch" or "tensorflow") if given."""
    return [name for name, info in STRATEGIES.items() if framework in (None, info.framework)]
