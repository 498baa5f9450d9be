"""``train(nprocs, strategy=..., ...)``: one call that trains with any strategy in ``dtutor.strategies``.

The fields are ``dtutor.config.TrainConfig`` fields. They are checked here, in the caller, before anything
starts: the values (``ConfigError``, naming the field), the batch arithmetic for the world size, the process
counts, and the torch backend (``auto`` is resolved here, so the printed command shows the real one). Then
the strategy's launcher runs the framework's training driver:

- ``torchrun``: ``run("dtutor.pytorch.driver:train", nprocs, nnodes=...)``;
- ``horovodrun``: ``run_horovod`` with the PyTorch or the TensorFlow driver;
- ``tf_workers``: ``run_tf_workers("dtutor.tf.driver:train", nprocs)``;
- ``inprocess``: the driver is called in this process (``nprocs`` = replicas for TensorFlow's mirrored).

``train_many(nprocs, [fields, ...])`` trains several runs in turn in ONE launch (``train_in_turn`` on every rank:
the process group is joined once, each run goes through the driver, the group is left once): a launch costs
seconds of starting Python, importing torch and joining, often more than a small run itself.
"""

from __future__ import annotations

import contextlib
import importlib
import io
import os
from collections.abc import Callable, Iterator, Sequence
from typing import TYPE_CHECKING, Any

from dtutor import data
from dtutor.config import ConfigError, TrainConfig, check_world, choose_backend
from dtutor.launch.commands import DRIVERS, check_count
from dtutor.launch.runners import run, run_horovod, run_tf_workers
from dtutor.pytorch.sharded.deepspeed_config import deepspeed_config
from dtutor.strategies import STRATEGIES, StrategyInfo

if TYPE_CHECKING:
    from dtutor.result import RunResult

IN_TURN = "dtutor.launch.training:train_in_turn"

@contextlib.contextmanager
def quietly() -> Iterator[None]:
    """Run as a launched worker does: no progress bar (``TQDM_DISABLE=1``) and no printed lines."""
    before = os.environ.get("TQDM_DISABLE")
    os.environ["TQDM_DISABLE"] = "1"
    try:
        with contextlib.redirect_stdout(io.StringIO()):
            yield
    finally:
        if before is None:
            del os.environ["TQDM_DISABLE"]
        else:
            os.environ["TQDM_DISABLE"] = before


def _check_placement(info: StrategyInfo, nprocs: int, nnodes: int) -> None:
    """Refuse process counts the strategy's launcher cannot give (``ValueError`` naming the count)."""
    check_count("nprocs", nprocs)
    check_count("nnodes", nnodes)
    if nnodes > 1 and info.launcher != "torchrun":
        raise ValueError(f"nnodes: {info.name!r} runs on one machine ({info.launcher}); "
                         f"use nnodes=1, got {nnodes}")
    if info.launcher == "inprocess" and info.framework == "torch" and nprocs != 1:
        raise ValueError(f"nprocs: {info.name!r} runs in this one process; use nprocs=1, got {nprocs}")


def prepare(nprocs: int, nnodes: int, fields: dict[str, Any]) -> TrainConfig:
    """The validated config for ``nprocs`` x ``nnodes`` ranks, with a concrete torch backend."""
    config = TrainConfig.from_kwargs(**fields)
    info = STRATEGIES[config.strategy]
    _check_placement(info, nprocs, nnodes)
    world_size = nprocs * nnodes
    check_world(config, world_size, info.layout)
    if config.samples > (data.split_size("train") or config.samples):  # the course's data (None: not known yet)
        raise ConfigError(f"samples: {config.samples} asked for, but the training data has {data.split_size()}")
    if info.framework == "torch":  # TensorFlow strategies do not use it: keep torch out of their callers
        config = config.replace(backend=choose_backend(config.backend, nprocs))
    if info.name == "deepspeed":  # e.g. fp16 without GPUs, or SGD through a resharded ZeRO-3 checkpoint: refused here
        from dtutor.pytorch.sharded.deepspeed_zero import reshards  # torch: DeepSpeed's callers have it anyway

        deepspeed_config(config, world_size, "cuda" if config.backend == "nccl" else "cpu")
        reshards(config, world_size)
    return config


def _run_in_process(config: TrainConfig, framework: str, replicas: int) -> list[RunResult]:
    """Call the framework's driver here; TensorFlow's gets ``replicas`` (MirroredStrategy's devices)."""
    module_name, _, function_name = DRIVERS[framework].partition(":")
    driver = getattr(importlib.import_module(module_name), function_name)
    if framework == "tensorflow":
        return [driver(replicas=replicas, **config.as_dict())]
    return [driver(**config.as_dict())]


def train(
    nprocs: int = 1,
    *,
    nnodes: int = 1,
    timeout: float = 300.0,
    quiet: bool = False,
    threads_per_rank: int | None = None,
    max_restarts: int = 0,
    **fields: Any,
) -> list[RunResult]:
    """Train with ``fields["strategy"]`` on ``nprocs`` processes per node; return each rank's ``RunResult``.

    ``fields`` are ``TrainConfig`` fields (strategy, model, global_batch, epochs, lr, ...), all checked
    before any process starts. ``nnodes > 1`` (torchrun strategies only) simulates that many machines
    here. In-process strategies return one result: PyTorch's need ``nprocs=1``; TensorFlow's mirrored
    uses ``nprocs`` replicas. ``timeout``, ``quiet`` and ``threads_per_rank`` apply to launched processes
    (see ``run``); an in-process run has no timeout, and ``quiet`` hides what it prints. ``max_restarts``
    (torchrun strategies only): torchrun restarts every rank after a failure, up to that many times; with a
    ``checkpoint`` the restarted ranks resume after its epoch (``dtutor.failures.elastic``).
    """
    config = prepare(nprocs, nnodes, fields)
    info = STRATEGIES[config.strategy]
    check_count("max_restarts", max_restarts, minimum=0)
    if max_restarts and info.launcher != "torchrun":
        raise ValueError(f"max_restarts: {info.name!r} runs under {info.launcher}, which restarts nothing; "
                         f"only torchrun strategies restart (use max_restarts=0), got {max_restarts}")
    options = {"timeout": timeout, "quiet": quiet, "threads_per_rank": threads_per_rank}
    if info.launcher == "torchrun":
        return run(DRIVERS["torch"], nprocs, nnodes=nnodes, max_restarts=max_restarts, **options,
                   **config.as_arguments())
    if info.launcher == "horovodrun":
        return run_horovod(DRIVERS[info.framework], nprocs, framework=info.framework, **options,
                           **config.as_arguments())
    if info.launcher == "tf_workers":
        return run_tf_workers(DRIVERS["tensorflow"], nprocs, **options, **config.as_arguments())
    if info.launcher == "inprocess":
        with quietly() if quiet else contextlib.nullcontext():
            return _run_in_process(config, info.framework, nprocs)
    raise AssertionError(f"strategy {info.name!r} has an unknown launcher {info.launcher!r}")


def fit_in_turn(runs: Sequence[dict[str, Any]], fit_one: Callable[[dict[str, Any]], Any],
                group_backend: str = "") -> list[Any]:
    """Every rank: ``fit_one(run)`` for each run in turn. With ``group_backend`` (under torchrun) the process group is
    joined once before the first run and left once after the last (also on an error): each strategy finds it
    joined and leaves it in place (``ProcessGroupStrategy.owns_group``). Without (horovodrun), each run's strategy
    joins and leaves on its own."""
    from dtutor.pytorch.process_group import join_process_group, leave_process_group

    if group_backend:
        join_process_group(group_backend)
    try:
        return [fit_one(run) for run in runs]
    finally:
        if group_backend:
            leave_process_group()


def train_in_turn(runs: Sequence[dict[str, Any]], group_backend: str = "") -> list[RunResult]:
    """Entry point of ``train_many`` (every rank): the PyTorch driver trains each run (``TrainConfig`` fields) in
    turn (``fit_in_turn``); this rank's ``RunResult`` per run."""
    from dtutor.pytorch.driver import train as driver

    return fit_in_turn(runs, lambda fields: driver(**fields), group_backend)


def train_many(
    nprocs: int,
    runs: Sequence[dict[str, Any]],
    *,
    timeout: float = 300.0,
    quiet: bool = False,
    threads_per_rank: int | None = None,
) -> list[list[RunResult]]:
    """Train each of ``runs`` (``TrainConfig`` fields, each checked here as ``train`` checks them) in turn, in one
    launch of ``nprocs`` processes; per run, every rank's ``RunResult``.

    The runs share a launcher: torchrun (with one backend) or horovodrun (PyTorch's Horovod). A run that
    resumes from another's checkpoint belongs in a later launch: resuming in a fresh process is what it proves.
    ``timeout`` (for the whole launch), ``quiet`` and ``threads_per_rank`` as for ``train``.
    """
    configs = [prepare(nprocs, 1, fields) for fields in runs]
    launchers = {(STRATEGIES[c.strategy].launcher, STRATEGIES[c.strategy].framework) for c in configs}
    backends = {c.backend for c in configs}
    if not configs or len(launchers) != 1 or len(backends) != 1 or \
            launchers - {("torchrun", "torch"), ("horovodrun", "torch")}:
        raise ValueError(f"runs: one or more runs, all under torchrun with one backend or all PyTorch under "
                         f"horovodrun; got {sorted(launchers)} with backends {sorted(backends)}")
    options = {"timeout": timeout, "quiet": quiet, "threads_per_rank": threads_per_rank,
               "runs": [config.as_arguments() for config in configs]}
    if launchers == {("torchrun", "torch")}:
        per_rank = run(IN_TURN, nprocs, group_backend=configs[0].backend, **options)
    else:
        per_rank = run_horovod(IN_TURN, nprocs, framework="torch", **options)
    return [[results[index] for results in per_rank] for index in range(len(configs))]
