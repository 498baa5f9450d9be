"""Worked solutions of notebook 08's exercises: a DDP recipe for 2 x 2 GPUs, and horovodrun's -np.

Run them (CI does, through the notebook's own check cells): ``python notebooks/solutions/08_laptop_to_cluster.py``.
"""

import re  # noqa: F401 - the check cells use them

from dtutor import exercises
from dtutor.launch import recipes


def answers() -> dict:
    """``my_recipe``: one rank per GPU (``gpus_per_node=2``) with nccl; ``my_np``: 3 nodes x 4 GPUs = 12."""
    return {
        "my_recipe": recipes.training_sbatch(2, gpus_per_node=2, strategy="ddp", backend="nccl"),
        "my_np": 3 * 4,
    }


if __name__ == "__main__":
    raise SystemExit(0 if exercises.check_solution(__file__) else 1)
