"""Every strategy in the course, by name: where its code lives, which launcher starts it, what it changes.

This registry is what the launcher, the config check and the benchmarks read; it imports no framework.
``parallelism`` says what the ranks split: the data (every data-parallel strategy), the layers (pipelines:
every stage reads the same batches) or each layer (tensor parallelism: every rank reads the same batches).
A strategy's class is loaded only when it runs (``load``), so a TensorFlow worker never imports torch.

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


@dataclass(frozen=True)
class StrategyInfo:
    """One registry entry: the class implementing it ("module:Class"), its framework and launcher."""

    name: str
    implementation: str
    framework: str  # "torch" or "tensorflow"
    launcher: str  # "inprocess", "torchrun", "horovodrun" or "tf_workers"
    summary: str
    parallelism: str = "data"  # "data": ranks split the batch; "pipeline", "tensor": every rank reads it all
    schedule: str = ""  # a pipeline's schedule: "gpipe" or "1f1b" (1F1B needs micro-batches >= stages)

    def data_ranks(self, world_size: int) -> int:
        """How many of ``world_size`` ranks split the data: all for data parallelism, else one."""
        return world_size if self.parallelism == "data" else 1


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
        StrategyInfo("deepspeed", "dtutor.pytorch.sharded.deepspeed_zero:DeepSpeedZeRO", "torch", "torchrun",
                     "DeepSpeed's engine: ZeRO stages 1-3 partition optimizer state, gradients, parameters"),
        StrategyInfo("fsdp", "dtutor.pytorch.sharded.fsdp:FSDP", "torch", "torchrun",
                     "PyTorch's FSDP2 (fully_shard): parameters, gradients and optimizer state sharded"),
        StrategyInfo("mirrored", "dtutor.tf.mirrored:Mirrored", "tensorflow", "inprocess",
                     "tf.distribute.MirroredStrategy: one process, one replica per device"),
        StrategyInfo("multiworker", "dtutor.tf.multiworker:MultiWorker", "tensorflow", "tf_workers",
                     "tf.distribute.MultiWorkerMirroredStrategy: one process per worker, TF_CONFIG"),
        StrategyInfo("horovod_keras", "dtutor.tf.horovod_keras:HorovodKeras", "tensorflow", "horovodrun",
                     "Horovod for Keras: DistributedOptimizer and broadcast callbacks"),
        StrategyInfo("pipeline_gpipe", "dtutor.pytorch.model_parallel.pipeline:PipelineGPipe", "torch", "torchrun",
                     "one stage of layers per rank, GPipe: all micro-batches forward, then all backward",
                     parallelism="pipeline", schedule="gpipe"),
        StrategyInfo("pipeline_1f1b", "dtutor.pytorch.model_parallel.pipeline:Pipeline1F1B", "torch", "torchrun",
                     "one stage of layers per rank, 1F1B: one forward, one backward; fewer activations held",
                     parallelism="pipeline", schedule="1f1b"),
        StrategyInfo("tensor_parallel", "dtutor.pytorch.model_parallel.tensor_parallel:TensorParallel", "torch",
                     "torchrun", "each linear pair split across ranks (columns, then rows), Megatron-style",
                     parallelism="tensor"),
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
