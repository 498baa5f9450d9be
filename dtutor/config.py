"""One training configuration for every strategy, PyTorch and TensorFlow, validated before any process starts.

``TrainConfig(**fields)`` checks every field's type and range when it is created; ``check_world`` checks the
batch arithmetic for a world size. Both raise ``ConfigError`` (a ``ValueError``) whose message starts with the
field's name, so a bad value is refused in the caller's process, never inside a worker. This module imports
neither torch nor TensorFlow: the TensorFlow workers use the same rules (``choose_backend``, which resolves a
torch backend for the caller and for every torch worker, imports torch when called).

The batch arithmetic, the same for every strategy:

    global_batch = micro-batch per rank x accumulation x data-parallel ranks
    data-parallel ranks = the data dimension of the strategy's layout (dtutor.layout): every rank for DDP,
    1 for a pipeline (every stage reads the batch, cut into micro_batches pieces) or tensor parallelism
    an epoch     = samples // global_batch optimizer steps (the remainder of the samples is not used)
"""

from __future__ import annotations

import difflib
import math
from dataclasses import asdict, dataclass, fields
from typing import Any

from dtutor.layout import Layout, LayoutError, Mesh
from dtutor.models import MODEL_SHAPES, MODELS
from dtutor.strategies import STRATEGIES

MODEL_NAMES = tuple(MODELS)  # PyTorch has every model; Keras the CNN only
BACKENDS = ("auto", "gloo", "nccl", "mpi")
OPTIMIZERS = ("sgd", "adam")
PRECISIONS = ("fp32", "bf16", "fp16")
# A run long enough to learn: 6 epochs of 23 steps of 64 images, at lr 0.02 (138 steps). Measured on the offline
# digits (seed 0): test accuracy 0.939 with the PyTorch CNN and 0.96 with the Keras CNN (tests keep it >= 0.9);
# about 3 s of training for one process on a 2-core machine (steps of 32 at lr 0.01 took twice as long for
# the same accuracy). Training amplifies float rounding: a distributed run and its single-device twin, equal to
# 1e-8 after a few steps, drift apart over the run (measured: DDP's step losses within 2e-5 of one device's,
# Keras' 2 replicas within 5e-3), so their curves overlap while the bitwise proofs use short runs. The drift is
# chaotic in the step size: at lr 0.015 Keras' 2 replicas part from one device (step losses 1.1 apart).
LEARNING_FIELDS = {"global_batch": 64, "samples": 1472, "epochs": 6, "lr": 0.02}


class ConfigError(ValueError):
    """A configuration value that cannot work; the message starts with the field's name."""


def gpu_count() -> int:
    """Number of CUDA GPUs visible to this process (0 without CUDA); imports torch when called."""
    import torch

    return torch.cuda.device_count() if torch.cuda.is_available() else 0


def choose_backend(backend: str, nprocs: int) -> str:
    """Resolve ``backend`` (one of ``BACKENDS``): ``auto`` is nccl when there are at least ``nprocs`` GPUs, else gloo.

    A backend this machine cannot give raises ``ConfigError`` naming the field and what to use instead: a
    worker started by hand says it in one line. Imports torch when called (the caller's or the worker's).
    """
    import torch.distributed as dist

    if backend not in BACKENDS:
        raise ConfigError(f"backend: unknown backend {backend!r}; choose one of {', '.join(BACKENDS)}")
    if backend == "auto":
        return "nccl" if gpu_count() >= nprocs and dist.is_nccl_available() else "gloo"
    if backend == "nccl" and gpu_count() < nprocs:
        raise ConfigError(
            f"backend: 'nccl' needs one GPU per rank: {nprocs} ranks asked for, {gpu_count()} GPU(s) here. "
            "Use backend=gloo (CPU, or several ranks sharing GPUs) or fewer processes."
        )
    available = {"gloo": dist.is_gloo_available(), "nccl": dist.is_nccl_available(), "mpi": dist.is_mpi_available()}
    if not available[backend]:
        raise ConfigError(f"backend: {backend!r} is not available in this PyTorch build; use backend=gloo")
    return backend


@dataclass(frozen=True)
class TrainConfig:
    """Everything a training run needs to know, the same for every strategy (see the module docstring)."""

    strategy: str = "ddp"  # a name in dtutor.strategies.STRATEGIES
    model: str = "cnn"  # a name in MODEL_NAMES (ignored when your own model is passed to fit)
    global_batch: int = 64  # samples per optimizer step, over all ranks
    accumulation: int = 1  # micro-batches per optimizer step on each rank
    micro_batches: int = 1  # pipelines only: each step's batch is cut into this many micro-batches
    samples: int = 1024  # training samples per epoch (the first ones of the training split)
    epochs: int = 1
    lr: float = 0.05  # the learning rate of the global batch: the same for every strategy and world size
    momentum: float = 0.9  # SGD momentum (0 for plain SGD)
    optimizer: str = "sgd"  # "sgd" (with momentum) or "adam" (torch.optim.Adam, the ZeRO paper's optimizer)
    zero_stage: int = 0  # deepspeed only: 0 (none), 1 (optimizer state), 2 (+ gradients), 3 (+ parameters)
    offload: bool = False  # deepspeed only, stages 1-3: keep the optimizer state and its step in CPU memory
    precision: str = "fp32"  # deepspeed: "bf16" or "fp16" (GPUs only); fsdp: "bf16"; 16-bit compute, fp32 masters
    seed: int = 0
    backend: str = "auto"  # torch.distributed backend: auto = nccl with a GPU per rank, else gloo
    test_samples: int = 512  # test images evaluated after the last epoch (0: none; at most the split's size)
    checkpoint: str | None = None  # a file rank 0 writes after every epoch and every rank resumes from
    stop_after_epochs: int | None = None  # end early, as an interruption would (then resume from checkpoint)
    return_parameters: bool = True  # put the full (gathered) parameters in the result

    def __post_init__(self) -> None:
        for spec in fields(self):
            _check_field(spec.name, getattr(self, spec.name))
        info = STRATEGIES[self.strategy]
        if info.framework == "tensorflow":
            if self.model != "cnn":
                raise ConfigError(f"model: {self.strategy!r} trains the Keras CNN only; use model='cnn'")
            if self.accumulation != 1:
                raise ConfigError(f"accumulation: {self.strategy!r} does not accumulate; use accumulation=1")
            if self.checkpoint is not None:
                raise ConfigError(f"checkpoint: the Keras driver keeps no checkpoints ({self.strategy!r}); "
                                  "use checkpoint=None")
        _check_model_parallel_fields(self, info.layout)
        _check_deepspeed_fields(self)

    @classmethod
    def from_kwargs(cls, **values: Any) -> TrainConfig:
        """A config from keyword arguments; an unknown name is refused with the closest field's name."""
        names = [spec.name for spec in fields(cls)]
        for key in values:
            if key not in names:
                close = difflib.get_close_matches(key, names, n=1)
                hint = f"; did you mean {close[0]!r}?" if close else f"; the fields are {', '.join(names)}"
                raise ConfigError(f"{key}: not a TrainConfig field{hint}")
        return cls(**values)

    def replace(self, **changes: Any) -> TrainConfig:
        """A copy with ``changes`` applied (validated again)."""
        return TrainConfig.from_kwargs(**{**asdict(self), **changes})

    def as_dict(self) -> dict[str, Any]:
        """The fields as a plain dict (Python literals only: they travel on a command line)."""
        return asdict(self)

    def as_arguments(self) -> dict[str, Any]:
        """The fields that differ from their defaults, and always the strategy: the short command-line form."""
        return {k: v for k, v in asdict(self).items() if k == "strategy" or v != getattr(TrainConfig, k)}

    def micro_batch(self, data_ranks: int) -> int:
        """Samples per micro-batch on each of ``data_ranks`` data-parallel ranks (after ``check_world``)."""
        return self.global_batch // (data_ranks * self.accumulation)

    def steps_per_epoch(self) -> int:
        """Optimizer steps in one epoch: whole global batches only."""
        return self.samples // self.global_batch

    def used_samples(self) -> int:
        """Samples an epoch trains on: ``steps_per_epoch() * global_batch``."""
        return self.steps_per_epoch() * self.global_batch


def learning_setup(**changes: Any) -> dict[str, Any]:
    """``TrainConfig`` fields of a run long enough to learn (``LEARNING_FIELDS``), with ``changes`` applied.

    The short runs of the proofs (one epoch of 256 images) stop near chance; this one reaches over 90% test
    accuracy on the offline digits in seconds, for every strategy alike. Each field is checked by its own rule
    (the rules between fields apply when a config is made from them).
    """
    values = {**LEARNING_FIELDS, **changes}
    names = {spec.name for spec in fields(TrainConfig)}
    for name, value in values.items():
        if name not in names:
            raise ConfigError(f"{name}: not a TrainConfig field")
        _check_field(name, value)
    return values


def _is_int(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def _is_number(value: Any) -> bool:
    return (_is_int(value) or isinstance(value, float)) and math.isfinite(value)


def _need(ok: bool, name: str, value: Any, what: str) -> None:
    if not ok:
        raise ConfigError(f"{name}: must be {what}, got {value!r}")


def _check_field(name: str, value: Any) -> None:
    """The rule for one field: its type, then its range (each error names the field)."""
    if name == "strategy":
        _need(value in STRATEGIES, name, value, f"one of {', '.join(STRATEGIES)}")
    elif name == "model":
        _need(value in MODEL_NAMES, name, value, f"one of {', '.join(MODEL_NAMES)}")
    elif name == "backend":
        _need(value in BACKENDS, name, value, f"one of {', '.join(BACKENDS)}")
    elif name == "optimizer":
        _need(value in OPTIMIZERS, name, value, f"one of {', '.join(OPTIMIZERS)}")
    elif name == "precision":
        _need(value in PRECISIONS, name, value, f"one of {', '.join(PRECISIONS)}")
    elif name == "zero_stage":
        _need(_is_int(value) and 0 <= value <= 3, name, value, "0, 1, 2 or 3")
    elif name == "offload":
        _need(isinstance(value, bool), name, value, "True or False")
    elif name in ("global_batch", "accumulation", "micro_batches", "samples", "epochs"):
        _need(_is_int(value) and value >= 1, name, value, "a whole number >= 1")
    elif name in ("seed", "test_samples"):
        _need(_is_int(value) and value >= 0, name, value, "a whole number >= 0")
    elif name == "lr":
        _need(_is_number(value) and value > 0, name, value, "a number > 0")
    elif name == "momentum":
        _need(_is_number(value) and 0 <= value < 1, name, value, "a number in [0, 1)")
    elif name == "checkpoint":
        _need(value is None or (isinstance(value, str) and value != ""), name, value, "None or a file path")
    elif name == "stop_after_epochs":
        _need(value is None or (_is_int(value) and value >= 1), name, value, "None or a whole number >= 1")
    elif name == "return_parameters":
        _need(isinstance(value, bool), name, value, "True or False")
    else:  # a new field must get a rule here
        raise AssertionError(f"no validation rule for TrainConfig.{name}")


def _check_model_parallel_fields(config: TrainConfig, layout: Layout) -> None:
    """Fields only some layouts use: micro-batches (pipelines); no checkpoints when the model is split."""
    if not layout.splits("pipeline") and config.micro_batches != 1:
        raise ConfigError(f"micro_batches: only pipeline strategies cut a batch into micro-batches "
                          f"({config.strategy!r} does not); use micro_batches=1 (or accumulation)")
    if layout.splits("pipeline") and config.accumulation != 1:
        raise ConfigError(f"accumulation: a pipeline accumulates over its micro-batches ({config.strategy!r}); "
                          f"use accumulation=1 and micro_batches={config.accumulation * config.micro_batches}")
    if not layout.splits_data_only and config.checkpoint is not None:
        raise ConfigError(f"checkpoint: {config.strategy!r} keeps no checkpoints (its state is split over the "
                          "ranks); use checkpoint=None")


def _check_deepspeed_fields(config: TrainConfig) -> None:
    """ZeRO stage and offload belong to DeepSpeed; offload needs a partitioned optimizer (stage >= 1). Precision:
    DeepSpeed's bf16/fp16, or FSDP2's bf16 (its ``MixedPrecisionPolicy``; fp16 would need a gradient scaler)."""
    if config.strategy == "fsdp" and config.precision == "fp16":
        raise ConfigError("precision: FSDP trains in 'fp32' or 'bf16' here (fp16 needs a gradient scaler, which "
                          "the driver does not keep); use precision='bf16'")
    for name, default, users in (("zero_stage", 0, ("deepspeed",)), ("offload", False, ("deepspeed",)),
                                 ("precision", "fp32", ("deepspeed", "fsdp"))):
        if getattr(config, name) != default and config.strategy not in users:
            raise ConfigError(f"{name}: only strategy={' or '.join(map(repr, users))} uses it "
                              f"({config.strategy!r} does not); leave it at {default!r}")
    if config.strategy == "deepspeed" and config.offload and config.zero_stage == 0:
        raise ConfigError("offload: DeepSpeed offloads a partitioned optimizer only (ZeRO stages 1-3); "
                          "use zero_stage=1, 2 or 3, or offload=False")
    if STRATEGIES[config.strategy].framework == "tensorflow" and config.optimizer != "sgd":
        raise ConfigError(f"optimizer: the Keras driver trains with SGD ({config.strategy!r}); use optimizer='sgd'")


def _check_model_split(config: TrainConfig, mesh: Mesh) -> None:
    """The mesh-dependent rules of pipelines (stages, 1F1B) and tensor parallelism (widths)."""
    info, shape = STRATEGIES[config.strategy], MODEL_SHAPES[config.model]
    if mesh.pipeline > shape.layers:
        raise ConfigError(f"world size: {mesh.pipeline} pipeline stages (one per rank) is more than the "
                          f"{shape.layers} layers of model {config.model!r}; use at most {shape.layers} stages")
    if info.schedule == "1f1b" and config.micro_batches < mesh.pipeline:
        raise ConfigError(f"micro_batches: 1F1B needs at least one micro-batch per stage, so micro_batches >= "
                          f"{mesh.pipeline} stages, got {config.micro_batches}")
    if any(width % mesh.tensor for width in shape.split_widths):
        raise ConfigError(f"world size: tensor parallelism over {mesh.tensor} ranks must divide the split layer "
                          f"widths of model {config.model!r}, {', '.join(map(str, shape.split_widths))}")


def check_world(config: TrainConfig, world_size: int, layout: Layout | None = None) -> int:
    """Check the batch arithmetic for ``world_size`` ranks; return the micro-batch per data-parallel rank.

    ``layout`` is how the strategy lays the ranks out (default: its registry entry's; a strategy instance
    passes its class's). Its mesh says how many ranks split the data: all of them for data parallelism, one
    for pipelines and tensor parallelism, the replicas of a 2-D grid. Every data rank must get the same whole
    micro-batch, a pipeline's micro-batches must cut it evenly, and an epoch must hold at least one optimizer
    step; pipelines and tensor parallelism must be able to cut the model over their dimension of the mesh.
    """
    _need(_is_int(world_size) and world_size >= 1, "world size", world_size, "a whole number >= 1")
    layout = layout or STRATEGIES[config.strategy].layout
    try:
        mesh = layout.mesh(world_size)
    except LayoutError as error:
        raise ConfigError(str(error)) from None
    data_ranks = mesh.data
    if config.global_batch % (data_ranks * config.accumulation):
        raise ConfigError(
            f"global_batch: {config.global_batch} must be a multiple of data-parallel ranks x accumulation = "
            f"{data_ranks} x {config.accumulation}, so every rank gets the same micro-batch"
        )
    per_step = config.global_batch // (data_ranks * config.accumulation)
    if per_step % config.micro_batches:
        raise ConfigError(f"micro_batches: {config.micro_batches} must divide the batch of each step, "
                          f"{per_step}, so every micro-batch has the same size")
    if config.samples < config.global_batch:
        raise ConfigError(f"samples: {config.samples} cannot fill one global batch of {config.global_batch}")
    _check_model_split(config, mesh)
    return config.micro_batch(data_ranks)
