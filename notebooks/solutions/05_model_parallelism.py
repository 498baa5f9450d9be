"""Worked solutions of notebook 05's exercises: the bubble at m = 8, and GPipe with 8 micro-batches.

Run them (CI does, through the notebook's own check cells): ``python notebooks/solutions/05_model_parallelism.py``.
"""

from dtutor import exercises, launch, learning_setup
from dtutor.pytorch.model_parallel import timeline  # noqa: F401 - the check cell uses it


def answers() -> dict:
    """``my_bubble_prediction``: (p - 1) / (m + p - 1) = 1 / 9; ``my_eight_micro_batches``: micro-batches of 4."""
    return {
        "my_bubble_prediction": (2 - 1) / (8 + 2 - 1),
        "my_eight_micro_batches": launch.train(2, strategy="pipeline_gpipe", micro_batches=8, timeout=600, quiet=True,
                                               **learning_setup(epochs=1)),
    }


if __name__ == "__main__":
    raise SystemExit(0 if exercises.check_solution(__file__) else 1)
