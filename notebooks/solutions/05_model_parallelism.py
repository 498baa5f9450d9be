"""Worked solutions of notebook 05's exercises: the bubble at m = 8, GPipe with 8 micro-batches, and 1F1B's order.

Run them (CI does, through the notebook's own check cells): ``python notebooks/solutions/05_model_parallelism.py``.
"""

from dtutor import code_exercises, exercises, launch, learning_setup  # noqa: F401 - the check cells use code_exercises
from dtutor.pytorch.model_parallel import timeline  # noqa: F401 - the check cell uses it


def my_one_f_one_b(stage: int, stages: int, micro_batches: int) -> list[tuple[str, int]]:
    """1F1B on ``stage``: the forwards that fill the pipeline below it, then one forward and one backward in turn,
    then the backwards that drain it. Stage s holds at most ``stages - s`` activations."""
    warmup = stages - stage - 1  # forwards in flight before this stage's first backward can come back
    order = [("F", i) for i in range(warmup)]
    for i in range(micro_batches - warmup):
        order += [("F", warmup + i), ("B", i)]
    return order + [("B", i) for i in range(micro_batches - warmup, micro_batches)]


def answers() -> dict:
    """``my_bubble_prediction``: (p - 1) / (m + p - 1) = 1 / 9; ``my_eight_micro_batches``: micro-batches of 4."""
    return {
        "my_bubble_prediction": (2 - 1) / (8 + 2 - 1),
        "my_eight_micro_batches": launch.train(2, strategy="pipeline_gpipe", micro_batches=8, timeout=600, quiet=True,
                                               **learning_setup(epochs=1)),
        "my_one_f_one_b": my_one_f_one_b,
    }


if __name__ == "__main__":
    raise SystemExit(0 if exercises.check_solution(__file__) else 1)
