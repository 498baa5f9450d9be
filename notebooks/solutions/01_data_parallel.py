"""Worked solution of notebook 01's exercise: DataParallel with gradient accumulation, equal to one device.

Run it (CI does, through the notebook's own check cell): ``python notebooks/solutions/01_data_parallel.py``.
"""

from dtutor import exercises, launch

setup = dict(global_batch=64, samples=640, epochs=1, test_samples=256)  # the notebook's first run


def answers() -> dict:
    """``my_accumulation``: each step of 64 as two micro-batches of 32."""
    return {"my_accumulation": launch.train(1, strategy="dataparallel", accumulation=2, quiet=True, **setup)}


if __name__ == "__main__":
    raise SystemExit(0 if exercises.check_solution(__file__) else 1)
