"""Worked solutions of notebook 09's exercises: the ranks a monitored barrier names, and the hanging script fixed.

Run them (CI does, through the notebook's own check cells): ``python notebooks/solutions/09_when_training_breaks.py``.
"""

import tempfile
from pathlib import Path

from dtutor import exercises
from dtutor.failures import exercises as failure_exercises
from dtutor.failures import tool_ranks

BUG = "        if loss.item() < args.target_loss:  # good enough: stop early"  # each rank decides on its own half
FIX = ("        mean_loss = loss.detach().clone()\n"
       "        dist.all_reduce(mean_loss)  # the loss over the global batch, the same on every rank\n"
       "        if mean_loss.item() / world_size < args.target_loss:")


def answers() -> dict:
    """``my_prediction``: the ranks whose work before the barrier outlasts its timeout (rank 0 checks the others in,
    so it is never named); ``my_script``: a copy of the script whose early stop uses the mean loss of all ranks."""
    late = [rank for rank, layers in enumerate(failure_exercises.BARRIER_LAYERS)
            if rank > 0 and tool_ranks.seconds_before_barrier(layers) > failure_exercises.BARRIER_WAIT]
    source = failure_exercises.HANG_SCRIPT.read_text()
    assert BUG in source, "the provided script changed: update the worked solution"
    fixed = Path(tempfile.mkdtemp(prefix="dtutor-09-")) / "my_hangs_train.py"
    fixed.write_text(source.replace(BUG, FIX))
    return {"my_prediction": late, "my_script": str(fixed)}


if __name__ == "__main__":
    raise SystemExit(0 if exercises.check_solution(__file__) else 1)
