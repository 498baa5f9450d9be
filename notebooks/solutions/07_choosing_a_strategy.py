"""Worked solutions of notebook 07's exercises: busbw from algbw, and the strategy for 13 B parameters.

Run them (CI does, through the notebook's own check cells): ``python notebooks/solutions/07_choosing_a_strategy.py``.
"""

from dtutor import exercises, guide  # noqa: F401 - the check cells use them
from dtutor.bench import theory  # noqa: F401 - the check cells use it


def answers() -> dict:
    """``my_busbw``: 80 x 2 x 7/8 = 140 GB/s; ``my_strategy``: FSDP (a whole copy does not fit, shards do)."""
    whole_gb = 16 * 13e9 / 1e9  # 16 bytes per parameter with Adam in mixed precision: 208 GB
    sharded_gb = whole_gb / 16  # over 2 x 8 GPUs: 13 GB each
    usable_gb = guide.HEADROOM * 80  # what an 80 GB GPU leaves for model state
    assert sharded_gb <= usable_gb < whole_gb
    return {"my_busbw": 80 * 2 * (8 - 1) / 8, "my_strategy": "fsdp"}


if __name__ == "__main__":
    raise SystemExit(0 if exercises.check_solution(__file__) else 1)
