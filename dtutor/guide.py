"""Which strategy to use, from the model's size and the machines: the rules notebook 07's guide and widget apply.

``recommend_strategy(parameters, gpus_per_node, nodes, framework, gpu_memory_gb)`` returns a ``Choice``: the
strategy (a ``dtutor.strategies`` name), the ``TrainConfig`` fields it needs, the command that launches it
and the reasons, each stated with the figure it rests on. The rules, in order:

1. **Memory first.** Training with Adam keeps ``BYTES_PER_PARAMETER`` = 16 bytes per parameter on a
   device that holds a whole copy (fp32 weights and gradients and Adam's two moments: 4 + 4 + 8; mixed
   precision keeps the same 16: 2 + 2 + 12, ZeRO paper section 3, ``sharded.formulas.paper_model_state``),
   and activations need room too: a copy must fit in ``HEADROOM`` of a GPU's memory. Fully sharded (ZeRO-3,
   FSDP), each of N GPUs keeps 1/N (the same formulas at stage 3).
2. **A whole copy fits**: one GPU trains alone (``single``); several use DDP, one process per GPU, on one
   machine or many: it sends one all-reduce of the gradients per step, overlapped with backward, and keeps no
   sharded state to gather (``python -m dtutor.bench all`` counts the bytes of every strategy);
   ``nn.DataParallel`` is one process that cannot span machines; Horovod sends the same bytes with CPU time
   of its own on the workers (notebook 07). TensorFlow: ``MirroredStrategy`` on one machine,
   ``MultiWorkerMirroredStrategy`` across machines.
3. **Only a sharded copy fits**: FSDP (PyTorch's own) across all the GPUs. In TensorFlow, ``tf.distribute``'s
   data-parallel strategies (``MirroredStrategy``, ``MultiWorkerMirroredStrategy``) keep a whole copy of the
   model on every replica and shard no optimizer state the way ZeRO does; sharding exists in DTensor and in
   Keras 3's distribution API (``keras.distribution.ModelParallel`` with a ``LayoutMap``), which the course
   does not teach, so the guide points to PyTorch's FSDP.
4. **Not even that**: DeepSpeed ZeRO-3 with the optimizer state offloaded to CPU memory (or split the
   model: pipeline and tensor parallelism, notebook 05).
5. **No GPU**: DDP over CPU processes with gloo, one process of one thread per core (``os.cpu_count()``):
   correct, for learning and testing. Processes that each have a core of their own can speed training up, up
   to the number of cores; processes beyond the cores share them, and add no speed.

This module imports no framework (the widget's rules are tested without one).
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from typing import Any

from dtutor.launch.commands import DRIVERS, deepspeed_command, shell_command, torchrun_command
from dtutor.launch.runners import show_tf_worker_commands
from dtutor.pytorch.sharded.formulas import paper_model_state
from dtutor.strategies import STRATEGIES

BYTES_PER_PARAMETER = paper_model_state(1, 1, stage=0).total  # Adam, mixed precision: 2 + 2 + 12 (the ZeRO paper)
HEADROOM = 0.7  # the share of a GPU's memory the model state may take; the rest is activations and buffers
FRAMEWORKS = tuple(DRIVERS)  # "torch" or "tensorflow", as a strategy's StrategyInfo.framework says
GB = 1e9


@dataclass
class Choice:
    """What the guide recommends: a strategy, its extra fields, the launch command and why."""

    strategy: str
    fields: dict[str, Any] = field(default_factory=dict)
    command: str = ""
    reasons: list[str] = field(default_factory=list)


def model_state_gb(parameters: float, shards: int = 1) -> float:
    """Gigabytes of model state per device for ``parameters`` parameters with Adam in mixed precision: a whole
    copy on one device, or fully sharded over ``shards`` devices (ZeRO-3, FSDP): the ZeRO paper's formulas."""
    return paper_model_state(parameters, shards, stage=0 if shards == 1 else 3).total / GB


def cpu_cores() -> int:
    """The cores this process may run on, as ``devices.inventory`` counts them: the affinity mask where the OS
    has one (a container or ``taskset`` may allow fewer than the machine has), else ``os.cpu_count`` (1 if
    unknown)."""
    if hasattr(os, "sched_getaffinity"):
        return len(os.sched_getaffinity(0))
    return os.cpu_count() or 1


def _check(parameters: float, gpus_per_node: int, nodes: int, framework: str, gpu_memory_gb: float) -> None:
    if not parameters > 0:
        raise ValueError(f"parameters: must be > 0, got {parameters!r}")
    if not (isinstance(gpus_per_node, int) and gpus_per_node >= 0):
        raise ValueError(f"gpus_per_node: must be a whole number >= 0, got {gpus_per_node!r}")
    if not (isinstance(nodes, int) and nodes >= 1):
        raise ValueError(f"nodes: must be a whole number >= 1, got {nodes!r}")
    if framework not in FRAMEWORKS:
        raise ValueError(f"framework: must be one of {', '.join(FRAMEWORKS)}, got {framework!r}")
    if not gpu_memory_gb > 0:
        raise ValueError(f"gpu_memory_gb: must be > 0, got {gpu_memory_gb!r}")


def recommend_strategy(parameters: float, gpus_per_node: int = 1, nodes: int = 1, framework: str = "torch",
                       gpu_memory_gb: float = 80.0, cores: int | None = None) -> Choice:
    """The strategy for a model of ``parameters`` parameters on ``nodes`` machines of ``gpus_per_node`` GPUs
    (0: CPUs only, ``cores`` each, this machine's by default) of ``gpu_memory_gb`` each, in ``framework``
    ("torch" or "tensorflow", as the registry names them; rules in the module docstring)."""
    _check(parameters, gpus_per_node, nodes, framework, gpu_memory_gb)
    gpus, budget = gpus_per_node * nodes, HEADROOM * gpu_memory_gb
    whole, sharded = model_state_gb(parameters), model_state_gb(parameters, max(gpus, 1))
    memory = (f"model state {whole:,.1f} GB per whole copy ({BYTES_PER_PARAMETER:g} bytes x {parameters:,.0f} "
              f"parameters) against {budget:,.1f} GB usable per GPU ({HEADROOM:.0%} of {gpu_memory_gb:g} GB)")
    cores = cores or cpu_cores()
    if gpus == 0:
        choice = _cpu_only(framework, cores)
    elif whole <= budget:
        choice = _whole_copy(framework, gpus_per_node, nodes, memory)
    elif framework == "tensorflow":
        choice = Choice("fsdp", reasons=[memory, "tf.distribute's data-parallel strategies keep a whole copy of "
                                         "the model on every replica and shard no optimizer state (sharding is "
                                         "in DTensor and Keras 3's keras.distribution, not taught here): move the "
                                         "model to PyTorch (FSDP or DeepSpeed ZeRO)"])
    elif sharded <= budget:
        choice = Choice("fsdp", reasons=[memory, f"sharded over {gpus} GPUs: {sharded:,.1f} GB each, which "
                                         "fits: FSDP keeps 1/N of every parameter, gradient and optimizer state"])
    else:
        choice = Choice("deepspeed", {"zero_stage": 3, "offload": True}, reasons=[
            memory, f"even sharded over {gpus} GPUs it needs {sharded:,.1f} GB each: ZeRO-3 with the optimizer "
            "state offloaded to CPU memory, or split the model (pipeline + tensor parallelism)"])
    choice.command = launch_command(choice, gpus_per_node or cores, nodes)
    return choice


def _cpu_only(framework: str, cores: int) -> Choice:
    """No GPU: one worker per core; a speed-up up to the number of cores, none beyond it."""
    workers = "processes (gloo)" if framework == "torch" else "logical CPU devices in one process"
    return Choice("ddp" if framework == "torch" else "mirrored", reasons=[
        f"no GPU: {cores} CPU {workers}, one per core, train correctly, for learning and testing",
        f"speed: workers of one thread, each on a core of its own, reach up to {cores}x one worker's samples/s; "
        f"workers beyond the {cores} cores share them and add no speed"])


def _whole_copy(framework: str, gpus_per_node: int, nodes: int, memory: str) -> Choice:
    gpus = gpus_per_node * nodes
    fits = f"{memory}: a whole copy fits"
    if framework == "tensorflow":
        name = "multiworker" if nodes > 1 else "mirrored"
        return Choice(name, reasons=[fits, "MultiWorkerMirroredStrategy spans machines (TF_CONFIG)" if nodes > 1
                                     else f"MirroredStrategy: one replica per GPU ({gpus}) in one process"])
    if gpus == 1:
        return Choice("single", reasons=[fits, "one GPU: nothing to distribute"])
    return Choice("ddp", reasons=[fits, f"{gpus} GPUs: DDP, one process per GPU, gradients all-reduced during "
                                  "backward; it spans machines, nn.DataParallel does not"])


def launch_command(choice: Choice, gpus_per_node: int, nodes: int) -> str:
    """The terminal command(s) that start ``choice`` with its framework's driver (``launch.commands.DRIVERS``)."""
    fields = {"strategy": choice.strategy, **choice.fields}
    entry = DRIVERS[STRATEGIES[choice.strategy].framework]
    if choice.strategy == "deepspeed":
        return shell_command(deepspeed_command(entry, gpus_per_node, fields, nnodes=nodes))
    if choice.strategy == "multiworker":
        return show_tf_worker_commands(entry, nodes, **fields)
    if choice.strategy == "mirrored":
        return shell_command(["python", "-m", "dtutor.launch", entry, *(f"{k}={v}" for k, v in fields.items()),
                              f"replicas={gpus_per_node}"])
    return shell_command(torchrun_command(entry, gpus_per_node, fields, nnodes=nodes))
