"""The notebooks' exercise checks: the learner's answer, verified with the course's own proofs.

Every notebook ends with exercises. The learner writes an answer in a cell (a number, or a run they launched:
``my_runs = launch.train(4, strategy="ddp", ...)``); a check cell passes it to one of these functions, which
print one verdict line (``right: ...``, ``not quite: ...``) and return a ``Verdict``, true only for a right
answer (Jupyter shows nothing more for it):

- ``check_answer``: a predicted value (a number, a tuple) against the course's own computation of it;
- ``check_same_training``: a run the learner launched, checked for the change the exercise asks for (ranks,
  accumulation, micro-batches, ...) and then proven equal to its single-device twin (``twin_of``) with
  ``dtutor.result.max_difference``, the proof every notebook uses.

An answer left at its placeholder (``None``) prints ``not attempted yet: ...`` and returns False, the same
text every time, so a notebook whose exercises are blank passes nbval.

Worked solutions live beside the notebooks: ``notebooks/solutions/NN_name.py`` for ``notebooks/NN_name.ipynb``.
A solution defines ``answers()``, returning ``{answer variable: value}``, and the names the notebook's check
cells use; ``check_solution`` runs the notebook's own check cells on those answers. CI runs every solution
(``tests/test_exercises.py``); a learner can too: ``python notebooks/solutions/02_distributed_data_parallel.py``.
"""

from __future__ import annotations

import contextlib
import io
import json
import math
import runpy
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from dtutor.config import TrainConfig
from dtutor.result import RunResult, max_difference
from dtutor.strategies import STRATEGIES

TOLERANCE = 1e-5  # float32 rounding of a gradient average computed in another order
VERDICTS = ("right", "not quite", "not yet", "wrong", "hung", "not attempted yet")  # the first word(s) of every verdict


class Verdict:
    """What a check returns: true for a right answer. Its line is already printed, so Jupyter shows nothing more."""

    def __init__(self, right: bool):
        self.right = right

    def __bool__(self) -> bool:
        return self.right

    def __repr__(self) -> str:
        return f"Verdict(right={self.right})"

    def _ipython_display_(self) -> None:
        """Nothing: the check printed its verdict line."""


def _say(verdict: str, text: str) -> Verdict:
    print(f"{verdict}: {text}")
    return Verdict(verdict == "right")


def check_answer(answer: Any, expected: Any, *, what: str, why: str, tolerance: float = 0.0,
                 hint: str = "write your answer in the cell above, then run this cell again") -> Verdict:
    """Compare ``answer`` with ``expected`` (numbers within ``tolerance``; anything else by ``==``).

    Prints ``right: what = expected: why`` or ``not quite: ...`` (with the expected value and ``why``), or
    ``not attempted yet: what: hint`` while ``answer`` is None.
    """
    if answer is None:
        return _say("not attempted yet", f"{what}: {hint}")
    if _close(answer, expected, tolerance):
        return _say("right", f"{what} = {_text(expected)}. {why}")
    return _say("not quite", f"{what} is {_text(expected)}, not {_text(answer)}. {why}")


def _close(answer: Any, expected: Any, tolerance: float) -> bool:
    if isinstance(expected, int | float) and not isinstance(expected, bool):
        try:
            return math.isclose(float(answer), float(expected), rel_tol=0.0, abs_tol=tolerance)
        except (TypeError, ValueError):
            return False
    if isinstance(expected, Sequence) and not isinstance(expected, str):
        return (isinstance(answer, Sequence) and not isinstance(answer, str) and len(answer) == len(expected)
                and all(_close(a, e, tolerance) for a, e in zip(answer, expected, strict=True)))
    return answer == expected


def _text(value: Any) -> str:
    return f"{value:.4g}" if isinstance(value, float) else repr(value)


def twin_of(run: RunResult) -> RunResult:
    """The single-device twin of ``run``: its config on one device, started afresh.

    PyTorch runs get the ``single`` strategy in this process (no accumulation, no micro-batches, no ZeRO: the
    same global batch in one piece); Keras runs get one replica (``mirrored``, ``replicas=1``) in a fresh process,
    which works whatever TensorFlow already set up here.
    """
    from dtutor import launch

    config = TrainConfig.from_kwargs(**run.config)
    if STRATEGIES[config.strategy].framework == "tensorflow":
        fields = config.replace(strategy="mirrored").as_arguments()
        return launch.run_single("dtutor.tf.driver:train", replicas=1, timeout=600, **fields)
    fields = config.replace(strategy="single", accumulation=1, micro_batches=1, checkpoint=None,
                            stop_after_epochs=None, backend="auto", return_parameters=True, zero_stage=0,
                            offload=False, precision="fp32").as_arguments()
    return launch.train(1, quiet=True, **fields)[0]


def _as_runs(answer: Any) -> list[RunResult] | None:
    runs = [answer] if isinstance(answer, RunResult) else answer
    if isinstance(runs, Sequence) and runs and all(isinstance(run, RunResult) for run in runs):
        return list(runs)
    return None


def _differences(runs: list[RunResult], expect: Mapping[str, Any]) -> list[str]:
    """What the run does not do that the exercise asks for (``world_size`` and config fields)."""
    found = []
    for key, wanted in expect.items():
        have = runs[0].world_size if key == "world_size" else runs[0].config.get(key)
        if have != wanted:
            found.append(f"{key} is {have!r}, the exercise asks for {wanted!r}")
    return found


def check_same_training(answer: Any, *, expect: Mapping[str, Any], tolerance: float = TOLERANCE,
                        twin: RunResult | None = None,
                        hint: str = "launch the run in the cell above, then run this cell again") -> Verdict:
    """Check a learner's run: it makes the change asked for, and it trains exactly like one device.

    ``answer``: the list of ``RunResult`` a launch returned (or one of them). ``expect``: what the exercise
    asks for, e.g. ``{"strategy": "ddp", "world_size": 4}``. Then the course's proof: every rank holds the
    same parameters, and they equal the single-device twin's (``twin_of``, or ``twin``) within ``tolerance``.
    """
    if answer is None:
        return _say("not attempted yet", hint)
    runs = _as_runs(answer)
    if runs is None:
        return _say("not quite", f"expected the list of RunResult a launch returns, got {type(answer).__name__}")
    missing = _differences(runs, expect)
    if missing:
        return _say("not yet", "; ".join(missing) + ".")
    if any(run.parameters is None for run in runs):
        return _say("not quite", "the run kept no parameters to compare: launch it with return_parameters=True")
    spread = max(max_difference(runs[0], run) for run in runs)
    if spread > tolerance:
        return _say("wrong", f"the ranks disagree (by {spread:.1e}): their replicas drifted apart, so their "
                             "gradients were not averaged before each step")
    twin = twin or twin_of(runs[0])
    gap = max_difference(runs[0], twin)
    what = f"{runs[0].strategy} on {runs[0].world_size} rank(s), global batch {runs[0].config['global_batch']}"
    if gap <= tolerance:
        return _say("right", f"{what} trained like one device with the same global batch (max |difference| "
                             f"{gap:.1e} <= {tolerance:g}): however the batch is split, the averaged gradient is "
                             "the gradient of the mean loss over the global batch.")
    return _say("wrong", f"{what} ended {gap:.1e} away from one device (> {tolerance:g}): the gradient of each "
                         "step was not the mean over the global batch (check the learning rate, the loss scaling, "
                         "and that every rank saw its share)")


def check_plan_without_nccl(answer: Any, node: Any) -> Verdict:
    """Notebook 00: notebook 02's plan, ``(mode, workers, backend)``, on ``node`` once its torch lacks NCCL.

    The course's answer is ``dtutor.devices.recommend_notebook_runs`` on a copy of ``node`` whose ``nccl``
    backend is not usable (a torch built without NCCL).
    """
    import dataclasses

    from dtutor import devices

    without = dataclasses.replace(node, backends={**node.backends,
                                                  "nccl": devices.Backend("nccl", False, "not built into torch")})
    plan = next(r for r in devices.recommend_notebook_runs(without) if r.notebook == "02")
    return check_answer(answer, (plan.mode, plan.workers, plan.backend),
                        what=f"notebook 02 on {len(node.gpus)} GPUs without NCCL",
                        why="DDP's all-reduce between GPUs is NCCL's; without it the course falls back to gloo "
                            f"and simulates {plan.workers} CPU workers, and the GPUs sit idle.",
                        hint="set my_plan = (mode, workers, backend), then run this cell again")


def check_recipe(answer: str | None, *, nodes: int, gpus_per_node: int, backend: str) -> Verdict:
    """Notebook 08: is ``answer`` a Slurm batch script for ``nodes`` x ``gpus_per_node`` GPUs with ``backend``?

    The course's own reading of the script (``dtutor.launch.recipes.check_recipe``) lists what is wrong.
    """
    from dtutor.launch import recipes

    what = f"a job on {nodes} nodes of {gpus_per_node} GPUs with {backend}"
    if answer is None:
        return _say("not attempted yet", f"{what}: set my_recipe = recipes.training_sbatch(...), then run this "
                                         "cell again")
    problems = recipes.check_recipe(answer, nodes=nodes, gpus_per_node=gpus_per_node, backend=backend)
    if problems:
        return _say("not quite", f"{what}: " + "; ".join(problems))
    return _say("right", f"{what}: one task per node, and on each node one rank per GPU.")


def check_cells(notebook: str | Path) -> list[str]:
    """The sources of ``notebook``'s check cells: code cells that call ``exercises.check...``."""
    cells = json.loads(Path(notebook).read_text())["cells"]
    sources = ["".join(cell["source"]) for cell in cells if cell["cell_type"] == "code"]
    return [source for source in sources if "exercises.check" in source]


def check_solution(solution: str | Path) -> bool:
    """Run the worked solution ``notebooks/solutions/NN_name.py`` through ``notebooks/NN_name.ipynb``'s own
    check cells; True when there is at least one check and every one says right (the verdicts are printed)."""
    solution = Path(solution)
    namespace = runpy.run_path(str(solution), run_name="dtutor_solution")
    namespace.update(namespace["answers"]())
    printed = io.StringIO()
    sources = check_cells(solution.parent.parent / f"{solution.stem}.ipynb")
    with contextlib.redirect_stdout(printed):
        for source in sources:
            exec(compile(source, f"{solution.stem} check cell", "exec"), namespace)  # noqa: S102 - the notebook's
    print(printed.getvalue(), end="")
    verdicts = [line.split(":")[0] for line in printed.getvalue().splitlines() if line.split(":")[0] in VERDICTS]
    return bool(sources) and len(verdicts) >= len(sources) and set(verdicts) == {"right"}
