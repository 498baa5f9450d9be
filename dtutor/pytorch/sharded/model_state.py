"""Model-state memory each rank really holds under DeepSpeed ZeRO and FSDP, measured tensor by tensor.

Process memory (RSS, 600-750 MiB per rank here) is mostly the framework's code and caches and cannot say what
is a parameter, a gradient or optimizer state. So this module finds every tensor the engine (or the FSDP model
and its optimizer) holds, by walking its object graph, and adds up their storage bytes, each storage once
(keyed by its ``data_ptr``; meta and empty storages skipped), classified by role:

- ``parameters``: the module's parameters (at ZeRO-3 each one's own partition ``p.ds_tensor``; the whole
  ``p.data`` a layer gathers while it computes is ``gathered_parameters``); FSDP's are ``DTensor`` local shards;
- ``gradients``: ``p.grad`` and the ZeRO optimizer's gradient partitions (``averaged_gradients``,
  ``grads_in_partition``, ZeRO-3's ``grad_partitions_flat_buffer``); ``host_gradients`` with offload: the fp32
  gradient partition the CPU optimizer reads (the master copy's ``.grad``);
- ``master_weights``: the parameters the optimizer steps when they are not the module's (fp32 partitions);
- ``optimizer_state``: the optimizer's ``state`` (Adam's moments and step counts, SGD's momentum);
- ``buffers``: anything else the engine holds (offload transfer buffers; the rest of a storage that only partly
  belongs to the roles above, e.g. the whole gradients of the layers a ZeRO partition boundary cuts).

Within a storage each role counts the bytes its views cover, once, in that order of precedence; what no view
covers is ``buffers``. One exception, the trap of stages 1-3: DeepSpeed's reduce bucket (``ipg_buckets``) is a
``torch.empty`` of ``reduce_bucket_size`` = 5e8 elements (2 GB in fp32) allocated up front; the pages nothing
wrote to are virtual, never resident, so the bucket counts only where gradients view it (``reduce_bucket``), and
its capacity is reported apart. With the default size a model smaller than 5e8 parameters fits in one bucket: at
the end of backward the whole gradient sits there before it is reduced, even at stage 2.

When: the formulas count the model state a rank holds at once after backward, with optimizer state existing.
So every run takes one full step, then a second forward and backward, and is measured twice: at the end of
backward before DeepSpeed reduces the gradients (``engine.allreduce_gradients`` is observed) and once backward
returns; the moment whose model state (parameters, gradients, master, optimizer state) is larger is reported.
It is the first at stage 1 (the whole gradient, before DeepSpeed keeps only its partition) and the second
at stage 2 (the partition, once the bucket is reduced). FSDP reduces during backward: measured once after it.

Differences between ranks, with ``wide_mlp(2048, 4)`` (14,217,226 parameters, 7,108,613 per rank): the model
state is equal to the byte, but at stages 1-2 DeepSpeed's partition buffer (``grads_in_partition``) holds the
whole gradient of every parameter that overlaps the rank's partition, so the layer the boundary cuts (the third)
is held by both: rank 0 holds 10.0 M gradient values for its 7.1 M (11.6 MB more in fp32), rank 1 8.4 M (5.2 MB);
that slack is ``buffers``. ZeRO-3 keeps parameters of at most 1e5 values whole on every rank
(``stage3_param_persistence_threshold``): the biases and the last layer, +0.4% parameters here.

Launch recipes::

    dtutor.pytorch.sharded.model_state.measure([{"strategy": "deepspeed", "zero_stage": 2}, {"strategy": "fsdp"}])
    dtutor.launch.run("dtutor.pytorch.sharded.model_state:measure_model_state", 2,
                      runs=[{"strategy": "deepspeed", "zero_stage": 3, "precision": "bf16"}])
    torchrun --standalone --nproc-per-node=2 -m dtutor.launch dtutor.pytorch.sharded.model_state:measure_model_state \\
        "runs=[{'strategy': 'deepspeed', 'zero_stage': 1}]"
"""

from __future__ import annotations

import gc
from collections.abc import Iterator
from typing import Any

import torch
import torch.distributed as dist
from torch import nn

from dtutor import models, strategies
from dtutor.config import TrainConfig
from dtutor.pytorch.driver import course_optimizer
from dtutor.pytorch.process_group import join_process_group, leave_process_group
from dtutor.pytorch.sharded.storage import Ledger, local_tensor

GRADIENT_HOLDERS = {"averaged_gradients", "grads_in_partition", "grad_partitions_flat_buffer",
                    "_DeepSpeedZeroOptimizer_Stage3__param_id_to_grad_partition"}
BUCKETS = "ipg_buckets"
WALKED = ("deepspeed", "torch.optim", "torch.nn", "torch.distributed.fsdp")  # objects whose attributes are walked
BEFORE_REDUCE, AFTER_BACKWARD = "end of backward, before the reduction", "after backward"


def held_tensors(root: Any) -> Iterator[tuple[tuple[str, ...], torch.Tensor]]:
    """Every tensor reachable from ``root`` through the attributes of DeepSpeed, optimizer, module and FSDP
    objects, lists, tuples and dicts (keys too), and tensors' ``.grad`` and attributes; with the path to it."""
    seen: set[int] = set()
    stack: list[tuple[tuple[str, ...], Any]] = [((), root)]
    while stack:
        path, obj = stack.pop()
        if id(obj) in seen:
            continue
        seen.add(id(obj))
        if isinstance(obj, torch.Tensor):
            yield path, local_tensor(obj)
            children = [("grad", obj.grad)] if obj.is_leaf else []
            children += [(k, v) for k, v in getattr(obj, "__dict__", {}).items()
                         if isinstance(v, torch.Tensor | list | tuple | dict)]
        elif isinstance(obj, dict):
            children = [(str(k), v) for k, v in obj.items()]
            children += [("<key>", k) for k in obj if isinstance(k, torch.Tensor)]
        elif isinstance(obj, list | tuple | set):
            children = [(str(i), v) for i, v in enumerate(obj)]
        elif type(obj).__module__.startswith(WALKED) and hasattr(obj, "__dict__"):
            children = list(vars(obj).items())
        else:
            continue
        stack.extend((path + (name,), child) for name, child in children if child is not None)


def _optimizer_ledger(ledger: Ledger, optimizer: torch.optim.Optimizer, offload: bool) -> None:
    """What the optimizer steps (master weights unless they are the module's own) and its state."""
    for group in optimizer.param_groups:
        for tensor in group["params"]:
            ledger.add("master_weights", tensor)  # the module's own parameters were claimed as parameters first
            ledger.add("host_gradients" if offload else "gradients", tensor.grad)
    for stepped, state in optimizer.state.items():  # ZeRO-3 puts its fp32 partitions in param_groups only to step
        ledger.add("master_weights", stepped if isinstance(stepped, torch.Tensor) else None)
        for value in state.values():
            if isinstance(value, torch.Tensor):
                ledger.add("optimizer_state", value)


def deepspeed_ledger(engine: Any, offload: bool = False) -> Ledger:
    """Every tensor a DeepSpeed engine holds, by role (see the module docstring)."""
    ledger = Ledger()
    for parameter in engine.module.parameters():
        if hasattr(parameter, "ds_tensor"):  # ZeRO-3: its partition, and the whole tensor while gathered
            ledger.add("parameters", parameter.ds_tensor)
            ledger.add("parameters" if getattr(parameter, "ds_persist", False) else "gathered_parameters", parameter)
        else:
            ledger.add("parameters", parameter)
        ledger.add("gradients", parameter.grad)
    inner = getattr(engine.optimizer, "optimizer", engine.optimizer)  # the torch optimizer inside ZeRO's
    if not isinstance(inner, torch.optim.Optimizer):
        raise TypeError(f"cannot find the torch optimizer inside {type(engine.optimizer).__name__}")
    _optimizer_ledger(ledger, inner, offload)
    for path, tensor in held_tensors(engine):
        if BUCKETS in path:
            ledger.add("reduce_bucket", tensor, bucket=True)
        else:
            ledger.add("gradients" if GRADIENT_HOLDERS.intersection(path) else "buffers", tensor)
    return ledger


def fsdp_ledger(model: nn.Module, optimizer: torch.optim.Optimizer) -> Ledger:
    """Every tensor an FSDP model and its optimizer hold: local shards of parameters, gradients and state."""
    ledger = Ledger()
    for parameter in model.parameters():
        ledger.add("parameters", parameter)
        ledger.add("gradients", parameter.grad)
    _optimizer_ledger(ledger, optimizer, offload=False)
    for _, tensor in held_tensors(model):
        ledger.add("buffers", tensor)
    return ledger


RUNS: tuple[dict[str, Any], ...] = (  # the table's configurations: ZeRO 0-3 in fp32 and bf16, offload, FSDP
    *({"strategy": "deepspeed", "zero_stage": stage, "precision": precision}
      for precision in ("fp32", "bf16") for stage in range(4)),
    {"strategy": "deepspeed", "zero_stage": 2, "precision": "bf16", "offload": True},
    {"strategy": "fsdp"},
)
WIDTH, DEPTH = 2048, 4  # wide_mlp(2048, 4): 14,217,226 parameters


def _second_backward(strategy: Any, model: nn.Module, optimizer: Any,
                     batch: tuple[torch.Tensor, torch.Tensor]) -> dict[str, dict]:
    """Forward and backward without a step; the ledger at the moment(s) the module docstring describes."""
    inputs, targets = batch
    if strategy.name != "deepspeed":
        nn.functional.cross_entropy(model(inputs), targets).backward()
        return {AFTER_BACKWARD: fsdp_ledger(model, optimizer).totals()}
    moments, offload = {}, strategy.config.offload
    reduce = model.allreduce_gradients

    def observed(*args: Any, **kwargs: Any) -> Any:
        moments[BEFORE_REDUCE] = deepspeed_ledger(model, offload).totals()
        return reduce(*args, **kwargs)

    model.allreduce_gradients = observed  # this engine only: DeepSpeed's backward calls it to reduce
    try:
        model.backward(nn.functional.cross_entropy(model(inputs.to(strategy.dtype)).float(), targets))
    finally:
        del model.allreduce_gradients
    moments[AFTER_BACKWARD] = deepspeed_ledger(model, offload).totals()
    return moments


def measure_run(run: dict[str, Any], width: int = WIDTH, depth: int = DEPTH, micro_batch: int = 8,
                seed: int = 0, backend: str = "auto") -> dict[str, Any]:
    """This rank's model-state bytes for one configuration (``run``: TrainConfig fields), through its strategy.

    The strategy joins the process group (already joined: reused), wraps ``wide_mlp(width, depth)`` and
    Adam (unless ``run`` names another optimizer), takes one full step, then a forward and backward.
    """
    _, world, _ = join_process_group(backend)
    config = TrainConfig.from_kwargs(**{"optimizer": "adam", "lr": 1e-3, "global_batch": micro_batch * world,
                                        "samples": micro_batch * world, "test_samples": 0, "seed": seed,
                                        "backend": backend, **run})
    strategy = strategies.load(config.strategy)(config)
    strategy.join()
    net = models.seeded(models.wide_mlp, seed, width=width, depth=depth).to(strategy.device)
    count = models.count_parameters(net)
    model, optimizer = strategy.wrap(net, course_optimizer(net.parameters(), config))
    generator = torch.Generator().manual_seed(seed + strategy.rank)
    batch = (torch.randn(micro_batch, 28 * 28, generator=generator).to(strategy.device),
             torch.randint(0, 10, (micro_batch,), generator=generator).to(strategy.device))
    try:
        strategy.train_step(model, optimizer, [batch], nn.functional.cross_entropy)  # optimizer state exists now
        moments = _second_backward(strategy, model, optimizer, batch)
    finally:
        strategy.release()
        del model, optimizer, net
        gc.collect()
    moment = max(moments, key=lambda name: (moments[name]["model_state"], name == AFTER_BACKWARD))
    return {"run": dict(run), "rank": strategy.rank, "ranks": world, "parameter_count": count,
            "moment": moment, "bytes": moments[moment], "moments": moments}


def measure_model_state(runs: list[dict[str, Any]] | None = None, width: int = WIDTH, depth: int = DEPTH,
                        micro_batch: int = 8, seed: int = 0, backend: str = "auto") -> list[list[dict[str, Any]]]:
    """Entry point (one process per rank): for each of ``runs`` (default ``RUNS``), every rank's measurement.

    All runs share one process group; every rank returns the same list (runs, then ranks in order).
    """
    try:
        table = []
        for run in RUNS if runs is None else runs:
            mine = measure_run(run, width, depth, micro_batch, seed, backend)
            everyone: list[Any] = [None] * dist.get_world_size()
            dist.all_gather_object(everyone, mine)
            table.append(everyone)
        return table
    finally:
        leave_process_group()


def measure(runs: list[dict[str, Any]] | None = None, nprocs: int = 2, width: int = WIDTH, depth: int = DEPTH,
            timeout: float = 600.0, quiet: bool = True) -> list[list[dict[str, Any]]]:
    """Launch ``measure_model_state`` on ``nprocs`` ranks (torchrun, gloo on CPUs); its result, from rank 0."""
    from dtutor import launch

    runs = list(RUNS if runs is None else runs)
    for run in runs:  # a bad field is refused here, before any process starts
        TrainConfig.from_kwargs(**{"optimizer": "adam", **run})
    return launch.run("dtutor.pytorch.sharded.model_state:measure_model_state", nprocs, timeout=timeout, quiet=quiet,
                      runs=runs, width=width, depth=depth)[0]
