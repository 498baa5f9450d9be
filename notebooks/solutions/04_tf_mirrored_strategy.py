"""Worked solution of notebook 04's exercise: MultiWorkerMirroredStrategy on 3 workers, equal to one device.

Run it (CI does, through the notebook's own check cell): ``python notebooks/solutions/04_tf_mirrored_strategy.py``.
"""

from dtutor import exercises, launch

fields = dict(samples=256, global_batch=64, test_samples=128)  # the notebook's runs


def answers() -> dict:
    """``my_three_workers``: 64 cannot be split 3 ways; 63 can (21 per worker), and so can 66."""
    return {"my_three_workers": launch.train(3, strategy="multiworker", timeout=600, quiet=True,
                                             **{**fields, "global_batch": 63})}


if __name__ == "__main__":
    raise SystemExit(0 if exercises.check_solution(__file__) else 1)
