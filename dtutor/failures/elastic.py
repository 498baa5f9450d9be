"""Elastic restart: a rank is killed mid-training, torchrun restarts the whole group, training resumes.

``torchrun --max-restarts=N`` (``launch.run``/``launch.train``'s ``max_restarts``) watches its workers: when one
dies, it stops the others and starts every rank again, up to N times, on a new c10d rendezvous
(``--standalone`` is one on a free local port). A restarted worker is a fresh process: it knows it is a restart
only from ``TORCHELASTIC_RESTART_COUNT`` (0 on the first attempt). What it trained before is lost unless it was
saved: the course's driver writes a ``checkpoint`` after every epoch and resumes from it, so the restarted
ranks carry on after the last saved epoch and end bitwise equal to a run that was never broken. Without a
checkpoint, the restart trains from epoch 0 again.

``train_through_crash(2, crash_at_epoch=1, checkpoint=path, epochs=3, ...)`` launches the course's driver with
``max_restarts`` and one injected crash (``kill_at_step``: rank ``crash_rank`` kills itself with SIGKILL, as the
kernel's out-of-memory killer would, at the first step of epoch ``crash_at_epoch``, on the first attempt only);
it returns a ``RestartReport``: how many restarts happened, from which epoch the last attempt trained, and
every rank's ``RunResult``.
"""

from __future__ import annotations

import os
import signal
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from dtutor import strategies
from dtutor.config import TrainConfig
from dtutor.launch.commands import check_count
from dtutor.launch.runners import run
from dtutor.launch.training import prepare
from dtutor.launch.worker import restart_count
from dtutor.result import RunResult

CRASHING_ENTRY = "dtutor.failures.elastic:train_killed_once"


def kill_at_step(strategy: Any, rank: int, step: int) -> None:
    """The crash hook: rank ``rank`` of ``strategy`` kills itself (SIGKILL: no exception, no cleanup, no report)
    when its ``step``-th optimizer step (counted from 1) starts; the other ranks are then waiting for it."""
    train_step = strategy.train_step
    steps = 0

    def train_step_or_die(*args: Any, **kwargs: Any) -> Any:
        nonlocal steps
        steps += 1
        if steps == step and strategy.rank == rank:
            print(f"killed with SIGKILL at the start of its optimizer step {step}", flush=True)
            sys.stderr.flush()
            os.kill(os.getpid(), signal.SIGKILL)
        return train_step(*args, **kwargs)

    strategy.train_step = train_step_or_die


def train_killed_once(crash_at_epoch: int, crash_rank: int = 1, **fields: Any) -> RunResult:
    """Entry point (every rank): the course's driver (``fit``) on ``TrainConfig`` ``fields``, in which rank
    ``crash_rank`` is killed at the first step of epoch ``crash_at_epoch`` on the first attempt only (a first
    attempt starts at epoch 0: ``train_through_crash`` refuses a checkpoint that exists). The result's
    ``details["restarts"]`` is this attempt's restart count."""
    from dtutor.pytorch.driver import fit  # here: the caller's side imports no torch

    config = TrainConfig.from_kwargs(**fields)
    strategy = strategies.load(config.strategy)(config)
    if restart_count() == 0:
        kill_at_step(strategy, crash_rank, crash_at_epoch * config.steps_per_epoch() + 1)
    result = fit(config, strategy=strategy)
    result.details["restarts"] = restart_count()
    return result


@dataclass
class RestartReport:
    """What a launch through one crash did (``train_through_crash``)."""

    crash_rank: int  # the rank that was killed
    crash_at_epoch: int  # ... at the first step of this epoch, on the first attempt
    restarts: int  # how many times torchrun restarted the group
    resumed_from_epoch: int  # the first epoch the finishing attempt trained (0: it started over)
    epochs: list[int]  # the epochs the finishing attempt trained
    checkpoint: str | None
    results: list[RunResult]  # every rank's result, from the finishing attempt

    def summary(self) -> str:
        """One line for people: who was killed when, how many restarts, where training resumed."""
        trained = f"epochs {self.epochs[0]}-{self.epochs[-1]}" if len(self.epochs) > 1 else f"epoch {self.epochs[0]}"
        if self.resumed_from_epoch == 0:
            how = "started over" + ("" if self.checkpoint is None else " (no epoch had been saved)")
        else:
            how = f"resumed from the checkpoint of epoch {self.resumed_from_epoch - 1}"
        return (f"rank {self.crash_rank} was killed in epoch {self.crash_at_epoch}; torchrun restarted all "
                f"{len(self.results)} ranks {self.restarts} time(s); they trained {trained}: {how}")


def _check_crash(config: TrainConfig, nprocs: int, crash_at_epoch: int, crash_rank: int) -> None:
    """Refuse a crash that cannot happen as asked (``ValueError`` naming the argument)."""
    info = strategies.STRATEGIES[config.strategy]
    if info.launcher != "torchrun":
        raise ValueError(f"strategy: {config.strategy!r} runs under {info.launcher}; an elastic restart needs a "
                         "torchrun strategy (ddp, fsdp, deepspeed, the pipelines, ...)")
    last_epoch = min(config.epochs, config.stop_after_epochs or config.epochs)
    check_count("crash_at_epoch", crash_at_epoch, minimum=0)
    if crash_at_epoch >= last_epoch:
        raise ValueError(f"crash_at_epoch: the run trains epochs 0-{last_epoch - 1}, got {crash_at_epoch}")
    check_count("crash_rank", crash_rank, minimum=0)
    if crash_rank >= nprocs:
        raise ValueError(f"crash_rank: the ranks are 0-{nprocs - 1}, got {crash_rank}")
    if config.checkpoint is not None and Path(config.checkpoint).exists():
        raise ValueError(f"checkpoint: {config.checkpoint} exists already, so the first attempt would resume "
                         "from it; give a new file")


def train_through_crash(
    nprocs: int = 2,
    *,
    crash_at_epoch: int = 1,
    crash_rank: int = 1,
    max_restarts: int = 1,
    timeout: float = 120.0,
    quiet: bool = False,
    **fields: Any,
) -> RestartReport:
    """Train ``fields`` (``TrainConfig``, a torchrun strategy) on ``nprocs`` ranks under ``torchrun
    --max-restarts=max_restarts``, with rank ``crash_rank`` killed at the first step of epoch ``crash_at_epoch``.

    Everything is checked before any process starts. ``timeout`` covers every attempt; with ``max_restarts=0``
    the crash ends the launch (``LaunchError``). Output is streamed as ``launch.run`` streams it (``quiet``
    hides it), torchrun's lines about the failure and the restart included.
    """
    config = prepare(nprocs, 1, fields)
    _check_crash(config, nprocs, crash_at_epoch, crash_rank)
    results = run(CRASHING_ENTRY, nprocs, max_restarts=max_restarts, timeout=timeout, quiet=quiet,
                  crash_at_epoch=crash_at_epoch, crash_rank=crash_rank, **config.as_arguments())
    epochs = [stats.epoch for stats in results[0].epochs]
    return RestartReport(crash_rank, crash_at_epoch, results[0].details["restarts"], epochs[0] if epochs else 0,
                         epochs, config.checkpoint, results)
