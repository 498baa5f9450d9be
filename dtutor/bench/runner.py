"""The entry point the PyTorch workers of ``python -m dtutor.bench all`` run: ``run_cases`` (see ``probe``).

Launch recipe (what the benchmark starts; each case is a dict of ``TrainConfig`` fields)::

    torchrun --standalone --nproc-per-node=2 -m dtutor.launch dtutor.bench.runner:run_cases \\
        "cases=[{'name': 'ddp', 'fields': {'strategy': 'ddp', 'global_batch': 128, 'samples': 512, 'epochs': 2}}]"
"""

from __future__ import annotations

import importlib
import os
import time
import traceback
from typing import Any

import torch

from dtutor import strategies
from dtutor.bench.probe import CollectiveCounter, model_state_bytes, optimizer_chain
from dtutor.bench.theory import wire_factor
from dtutor.config import TrainConfig
from dtutor.pytorch.strategy import Strategy

HOROVOD_KNOBS = ("HOROVOD_CYCLE_TIME", "HOROVOD_FUSION_THRESHOLD", "HOROVOD_CACHE_CAPACITY", "HOROVOD_THREAD_AFFINITY")


class Probe:
    """Watches one strategy instance through ``fit``: bytes and model state in the steps numbered
    ``window[0]`` to ``window[1] - 1`` (of the warm-up epoch), CPU and wall clock at every step."""

    def __init__(self, strategy: Strategy, window: tuple[int, int]):
        self.strategy, self.window = strategy, window
        self.steps = 0
        self.clock: list[tuple[float, float, float, float, float, float]] = []  # start and end of each step
        self.memory: dict[str, int] = {}
        self.counter: CollectiveCounter | None = None
        self.horovod_bytes = 0
        self.module: torch.nn.Module | None = None
        self.optimizers: list[Any] = []
        wrap, step = strategy.wrap, strategy.train_step
        strategy.wrap = lambda model, optimizer: self._wrapped(*wrap(model, optimizer))
        strategy.train_step = lambda *args: self._step(step, *args)

    def _wrapped(self, model: torch.nn.Module, optimizer: Any) -> tuple[torch.nn.Module, Any]:
        self.module, self.optimizers = self.strategy.unwrap(model), optimizer_chain(optimizer)
        for each in self.optimizers:
            each.step = self._measuring(each.step)
        if self.strategy.name == "horovod":
            self._count_horovod()
        return model, optimizer

    def _measuring(self, step):
        def measured(*args, **kwargs):
            self._measure_memory()
            out = step(*args, **kwargs)
            self._measure_memory()
            return out
        return measured

    @property
    def counting(self) -> bool:
        """Whether the current step is one whose bytes and model state are measured."""
        return self.window[0] <= self.steps < self.window[1]

    def _measure_memory(self) -> None:
        if self.counting and self.module is not None:
            now = model_state_bytes(self.module, self.optimizers)
            if sum(now.values()) > sum(self.memory.values()):
                self.memory = now

    def _count_horovod(self) -> None:
        """Horovod's collectives are its own C++ operations: count what its optimizer hands them."""
        from horovod.torch import optimizer as hvd_optimizer

        originals = {name: getattr(hvd_optimizer, name) for name in ("allreduce_async_", "grouped_allreduce_async_")}

        def counted(name):
            def call(tensor, *args, **kwargs):
                if self.counting:
                    self.horovod_bytes += sum(t.numel() * t.element_size() for t in
                                              (tensor if isinstance(tensor, list | tuple) else [tensor]))
                return originals[name](tensor, *args, **kwargs)
            return call

        for name in originals:
            setattr(hvd_optimizer, name, counted(name))

    def _step(self, step, *args):
        counting = self.counting and self.strategy.world_size > 1
        if counting and self.counter is None:
            self.counter = CollectiveCounter(self.strategy.world_size)
        start = (time.perf_counter(), time.process_time(), time.thread_time())
        if counting:
            with self.counter:
                totals = step(*args)
        else:
            totals = step(*args)
        self.clock.append((*start, time.perf_counter(), time.process_time(), time.thread_time()))
        self.steps += 1
        return totals


    def facts(self, steps_per_epoch: int) -> dict[str, Any]:
        """What was measured: bytes per step, model state, CPU per timed step (after the first epoch)."""
        counted = max(1, min(self.steps, self.window[1]) - self.window[0])
        found: dict[str, Any] = {"model_state": self.memory, "model_state_bytes": sum(self.memory.values())}
        world = self.strategy.world_size
        if self.strategy.name == "horovod":
            found["bytes_per_step"] = self.horovod_bytes * wire_factor("all_reduce", world) / counted
            found["collectives"] = {"all_reduce": self.horovod_bytes / counted}
        elif self.counter is not None:
            found["bytes_per_step"] = self.counter.wire_bytes() / counted
            found["collectives"] = {k: v / counted for k, v in self.counter.bytes.items()}
            found["calls_per_step"] = {k: v / counted for k, v in self.counter.calls.items()}
            found["unknown_collectives"] = sorted(self.counter.unknown)
        else:
            found["bytes_per_step"] = 0.0
        timed = self.clock[steps_per_epoch:]
        if timed:
            wall, cpu, main = (timed[-1][3 + i] - timed[0][i] for i in range(3))
            found.update(wall_per_step=wall / len(timed), cpu_per_step=cpu / len(timed),
                         main_thread_cpu_per_step=main / len(timed))
        return found


def implementation(case: dict[str, Any], strategy: str) -> type:
    """The case's strategy class: the registry's, or ``case["implementation"]`` ("module:Class", a variant)."""
    if "implementation" not in case:
        return strategies.load(strategy)
    module_name, _, class_name = case["implementation"].partition(":")
    return getattr(importlib.import_module(module_name), class_name)


def count_window(steps_per_epoch: int, count_steps: int) -> tuple[int, int]:
    """The warm-up epoch's steps to count: the last ``count_steps``, after the first two where possible
    (DDP rebuilds its buckets and the optimizer creates its state in the first steps)."""
    first = min(2, max(0, steps_per_epoch - count_steps))
    return first, min(steps_per_epoch, first + count_steps)


def run_case(case: dict[str, Any], count_steps: int) -> dict[str, Any]:
    """Train one case through the driver with a ``Probe``; its measurements (and the parameters on rank 0)."""
    from dtutor.pytorch import fit

    config = TrainConfig.from_kwargs(**case["fields"])
    instance = implementation(case, config.strategy)(config)
    window = count_window(config.steps_per_epoch(), count_steps) if case.get("probe") else (0, 0)
    probe = Probe(instance, window)
    result = fit(config, strategy=instance)
    return {"name": case["name"], "rank": result.rank, "world_size": result.world_size,
            "samples_per_s": result.samples_per_second(), "epochs": [e.samples_per_second for e in result.epochs],
            "parameters": result.parameters if result.rank == 0 else None,
            "environment": {k: os.environ[k] for k in HOROVOD_KNOBS if k in os.environ},
            **probe.facts(config.steps_per_epoch())}


def run_cases(cases: list[dict[str, Any]], count_steps: int = 2) -> list[dict[str, Any]]:
    """Entry point (every rank): each case trained and measured in turn (module docs); one dict per case.
    Bytes and model state are counted only in cases marked ``"probe": True`` (the timed runs stay unwatched).

    Under torchrun the process group is joined once for all cases (``launch.training.fit_in_turn``); a case that
    fails is reported as ``{"name": ..., "error": ...}`` and the next one runs.
    """
    from dtutor.launch.training import fit_in_turn

    distributed = "TORCHELASTIC_RUN_ID" in os.environ

    def measured(case: dict[str, Any]) -> dict[str, Any]:
        if distributed:
            torch.distributed.barrier()
        try:
            return run_case(case, count_steps)
        except Exception as error:  # noqa: BLE001 - reported, and the next case runs
            traceback.print_exc()
            return {"name": case["name"], "error": f"{type(error).__name__}: {error}"[:500]}

    backend = next(iter(cases), {}).get("fields", {}).get("backend", "auto") if distributed else ""
    return fit_in_turn(cases, measured, group_backend=backend)
