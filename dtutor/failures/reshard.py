"""Resharding a checkpoint: FSDP2 shards saved by 2 ranks, loaded by 1 or 4 with ``torch.distributed.checkpoint``;
the same for DeepSpeed ZeRO-3 through its universal checkpoint.

A sharded checkpoint is written by every rank: each saves only its own rows of every parameter and of the Adam
moments. Saved as plain per-rank files (``torch.save`` of each rank's shard), it can only be read back by the same
number of ranks. DCP (``torch.distributed.checkpoint``) also writes a ``.metadata`` file that says which rows of
which tensor each file holds; on load, every rank asks for the rows *it* now owns and DCP reads them from whichever
files hold them. So the course's driver resumes an FSDP run on any number of ranks through ``checkpoint=`` alone
(``FSDP.save_checkpoint``/``load_checkpoint`` in ``dtutor.pytorch.sharded.fsdp``).

``reshard()`` makes it happen: 2 ranks train and save after ``saved_after`` epochs; then for each new world size N,
ONE launch of N ranks trains three runs in turn:

- ``unbroken``: every epoch on N ranks, no checkpoint (the reference);
- ``loaded``: loads the checkpoint and trains nothing, so its parameters are the state as the N ranks read it back;
- ``continued``: loads the checkpoint and trains the remaining epochs on N ranks.

Why ``continued`` equals ``unbroken`` only within a tolerance, not bitwise: the data order and global batch do not
depend on the world size (``DistributedSampler`` gives rank r every N-th sample of the same shuffle, so one step of
N ranks sees the same samples), but each rank averages the loss over its own micro-batch and the reduce-scatter
then sums N of those means. 2 ranks and N ranks add the same numbers in a different grouping, so the first
``saved_after`` epochs differ in the last bits of float32 (ulp of a weight ~0.1 is 7e-9), and training carries
them on. Measured after 2 epochs of SGD with momentum (``SETUP``): 1.5e-8 on 1 and on 4 ranks, the training's move
after the load 2.5e-2. With Adam (``optimizer="adam", lr=1e-3``) 2.7e-7 and 6.2e-7: its division by sqrt(v) magnifies
the differences of tiny gradients, leaving little margin, so FSDP's proof uses SGD. The load itself copies bits:
``loaded`` equals the saved state exactly (parameters; the momentum buffers are read the same way, and a lost one
would move ``continued`` far from ``unbroken``).

DeepSpeed (``reshard(strategy="deepspeed")``, ``DEEPSPEED_SETUP``): ZeRO-3's checkpoint is one model file and one
optimizer file per rank, each holding that rank's 1/N slice of the flattened parameters and moments, with no map a
reader of another world size could use (the engine refuses one: "Automatic adjustment of ZeRO's optimizer state
partitioning with a new world size is not currently supported"). So the strategy's load first converts it, once, on
rank 0, with DeepSpeed's ``ds_to_universal`` into a *universal* checkpoint: every parameter whole, in a folder of its
own (``fp32.pt``, ``exp_avg.pt``, ``exp_avg_sq.pt``), which each rank of the new world size cuts its slice from
(``"checkpoint": {"load_universal": true}``; ``dtutor.pytorch.sharded.deepspeed_zero.to_universal``). DeepSpeed
0.19.8 converts and loads a ZeRO-3 optimizer's state only if it is Adam's, so this proof trains with Adam (lr 1e-3).
Measured: the load exact again; ``continued`` 2.7e-7 (1 rank) and 3.1e-7 (4 ranks) from ``unbroken``, within the
same ``TOLERANCE`` (gloo on a CPU adds in a fixed order: the figures repeat run after run); the training's move after
the load 4.0e-3; a load that dropped the Adam moments (weights only) ends 6.1e-3 from ``unbroken``.
"""

from __future__ import annotations

import shutil
import tempfile
import textwrap
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from dtutor import launch
from dtutor.result import RunResult, max_difference

# The course's fsdp tolerance (``dtutor.strategies``, 1e-6 against DDP): the same float32 sums in other groupings.
TOLERANCE = 1e-6
# 4 steps per epoch of the course's CNN on MNIST, SGD with momentum (the defaults); 32 splits over 1, 2 and 4 ranks
SETUP = {"strategy": "fsdp", "samples": 128, "global_batch": 32, "epochs": 2, "test_samples": 0}
# DeepSpeed's universal checkpoint keeps a ZeRO-3 optimizer's state only if it is Adam's
DEEPSPEED_SETUP = {**SETUP, "strategy": "deepspeed", "zero_stage": 3, "optimizer": "adam", "lr": 1e-3}
SETUPS = {"fsdp": SETUP, "deepspeed": DEEPSPEED_SETUP}


@dataclass
class Loaded:
    """What N ranks did with the 2-rank checkpoint (first rank's results; every rank holds the same full state)."""

    ranks: int
    unbroken: RunResult  # every epoch on N ranks
    loaded: RunResult  # the checkpoint read back on N ranks, nothing trained
    continued: RunResult  # the checkpoint read back, then the remaining epochs on N ranks

    def facts(self, saved: RunResult) -> dict[str, Any]:
        """Plain facts: the epochs trained after the load and three largest absolute differences."""
        return {"ranks": self.ranks, "epochs_after_load": [e.epoch for e in self.continued.epochs],
                "loaded_vs_saved": max_difference(self.loaded, saved),
                "continued_vs_unbroken": max_difference(self.continued, self.unbroken),
                "continued_vs_saved": max_difference(self.continued, saved)}


@dataclass
class Reshard:
    """A 2-rank checkpoint (FSDP's or DeepSpeed ZeRO-3's) and its loads on other world sizes."""

    strategy: str
    saved_ranks: int
    saved_after: int  # epochs trained before the save
    files: list[str]  # the checkpoint's files (DeepSpeed: those of the step folder ``latest`` names)
    chunks: dict[str, list[tuple[int, int]]]  # FSDP: model tensor -> the rows [start, stop) of each chunk written
    saved: RunResult  # the saving run's first rank: the state in the checkpoint
    loads: dict[int, Loaded] = field(default_factory=dict)

    def facts(self) -> dict[str, Any]:
        """Everything a notebook checks, as plain values."""
        return {"strategy": self.strategy, "saved_ranks": self.saved_ranks, "saved_after": self.saved_after,
                "files": self.files, "chunks": self.chunks,
                "loads": {n: each.facts(self.saved) for n, each in self.loads.items()}}


def checkpoint_chunks(folder: str | Path, prefix: str = "model.") -> dict[str, list[tuple[int, int]]]:
    """From a DCP folder's ``.metadata``: for each tensor named ``prefix...``, the rows ``[start, stop)`` (along
    dimension 0, which FSDP shards) of every chunk the saving ranks wrote, in row order."""
    from torch.distributed.checkpoint import FileSystemReader
    from torch.distributed.checkpoint.metadata import TensorStorageMetadata

    metadata = FileSystemReader(str(folder)).read_metadata().state_dict_metadata
    return {name[len(prefix):]: sorted((c.offsets[0], c.offsets[0] + c.sizes[0]) for c in entry.chunks)
            for name, entry in metadata.items()
            if name.startswith(prefix) and isinstance(entry, TensorStorageMetadata) and entry.size}


def checkpoint_files(folder: Path) -> list[str]:
    """The checkpoint's files: DCP's folder, or the step folder DeepSpeed's file ``latest`` names."""
    from dtutor.pytorch.sharded.deepspeed_zero import step_folder

    return sorted(p.name for p in (step_folder(folder) or folder).iterdir())


def _load_on(ranks: int, folder: Path, setup: dict[str, Any], saved_after: int, timeout: float) -> Loaded:
    """One launch of ``ranks`` processes: the unbroken run, the checkpoint only read back, and the continued run.
    They read a copy of the checkpoint: the continued run saves after each epoch, over what it read."""
    copy = folder.with_name(f"{folder.name}_on_{ranks}")
    shutil.copytree(folder, copy)
    runs = [setup, {**setup, "checkpoint": str(copy), "epochs": saved_after}, {**setup, "checkpoint": str(copy)}]
    unbroken, loaded, continued = launch.train_many(ranks, runs, timeout=timeout, quiet=True)
    return Loaded(ranks, unbroken[0], loaded[0], continued[0])


def _show(result: Reshard) -> None:
    """What a learner reads: the files, how one tensor was split, and each load's differences."""
    print(textwrap.fill(f"{result.strategy} saved by {result.saved_ranks} ranks after epoch {result.saved_after - 1}: "
                        f"{', '.join(result.files)}", width=150, subsequent_indent="    "))
    for name, rows in list(result.chunks.items())[:1]:
        print(f"{name}: {len(rows)} chunks, rows " + ", ".join(f"{start}-{stop - 1}" for start, stop in rows))
    for ranks, each in result.loads.items():
        facts = each.facts(result.saved)
        print(f"loaded on {ranks} rank(s): read back {facts['loaded_vs_saved']:.1e} from the saved state; "
              f"trained epochs {facts['epochs_after_load']}; {facts['continued_vs_unbroken']:.1e} from an unbroken "
              f"{ranks}-rank run (training moved {facts['continued_vs_saved']:.1e})")


def reshard(load_ranks: tuple[int, ...] = (1, 4), *, strategy: str = "fsdp", saved_ranks: int = 2,
            saved_after: int = 1, timeout: float = 120.0, show: bool = True, **fields: Any) -> Reshard:
    """Train ``strategy`` ("fsdp" or "deepspeed", ZeRO-3) on ``saved_ranks`` ranks for ``saved_after`` epochs and
    save; load it on each of ``load_ranks`` world sizes and continue (``SETUPS[strategy]`` with ``fields`` changed).
    Nothing is left behind: the checkpoint lives in a temporary folder removed at the end. ``timeout`` applies to
    each launch."""
    setup = {**SETUPS[strategy], **fields}
    with tempfile.TemporaryDirectory(prefix="dtutor-reshard-") as temporary:
        folder = Path(temporary) / "checkpoint"
        saved = launch.train(saved_ranks, **setup, checkpoint=str(folder), stop_after_epochs=saved_after,
                             timeout=timeout, quiet=True)[0]
        chunks = checkpoint_chunks(folder) if strategy == "fsdp" else {}
        result = Reshard(strategy, saved_ranks, saved_after, checkpoint_files(folder), chunks, saved)
        for ranks in load_ranks:
            result.loads[ranks] = _load_on(ranks, folder, setup, saved_after, timeout)
    if show:
        _show(result)
    return result
