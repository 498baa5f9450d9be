"""Worked solution of notebook 03's exercise: Horovod on 4 workers, equal to one device.

Run it (CI does, through the notebook's own check cell): ``python notebooks/solutions/03_horovod.py``.
"""

from dtutor import exercises, launch

setup = dict(global_batch=64, samples=256, epochs=1, test_samples=256)  # the notebook's proof runs


def answers() -> dict:
    """``my_four_workers``: horovodrun -np 4, 16 samples per worker."""
    return {"my_four_workers": launch.train(4, strategy="horovod", timeout=300, quiet=True, **setup)}


if __name__ == "__main__":
    raise SystemExit(0 if exercises.check_solution(__file__) else 1)
