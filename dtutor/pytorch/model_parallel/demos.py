"""Every model-parallel demo from a notebook: each runs on ``nprocs`` fresh processes and returns plain values.

One call per step of notebook 05 (each launches its entry point with ``dtutor.launch.run``; ``quiet``
hides the workers' output, ``backend`` is auto: nccl with a GPU per rank, else gloo)::

    from dtutor.pytorch.model_parallel import demos, timeline, bubble, memory
    demos.split_two_devices()              # one process: cuda:0 / cuda:1, or the CPU twice
    demos.split_two_processes()            # part1 | part2 on 2 ranks: differences, shapes, timeline events
    demos.pipeline_by_hand(4)              # GPipe and 1F1B by hand: gradient differences, activations held
    demos.pipeline_library(4)              # ScheduleGPipe, Schedule1F1B: gradient differences, the pitfall
    demos.tensor_parallel()                # shards, differences, collectives per forward and backward
    demos.bubble_rows()                    # the bubble table's rows (bubble.format_bubble, plot_bubble)
    demos.memory_rows("cnn")               # parameter bytes per rank and samples/s (memory.format_memory)
"""

from __future__ import annotations

from typing import Any

PACKAGE = "dtutor.pytorch.model_parallel"


def run_demo(entry: str, nprocs: int = 2, timeout: float = 300.0, quiet: bool = True, **kwargs: Any) -> Any:
    """Rank 0's result of ``PACKAGE.entry`` ("module:function") on ``nprocs`` ranks (every rank returns it)."""
    from dtutor import launch

    return launch.run(f"{PACKAGE}.{entry}", nprocs, timeout=timeout, quiet=quiet, **kwargs)[0]


def split_two_devices(**kwargs: Any) -> dict[str, Any]:
    """The article's split in this process (``split.two_device_demo``)."""
    from dtutor.pytorch.model_parallel import split

    return split.two_device_demo(**kwargs)


def split_two_processes(**kwargs: Any) -> dict[str, Any]:
    """The article's split on 2 ranks with send/recv (``split.split_demo``)."""
    return run_demo("split:split_demo", 2, **kwargs)


def pipeline_by_hand(micro_batches: int = 4, nprocs: int = 2, **kwargs: Any) -> dict[str, Any]:
    """GPipe and 1F1B written by hand, one step each (``gpipe.gpipe_by_hand``)."""
    return run_demo("gpipe:gpipe_by_hand", nprocs, micro_batches=micro_batches, **kwargs)


def pipeline_library(micro_batches: int = 4, nprocs: int = 2, **kwargs: Any) -> dict[str, Any]:
    """``ScheduleGPipe`` and ``Schedule1F1B``, one step each (``pipeline.library_gradients``)."""
    return run_demo("pipeline:library_gradients", nprocs, micro_batches=micro_batches, **kwargs)


def tensor_parallel(nprocs: int = 2, **kwargs: Any) -> dict[str, Any]:
    """An MLP block split column- then row-wise (``tensor_parallel.tensor_parallel_demo``)."""
    return run_demo("tensor_parallel:tensor_parallel_demo", nprocs, **kwargs)


def bubble_rows(nprocs: int = 2, **kwargs: Any) -> list[dict[str, Any]]:
    """The bubble measured on ``nprocs`` stages, one thread each (``bubble.bubble_entry``)."""
    from dtutor.pytorch.model_parallel import bubble

    return bubble.measure_bubble(nprocs, **kwargs)


def memory_rows(model: str = "cnn", nprocs: int = 2, speed: bool = True) -> list[dict[str, Any]]:
    """Parameter memory per rank and samples/s of each split (``memory.measured_table``)."""
    from dtutor.pytorch.model_parallel import memory_and_speed as memory

    return memory.measured_table(model, nprocs, speed)
