"""Every strategy in the course, by name: where its code lives, which launcher starts it, what it changes.

This registry is what the launcher, the config check and the benchmarks read; it imports no framework.
Each entry points at the class that implements it. The class declares its ``layout`` (``dtutor.layout``: what
the ranks split: the data, the layers into pipeline stages, each layer into tensor shards, or a grid of them);
the entry repeats it so the config is checked before any process starts without importing the framework, and
a test keeps the two equal. A strategy's class is loaded only when it runs (``load``), so a TensorFlow worker
never imports torch. ``reference`` and ``tolerance`` say what each strategy is proven equal to, and how
closely (the tests and ``bench all`` read them).

Launchers:
- ``inprocess``: one process, this one (single device, DataParallel, TensorFlow's MirroredStrategy);
- ``torchrun``: one process per rank through PyTorch's launcher (DDP, pipelines, tensor parallel, FSDP, and
  DeepSpeed, which also runs under its own ``deepspeed`` launcher);
- ``horovodrun``: one process per rank through Horovod's launcher;
- ``tf_workers``: one process per worker, each told its place by ``TF_CONFIG``.
"""

from __future__ import annotations

import importlib
from dataclasses import dataclass

from dtutor.layout import DATA, DATA_X_TENSOR, PIPELINE, TENSOR, Layout


@dataclass(frozen=True)
class StrategyInfo:
    """One registry entry: the class implementing it ("module:Class"), its framework and launcher."""

    name: str
    implementation: str
    framework: str  # "torch" or "tensorflow"
    launcher: str  # "inprocess", "torchrun", "horovodrun" or "tf_workers"
    summary: str
    layout: Layout = DATA  # what the ranks split (the class declares the same ``layout``)
    schedule: str = ""  # a pipeline's schedule: "gpipe" or "1f1b" (1F1B needs micro-batches >= stages)
    reference: str = "single"  # proven equal to: "single" (one device), "ddp", or "tf_single" (one Keras replica)
    tolerance: float = 1e-5  # largest |parameter difference| from the reference after the proof's steps (fp32)


STRATEGIES: dict[str, StrategyInfo] = {
    info.name: info
    for info in (
        StrategyInfo("single", "dtutor.pytorch.single:SingleDevice", "torch", "inprocess",
                     "one device, no communication: the reference every strategy is proven against",
                     tolerance=0.0),  # two runs repeat bit for bit
        StrategyInfo("dataparallel", "dtutor.pytorch.dataparallel:DataParallel", "torch", "inprocess",
                     "nn.DataParallel: one process, threads, the batch scattered over the GPUs", tolerance=1e-6),
        StrategyInfo("ddp", "dtutor.pytorch.ddp:DDP", "torch", "torchrun",
                     "DistributedDataParallel: one process per GPU, gradients all-reduced during backward"),
        StrategyInfo("horovod", "dtutor.pytorch.horovod:Horovod", "torch", "horovodrun",
                     "Horovod's DistributedOptimizer: gradients all-reduced by Horovod's background thread"),
        StrategyInfo("deepspeed", "dtutor.pytorch.sharded.deepspeed_zero:DeepSpeedZeRO", "torch", "torchrun",
                     "DeepSpeed's engine: ZeRO stages 1-3 partition optimizer state, gradients, parameters",
                     reference="ddp", tolerance=1e-6),  # the same gradient sums as DDP
        StrategyInfo("fsdp", "dtutor.pytorch.sharded.fsdp:FSDP", "torch", "torchrun",
                     "PyTorch's FSDP2 (fully_shard): parameters, gradients and optimizer state sharded",
                     reference="ddp", tolerance=1e-6),  # reduce-scatter + all-gather add what DDP adds
        StrategyInfo("mirrored", "dtutor.tf.mirrored:Mirrored", "tensorflow", "inprocess",
                     "tf.distribute.MirroredStrategy: one process, one replica per device", reference="tf_single"),
        StrategyInfo("multiworker", "dtutor.tf.multiworker:MultiWorker", "tensorflow", "tf_workers",
                     "tf.distribute.MultiWorkerMirroredStrategy: one process per worker, TF_CONFIG",
                     reference="tf_single"),
        StrategyInfo("horovod_keras", "dtutor.tf.horovod_keras:HorovodKeras", "tensorflow", "horovodrun",
                     "Horovod for Keras: DistributedOptimizer and broadcast callbacks", reference="tf_single"),
        StrategyInfo("pipeline_gpipe", "dtutor.pytorch.model_parallel.pipeline:PipelineGPipe", "torch", "torchrun",
                     "one stage of layers per rank, GPipe: all micro-batches forward, then all backward",
                     layout=PIPELINE, schedule="gpipe"),
        StrategyInfo("pipeline_1f1b", "dtutor.pytorch.model_parallel.pipeline:Pipeline1F1B", "torch", "torchrun",
                     "one stage of layers per rank, 1F1B: one forward, one backward; fewer activations held",
                     layout=PIPELINE, schedule="1f1b"),
        StrategyInfo("pipeline_by_hand", "dtutor.pytorch.model_parallel.gpipe:PipelineByHand", "torch", "torchrun",
                     "GPipe written by hand (send/recv), one stage per rank; every step's timeline kept",
                     layout=PIPELINE, schedule="gpipe"),
        StrategyInfo("pipeline_by_hand_1f1b", "dtutor.pytorch.model_parallel.gpipe:PipelineByHand1F1B", "torch",
                     "torchrun", "1F1B written by hand (isend/irecv), one stage per rank; every step's timeline kept",
                     layout=PIPELINE, schedule="1f1b"),
        StrategyInfo("tensor_parallel", "dtutor.pytorch.model_parallel.tensor_parallel:TensorParallel", "torch",
                     "torchrun", "each linear pair split across ranks (columns, then rows), Megatron-style",
                     layout=TENSOR),
        StrategyInfo("data_tensor", "dtutor.pytorch.model_parallel.tensor_parallel:DataTensorParallel", "torch",
                     "torchrun", "a 2-D grid: linear pairs split over 2 ranks, data split over the replicas",
                     layout=DATA_X_TENSOR),
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
