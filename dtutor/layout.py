"""How a strategy lays its ranks out: a grid of pipeline stages x data replicas x tensor shards.

Every strategy declares a ``Layout``: how many ranks each kind of parallelism takes. ``ALL`` means "every rank
the job has"; the data dimension takes what is left. ``Layout.mesh(world_size)`` turns that into sizes whose
product is the world size (torchtitan's ``ParallelDims``, picotron's dp x pp x tp grid), and
``Mesh.coordinates(rank)`` says where a rank sits, the tensor dimension varying fastest:

    rank = (pipeline_index * data + data_index) * tensor + tensor_index

So the ranks of one tensor-parallel group are neighbours (on a GPU node: the GPUs joined by NVLink), and the
ranks that hold the same shard in different data replicas are ``tensor`` apart. This module imports no
framework: the config check uses it before any process starts.
"""

from __future__ import annotations

from dataclasses import dataclass

ALL = -1  # a dimension that takes every rank of the job


class LayoutError(ValueError):
    """A world size that the layout cannot be cut into; the message starts with "world size"."""


@dataclass(frozen=True)
class Coordinates:
    """Where one rank sits in the mesh: its pipeline stage, data replica and tensor shard."""

    pipeline: int
    data: int
    tensor: int


@dataclass(frozen=True)
class Mesh:
    """The sizes of the three dimensions for one world size (their product)."""

    pipeline: int
    data: int
    tensor: int

    @property
    def world_size(self) -> int:
        """Ranks in the whole grid."""
        return self.pipeline * self.data * self.tensor

    def coordinates(self, rank: int) -> Coordinates:
        """The pipeline stage, data replica and tensor shard of ``rank`` (tensor varies fastest)."""
        tensor_index, rest = rank % self.tensor, rank // self.tensor
        return Coordinates(rest // self.data, rest % self.data, tensor_index)


@dataclass(frozen=True)
class Layout:
    """What a strategy splits: ``pipeline`` stages and ``tensor`` shards (1, a count, or ``ALL``); data: the rest."""

    pipeline: int = 1
    tensor: int = 1

    def __post_init__(self) -> None:
        for name in ("pipeline", "tensor"):
            value = getattr(self, name)
            if value != ALL and value < 1:
                raise ValueError(f"{name}: must be ALL or a whole number >= 1, got {value!r}")
        if self.pipeline == ALL and self.tensor == ALL:
            raise ValueError("pipeline, tensor: at most one dimension can take every rank")

    def mesh(self, world_size: int) -> Mesh:
        """The sizes for ``world_size`` ranks; ``LayoutError`` if the fixed sizes do not divide it."""
        fixed = (1 if self.pipeline == ALL else self.pipeline) * (1 if self.tensor == ALL else self.tensor)
        if world_size % fixed:
            raise LayoutError(f"world size: {world_size} ranks cannot be cut into {self.describe()}; "
                              f"use a multiple of {fixed}")
        rest = world_size // fixed
        pipeline = rest if self.pipeline == ALL else self.pipeline
        tensor = rest if self.tensor == ALL else self.tensor
        return Mesh(pipeline, world_size // (pipeline * tensor), tensor)

    def splits(self, dimension: str) -> bool:
        """Whether the layout cuts the model along ``dimension`` ("pipeline" or "tensor")."""
        return getattr(self, dimension) != 1

    @property
    def kind(self) -> str:
        """What the ranks split, in one word or a grid: "data", "pipeline", "tensor", "data x tensor", ..."""
        cuts = [name for name in ("pipeline", "tensor") if self.splits(name)]
        if ALL in (self.pipeline, self.tensor):
            return " x ".join(cuts)
        return " x ".join(["data", *cuts])

    @property
    def splits_data_only(self) -> bool:
        """Whether every rank holds the whole model (plain data parallelism)."""
        return not (self.splits("pipeline") or self.splits("tensor"))

    def describe(self) -> str:
        """The layout in words, e.g. "tensor 2 x data (the rest)"."""
        parts = [f"{name} {'(every rank)' if size == ALL else size}"
                 for name, size in (("pipeline", self.pipeline), ("tensor", self.tensor)) if size != 1]
        if not parts:
            return "data (every rank)"
        return " x ".join(parts + (["data (the rest)"] if ALL not in (self.pipeline, self.tensor) else []))


DATA = Layout()  # every rank a whole replica: DDP, Horovod, ZeRO, FSDP, MirroredStrategy
PIPELINE = Layout(pipeline=ALL)  # one stage per rank, every stage reads the same batches
TENSOR = Layout(tensor=ALL)  # every rank one shard of each split layer, all read the same batches
DATA_X_TENSOR = Layout(tensor=2)  # tensor-parallel pairs of ranks, the pairs splitting the data
