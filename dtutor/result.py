"""One result type for every run, PyTorch and TensorFlow alike, and one way to compare two runs' parameters.

Every rank of every strategy returns a ``RunResult``; a launch returns one per rank, in rank order. The
parameters are NumPy arrays by name (gathered to full size when a strategy shards them), so a DDP run, a
Horovod run and a Keras run are compared with the same ``max_difference``. No framework is imported here.
"""

from __future__ import annotations

import resource
from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass, field
from typing import Any

import numpy as np


@dataclass
class EpochStats:
    """One epoch's global metrics (over all ranks): loss and accuracy averaged over its samples.

    ``accuracy`` is None for a task that has none (a regression; see ``dtutor.pytorch.fit``'s ``count_correct``).
    """

    epoch: int
    steps: int
    samples: int
    loss: float
    accuracy: float | None
    seconds: float  # the slowest rank's time

    @property
    def samples_per_second(self) -> float:
        """Throughput of the whole job in this epoch."""
        return self.samples / self.seconds if self.seconds > 0 else float("nan")

    def summary(self) -> str:
        """One line for people, e.g. ``epoch 0: loss 2.3037, accuracy 0.102, 1,341 samples/s`` (no accuracy: none)."""
        accuracy = "" if self.accuracy is None else f"accuracy {self.accuracy:.3f}, "
        return f"epoch {self.epoch}: loss {self.loss:.4f}, {accuracy}{self.samples_per_second:,.0f} samples/s"


def process_peak_memory() -> tuple[int, str]:
    """This process's peak resident set in bytes and what it is (``peak_memory_kind``), for every driver on CPUs
    (``getrusage``'s ``ru_maxrss`` counts KiB on Linux)."""
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024, "process peak RSS"


@dataclass
class RunResult:
    """What one rank of a training run returns (see the module docstring)."""

    rank: int
    world_size: int
    config: dict[str, Any]
    epochs: list[EpochStats] = field(default_factory=list)
    step_losses: list[float] = field(default_factory=list)  # global mean loss of each optimizer step
    test_loss: float | None = None
    test_accuracy: float | None = None  # None: not evaluated, or a task without accuracy
    seconds: float = 0.0  # all epochs, the slowest rank's time
    peak_memory_bytes: int | None = None
    peak_memory_kind: str = ""  # what was measured: "cuda max allocated" or "process peak RSS"
    parameters: dict[str, np.ndarray] | None = None
    details: dict[str, Any] = field(default_factory=dict)  # strategy-specific facts (micro-batch, replicas)

    @property
    def strategy(self) -> str:
        """The strategy's registry name."""
        return self.config.get("strategy", "")

    def samples_per_second(self, skip_epochs: int = 1) -> float | None:
        """Throughput over the epochs after the first ``skip_epochs`` (warm-up), by the slowest rank's time;
        None without such epochs."""
        timed = self.epochs[skip_epochs:]
        seconds = sum(e.seconds for e in timed)
        return sum(e.samples for e in timed) / seconds if timed and seconds > 0 else None

    def summary(self) -> str:
        """One short line for people: strategy, ranks, last epoch's loss and accuracy, test accuracy (or test
        loss, for a task without accuracy).

        Where one process holds several replicas (TensorFlow's ``MirroredStrategy``), it counts both, e.g.
        ``mirrored on 1 process(es), 2 replicas in sync; ...``.
        """
        replicas = self.details.get("replicas_in_sync", self.world_size)
        parts = [f"{self.strategy} on {self.world_size} rank(s)" if replicas == self.world_size
                 else f"{self.strategy} on {self.world_size} process(es), {replicas} replicas in sync"]
        if self.epochs:
            parts.append(self.epochs[-1].summary())
        if self.test_accuracy is not None:
            parts.append(f"test accuracy {self.test_accuracy:.3f}")
        elif self.test_loss is not None:
            parts.append(f"test loss {self.test_loss:.4f}")
        return "; ".join(parts)

    def as_dict(self, parameters: bool = False) -> dict[str, Any]:
        """A JSON-friendly dict (parameters left out unless asked for, as nested lists)."""
        data = asdict(self)
        data["epochs"] = [{**asdict(e), "samples_per_second": e.samples_per_second} for e in self.epochs]
        data["parameters"] = ({k: v.tolist() for k, v in self.parameters.items()}
                              if parameters and self.parameters is not None else None)
        return data

    def __repr__(self) -> str:  # short: results hold whole weight tensors
        return f"RunResult(rank={self.rank}, {self.summary()})"


ParameterSet = RunResult | Mapping[str, Any] | Sequence[Any]


def as_arrays(parameters: ParameterSet) -> dict[str, np.ndarray]:
    """Parameters as float64 NumPy arrays by name, from a ``RunResult``, a dict or a list (named by position).

    Accepts NumPy arrays, PyTorch tensors (any device, bf16 included) and TensorFlow variables.
    """
    if isinstance(parameters, RunResult):
        if parameters.parameters is None:
            raise ValueError("this result holds no parameters (run with return_parameters=True)")
        parameters = parameters.parameters
    if not isinstance(parameters, Mapping):
        parameters = {str(i): value for i, value in enumerate(parameters)}
    return {name: _to_numpy(value) for name, value in parameters.items()}


def _to_numpy(value: Any) -> np.ndarray:
    if hasattr(value, "detach"):  # a torch tensor: numpy has no bfloat16
        value = value.detach().cpu().double().numpy()
    return np.asarray(value, dtype=np.float64)


def max_difference(a: ParameterSet, b: ParameterSet) -> float:
    """Largest absolute difference between two parameter sets with the same names and shapes."""
    left, right = as_arrays(a), as_arrays(b)
    if left.keys() != right.keys():
        raise ValueError(f"the parameter sets have different names: {sorted(left.keys() ^ right.keys())[:4]}")
    for name in left:
        if left[name].shape != right[name].shape:
            raise ValueError(f"parameter {name!r} has shape {left[name].shape} against {right[name].shape}")
    return max(float(np.max(np.abs(left[n] - right[n]), initial=0.0)) for n in left)


def identical(a: ParameterSet, b: ParameterSet) -> bool:
    """True when the two parameter sets are bitwise equal."""
    return max_difference(a, b) == 0.0
