"""Worked solutions of notebook 06's exercises: ZeRO-2 with accumulation, ZeRO-2's memory per GPU, and ZeRO-1 by
hand (the course's ``ShardedOptimizer``).

Run them (CI does, through the notebook's own check cells): ``python notebooks/solutions/06_deepspeed_zero_fsdp.py``.
"""

from dtutor import code_exercises, exercises, launch  # noqa: F401 - the check cells use them
from dtutor.pytorch.sharded import formulas  # noqa: F401 - the check cells use it
from dtutor.pytorch.sharded.zero1_by_hand import ShardedOptimizer

SETUP = dict(global_batch=64, samples=256, test_samples=64, optimizer="adam", lr=1e-3, quiet=True, timeout=300)


def answers() -> dict:
    """``my_run``: ZeRO-2 with 2 micro-batches per step; ``my_stage2_gb``: 2Ψ + (2 + K)Ψ/N in GB."""
    parameters, gpus, k = 7.5e9, 8, 12  # the paper's model; K: fp32 master, momentum and variance
    return {
        "my_run": launch.train(2, strategy="deepspeed", zero_stage=2, accumulation=2, **SETUP),
        "my_stage2_gb": (2 * parameters + (2 + k) * parameters / gpus) / 1e9,  # 15 + 13.125 = 28.125
        "MyShardedOptimizer": ShardedOptimizer,
    }


if __name__ == "__main__":
    raise SystemExit(0 if exercises.check_solution(__file__) else 1)
