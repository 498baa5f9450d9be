"""DeepSpeed as a strategy: ``deepspeed.initialize`` wraps the model and the driver's optimizer in an engine.

What it changes (joining and collectives are ``process_group.ProcessGroupStrategy``'s):
- join: DeepSpeed's CPU accelerator when there is no GPU (``DS_ACCELERATOR=cpu``), then the usual process
  group, which ``deepspeed.initialize`` finds and reuses;
- wrap: the engine, configured by ``deepspeed_config`` (ZeRO stage, offload, precision, batch sizes, no
  clipping), around the driver's own optimizer, which ZeRO partitions;
- train_step: ``engine(x)``, ``engine.backward(loss)``, ``engine.step()`` for every micro-batch: the engine
  divides the loss by the accumulation steps itself and steps the optimizer at the group's last one;
- full_state_dict: ZeRO-3 keeps 1/N of each parameter per rank; ``GatheredParameters`` gathers them;
- save/load_checkpoint: ``engine.save_checkpoint``/``load_checkpoint`` (every rank writes its partitions
  into the checkpoint folder), with the epoch and the random generators as client state; a checkpoint written by
  another number of ranks is first converted (rank 0, ``to_universal``) into DeepSpeed's universal checkpoint, one
  file per parameter and state, which the engine (``"checkpoint": {"load_universal": true}``) cuts for its ranks;
- release: the engine goes before the process group does (torch 2.13 + gloo aborts at exit otherwise).

Launch recipes::

    dtutor.launch.train(2, strategy="deepspeed", zero_stage=2, optimizer="adam", lr=1e-3)
    torchrun --standalone --nproc-per-node=2 -m dtutor.launch dtutor.pytorch.driver:train \\
        strategy=deepspeed zero_stage=2
    # DeepSpeed's own launcher (it adds --local_rank=N, which the worker accepts); one machine, 2 ranks:
    deepspeed --num_gpus 2 --module dtutor.launch dtutor.pytorch.driver:train strategy=deepspeed zero_stage=3
    # two machines: a hostfile with one line per machine ("HOST slots=4"), run on the first one
    deepspeed --hostfile hostfile --num_nodes 2 --num_gpus 4 --module dtutor.launch \\
        dtutor.pytorch.driver:train strategy=deepspeed zero_stage=3 backend=nccl precision=bf16
"""

from __future__ import annotations

import argparse
import contextlib
import io
import logging
import os
import sys
import tempfile
import warnings
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch
from torch import nn

from dtutor.config import ConfigError, TrainConfig
from dtutor.pytorch import checkpoint
from dtutor.pytorch.process_group import ProcessGroupStrategy
from dtutor.pytorch.sharded.deepspeed_config import deepspeed_config
from dtutor.pytorch.strategy import Batch, LossFn, StepTotals, add, totals_of

DTYPES = {"fp32": torch.float32, "bf16": torch.bfloat16, "fp16": torch.float16}


def deepspeed_environment() -> None:
    """Before DeepSpeed is imported: its CPU accelerator where there is no GPU, and its compiled helpers
    (built once, about 20 s) cached inside the virtual environment rather than the home folder, built by the
    environment's own ``ninja`` wherever the process runs. Another ``ninja`` on ``PATH`` (the system's, where the
    environment is not activated: a Slurm job puts it first, a local launch not) hashes the same build commands
    differently, and each switch between the two rebuilt the helper (about 30 s)."""
    if not torch.cuda.is_available():
        os.environ.setdefault("DS_ACCELERATOR", "cpu")
    os.environ.setdefault("TORCH_EXTENSIONS_DIR", str(Path(sys.prefix) / "torch_extensions"))
    scripts = Path(sys.executable).parent
    path = os.environ.get("PATH", "")
    if (scripts / "ninja").exists() and path.split(os.pathsep)[0] != str(scripts):
        os.environ["PATH"] = os.pathsep.join([str(scripts), path])


def prebuild() -> None:
    """Compile (once) the helper DeepSpeed's CPU communication backend loads at start-up, so no launch waits.

    The compiler's and DeepSpeed's own probes write to the process's file descriptors directly (e.g. a
    failed link test for the optional ``libaio``); they are shown only if the build fails.
    """
    deepspeed_environment()
    with tempfile.TemporaryFile(mode="w+") as log:
        saved = [os.dup(1), os.dup(2)]
        sys.stdout.flush()
        sys.stderr.flush()
        os.dup2(log.fileno(), 1)
        os.dup2(log.fileno(), 2)
        try:
            from deepspeed.comm.torch import build_shm_op

            build_shm_op()
        except Exception:
            log.seek(0)
            failure = log.read()
            raise RuntimeError(f"DeepSpeed's CPU helper did not compile:\n{failure[-3000:]}") from None
        finally:
            sys.stdout.flush()
            sys.stderr.flush()
            os.dup2(saved[0], 1)
            os.dup2(saved[1], 2)
            os.close(saved[0])
            os.close(saved[1])


def step_folder(folder: str | Path) -> Path | None:
    """The step folder (``global_stepN``) that the checkpoint folder's file ``latest`` names; None if none."""
    latest = Path(folder) / "latest"
    return Path(folder) / latest.read_text().strip() if latest.exists() else None


def saved_world_size(folder: str | Path) -> int | None:
    """How many ranks wrote the checkpoint the folder's ``latest`` names (one optimizer file each); None if none."""
    step = step_folder(folder)
    return None if step is None else len(list(step.glob("*_optim_states.pt")))


def to_universal(folder: str | Path) -> Path:
    """Convert the checkpoint ``latest`` names into a universal one beside it (``<tag>_universal``, named by the
    file ``latest_universal``) with DeepSpeed's ``ds_to_universal``: each parameter's fp32 values and Adam moments
    whole, in a file of its own, for any number of ranks to cut. DeepSpeed 0.19.8 converts a ZeRO-3 optimizer's
    state only if it is Adam's (``exp_avg``, ``exp_avg_sq``): SGD's momentum has no place in it."""
    from deepspeed.checkpoint.ds_to_universal import main

    step = step_folder(folder)
    if step is None:
        raise FileNotFoundError(f"no DeepSpeed checkpoint in {folder}: its file 'latest' is missing")
    output = step.with_name(f"{step.name}_universal")
    arguments = argparse.Namespace(input_folder=str(step), output_folder=str(output), num_extract_workers=1,
                                   num_merge_workers=1, keep_temp_folder=False, strict=True,
                                   inject_missing_state=False)
    with contextlib.redirect_stdout(io.StringIO()):
        main(arguments)
    return output


def reshards(config: TrainConfig, world_size: int) -> bool:
    """Whether ``config`` resumes a ZeRO-3 run from a checkpoint that another number of ranks wrote (at stages 1-2
    the engine itself refuses one). Such a load goes through DeepSpeed's universal checkpoint, which keeps Adam's
    state only: any other optimizer is refused (``ConfigError`` naming the field), before the launch too."""
    saved = saved_world_size(config.checkpoint) if config.checkpoint and config.zero_stage == 3 else None
    if saved in (None, world_size):
        return False
    if config.optimizer != "adam":
        raise ConfigError(f"optimizer: a ZeRO-3 checkpoint saved by {saved} ranks loads on {world_size} through "
                          "DeepSpeed's universal checkpoint, which keeps Adam's state only; use optimizer='adam'")
    return True


class DeepSpeedZeRO(ProcessGroupStrategy):
    """DeepSpeed's engine with ZeRO stage ``config.zero_stage``."""

    name = "deepspeed"
    engine: Any = None

    def join(self) -> None:
        """Select DeepSpeed's accelerator, then join the process group torchrun (or ``deepspeed``) describes."""
        deepspeed_environment()
        super().join()

    @property
    def dtype(self) -> torch.dtype:
        """The precision the engine computes in (its inputs must match)."""
        return DTYPES[self.config.precision]

    def wrap(self, model: nn.Module, optimizer: Any) -> tuple[nn.Module, Any]:
        """``deepspeed.initialize`` with the configuration ``deepspeed_config`` builds.

        Kept off the screen: its "built successfully" line at every start, its warning that ZeRO partitions
        an optimizer DeepSpeed did not write (``torch.optim``'s: the point, here), and torch's deprecation
        warnings about the collectives DeepSpeed 0.19 calls.
        """
        import deepspeed

        settings = deepspeed_config(self.config, self.world_size, self.device.type)
        if self._resharding():
            settings["checkpoint"] = {"load_universal": True}
        warnings.filterwarnings("ignore", message=r".*torch\.distributed\.\w+` is deprecated", category=FutureWarning)
        level = deepspeed.utils.logger.level
        deepspeed.utils.logger.setLevel(logging.ERROR)
        try:
            with contextlib.redirect_stdout(io.StringIO()):
                self.engine, ds_optimizer, _, _ = deepspeed.initialize(model=model, optimizer=optimizer,
                                                                       config=settings)
        finally:
            deepspeed.utils.logger.setLevel(level)
        return self.engine, ds_optimizer

    def _resharding(self) -> bool:
        """Whether the run resumes from a ZeRO-3 checkpoint written by another number of ranks; if so, rank 0
        converts it to a universal checkpoint while the others wait."""
        if not reshards(self.config, self.world_size):
            return False
        if self.rank == 0:
            to_universal(self.config.checkpoint)
        torch.distributed.barrier()
        return True

    def _forward(self, engine: nn.Module, inputs: torch.Tensor) -> torch.Tensor:
        if inputs.is_floating_point():
            inputs = inputs.to(self.dtype)
        return engine(inputs).float()  # the loss and metrics in fp32

    def train_step(self, model: nn.Module, optimizer: Any, micro_batches: Sequence[Batch],
                   loss_fn: LossFn) -> StepTotals:
        """Every micro-batch: forward, ``engine.backward``, ``engine.step`` (which steps at the last one)."""
        totals = None
        for inputs, targets in micro_batches:
            outputs = self._forward(model, inputs)
            loss = loss_fn(outputs, targets)
            model.backward(loss)
            model.step()
            totals = add(totals, totals_of(outputs, targets, loss))
        return totals

    @torch.no_grad()
    def eval_step(self, model: nn.Module, batch: Batch, loss_fn: LossFn) -> StepTotals:
        """Forward through the engine (at ZeRO-3 every rank gathers each layer's parameters together)."""
        inputs, targets = batch
        outputs = self._forward(model, inputs)
        return totals_of(outputs, targets, loss_fn(outputs, targets))

    def full_state_dict(self, model: nn.Module) -> dict[str, torch.Tensor]:
        """The whole model on every rank: at ZeRO-3 each parameter is gathered from its partitions."""
        import deepspeed

        module = self.unwrap(model)
        if self.config.zero_stage < 3:
            return {k: v.detach().clone() for k, v in module.state_dict().items()}
        with deepspeed.zero.GatheredParameters(list(module.parameters())):
            return {k: v.detach().clone() for k, v in module.state_dict().items()}

    def save_checkpoint(self, path: str, model: nn.Module, optimizer: Any, epoch: int) -> None:
        """``engine.save_checkpoint`` into the folder ``path``: every rank writes its own partitions into a
        sub-folder named after the step, then rank 0 names that one in the file ``latest``."""
        model.save_checkpoint(path, client_state={"epoch": epoch, "rng": checkpoint.rng_state()})

    def load_checkpoint(self, path: str, model: nn.Module, optimizer: Any) -> int | None:
        """``engine.load_checkpoint`` from the folder ``path`` (the universal one ``latest_universal`` names when
        ``wrap`` converted it); None when there is nothing to resume."""
        if not (Path(path) / "latest").exists():
            return None
        _, client_state = model.load_checkpoint(path)  # the sub-folder ``latest`` (or ``latest_universal``) names
        checkpoint.set_rng_state(client_state["rng"])
        return client_state["epoch"]

    def release(self) -> None:
        """Drop the engine (and its hooks and buffers) before the process group goes."""
        if self.engine is not None:
            self.engine.destroy()
        self.engine = None
