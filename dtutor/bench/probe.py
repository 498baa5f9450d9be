"""Inside the workers of ``python -m dtutor.bench all``: train with the course's driver and measure as it goes.

``run_cases`` (an entry point, every rank) trains each case's ``TrainConfig`` with ``dtutor.pytorch.fit``
one after another in the same processes, through the strategy's own class, watched by a ``Probe``:

- **bytes**: during the first ``count_steps`` optimizer steps (the warm-up epoch, never timed), every
  collective the strategy starts is counted with its tensor sizes. ``CollectiveCounter`` is a
  ``TorchDispatchMode``: torch.distributed's eager collectives (``c10d::*``, which DDP's reducer, FSDP,
  DeepSpeed and the pipeline schedules call) and the functional ones DTensor uses (``_c10d_functional::*``)
  are operators, so it sees them all; Horovod's are counted at its optimizer's ``allreduce_async_``;
- **model state**: just before and after each of those steps (``optimizer.step``, the innermost optimizer
  too), ``model_state_bytes`` sums what the rank holds (``sharded.storage.Ledger``); the largest total is kept;
- **CPU**: the main thread's and the whole process's CPU time over the timed steps (the rest is other
  threads: gloo's, Horovod's background thread);
- **speed**: samples/s over the epochs after the first, the slowest rank's time (the driver's own figure).

The process group is joined once and kept between cases (each strategy releases what holds it), with a
barrier before each case so the ranks start it together.
"""

from __future__ import annotations

from collections import defaultdict
from typing import Any

import torch
from torch.utils._python_dispatch import TorchDispatchMode

from dtutor.bench.theory import wire_factor
from dtutor.pytorch.sharded.storage import Ledger

# operator name -> (collective, which argument holds the tensors whose bytes are its size)
C10D = {"allreduce_": ("all_reduce", 0), "allreduce_coalesced_": ("all_reduce", 0),
        "_allgather_base_": ("all_gather", 0), "allgather_": ("all_gather", 0),
        "allgather_into_tensor_coalesced_": ("all_gather", 0), "_reduce_scatter_base_": ("reduce_scatter", 1),
        "reduce_scatter_": ("reduce_scatter", 1), "reduce_scatter_tensor_coalesced_": ("reduce_scatter", 1),
        "broadcast_": ("broadcast", 0), "send": ("send", 0), "alltoall_base_": ("all_to_all", 1)}
FUNCTIONAL = {"all_reduce": "all_reduce", "all_reduce_": "all_reduce", "all_reduce_coalesced": "all_reduce",
              "all_reduce_coalesced_": "all_reduce", "reduce_scatter_tensor": "reduce_scatter",
              "reduce_scatter_tensor_coalesced": "reduce_scatter", "broadcast": "broadcast",
              "broadcast_": "broadcast", "all_to_all_single": "all_to_all", "isend": "send"}
GATHERS = ("all_gather_into_tensor", "all_gather_into_tensor_out", "all_gather_into_tensor_coalesced")
IGNORED = ("wait_tensor", "recv_", "irecv", "recv_any_source_", "barrier", "monitored_barrier_",
           "_wrap_tensor_autograd")


def tensor_bytes(value: Any) -> int:
    """Bytes of a tensor, or of every tensor in a (nested) list."""
    if isinstance(value, torch.Tensor):
        return value.numel() * value.element_size()
    if isinstance(value, list | tuple):
        return sum(tensor_bytes(v) for v in value)
    return 0


class CollectiveCounter(TorchDispatchMode):
    """Counts the collectives dispatched while active: calls and bytes per kind (see the module docstring)."""

    def __init__(self, world_size: int):
        super().__init__()
        self.world_size = world_size
        self.calls: dict[str, int] = defaultdict(int)
        self.bytes: dict[str, float] = defaultdict(float)
        self.unknown: set[str] = set()

    def record(self, kind: str, size: int) -> None:
        """One collective of ``kind`` on ``size`` bytes."""
        self.calls[kind] += 1
        self.bytes[kind] += size

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        namespace, name = func.namespace, func._schema.name.split("::")[-1]
        if namespace == "c10d" and name in C10D:
            kind, position = C10D[name]
            self.record(kind, tensor_bytes(args[position]))
        elif namespace == "_c10d_functional" and name in GATHERS:
            self.record("all_gather", tensor_bytes(args[0]) * int(args[1]))
        elif namespace == "_c10d_functional" and name in FUNCTIONAL:
            self.record(FUNCTIONAL[name], tensor_bytes(args[0]))
        elif namespace in ("c10d", "_c10d_functional") and name not in IGNORED:
            self.unknown.add(f"{namespace}::{name}")
        return func(*args, **kwargs)

    def wire_bytes(self) -> float:
        """Bytes this worker sends for what was counted, with the ring factors of ``theory.wire_factor``."""
        return sum(size * wire_factor(kind, self.world_size) for kind, size in self.bytes.items())


def model_state_bytes(module: torch.nn.Module, optimizers: list[Any]) -> dict[str, int]:
    """Parameters, gradients and optimizer state this rank holds, in bytes, each storage counted once
    (``sharded.storage.Ledger``, the course's one model-state counter: each role the bytes its views cover).

    Parameters: the module's (DTensor: the local shard; ZeRO-3: the partition ``ds_tensor``, and the whole
    parameter where DeepSpeed keeps it gathered). Gradients:
    ``.grad`` of those and of the optimizers' own parameters (ZeRO's fp32 partitions). Optimizer state:
    every tensor in the optimizers' ``state``, and their parameters that are not the module's (ZeRO's
    fp32 master partitions). Communication buffers are not model state and are not counted.
    """
    ledger = Ledger()
    own = list(module.parameters())
    for p in own:
        ledger.add("parameters", p)  # ZeRO-3: empty while partitioned; whole for "persistent" (small) parameters
        ledger.add("parameters", getattr(p, "ds_tensor", None))
    stepped = [p for o in optimizers for g in getattr(o, "param_groups", []) for p in g["params"]]
    for p in stepped:
        ledger.add("master_weights", p)  # the module's own parameters were claimed as parameters first
    for optimizer in optimizers:
        for state in getattr(optimizer, "state", {}).values():
            for value in state.values():
                ledger.add("optimizer_state", value if isinstance(value, torch.Tensor) else None)
    for p in own + stepped:
        ledger.add("gradients", p.grad)
    totals = ledger.totals()
    return {"parameters": totals["parameters"], "gradients": totals["gradients"],
            "optimizer": totals["master_weights"] + totals["optimizer_state"]}


def optimizer_chain(optimizer: Any) -> list[Any]:
    """The optimizer and the ones it wraps (``.optimizer``: DeepSpeed's ZeRO optimizer around torch's)."""
    chain = [optimizer]
    while getattr(chain[-1], "optimizer", None) is not None and all(o is not chain[-1].optimizer for o in chain):
        chain.append(chain[-1].optimizer)
    return chain
