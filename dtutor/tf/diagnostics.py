"""A diagnostic entry point for TensorFlow worker launches: a worker that fails on purpose (no torch).

For trying out, and testing, what a launch does when a worker dies: the failed worker is named with its
traceback and every other worker is ended. The others wait, as they would for a dead worker in an all-reduce::

    dtutor.launch.run_tf_workers("dtutor.tf.diagnostics:fail_on_worker", 2, failing_rank=1)
"""

from __future__ import annotations

import time

from dtutor.tf.multiworker import cluster_place


def fail_on_worker(failing_rank: int = 1, wait_seconds: float = 3600.0) -> int:
    """Worker ``failing_rank`` (its ``TF_CONFIG`` task index) raises; the others wait ``wait_seconds``."""
    rank, _ = cluster_place()
    if rank == failing_rank:
        raise RuntimeError(f"worker {rank} failed on purpose")
    time.sleep(wait_seconds)
    return rank
