"""Worked solutions of notebook 02's exercises: DDP on 4 ranks, and with 4 accumulated micro-batches.

Run them (CI does, through the notebook's own check cells):
``python notebooks/solutions/02_distributed_data_parallel.py``.
"""

from dtutor import exercises, launch

setup = dict(global_batch=64, samples=256, epochs=1, test_samples=256)  # the notebook's proof runs


def answers() -> dict:
    """``my_four_ranks``: 16 samples per rank; ``my_accumulation``: 2 ranks, 4 micro-batches of 8 per step."""
    return {
        "my_four_ranks": launch.train(4, strategy="ddp", timeout=300, quiet=True, **setup),
        "my_accumulation": launch.train(2, strategy="ddp", accumulation=4, timeout=300, quiet=True, **setup),
    }


if __name__ == "__main__":
    raise SystemExit(0 if exercises.check_solution(__file__) else 1)
