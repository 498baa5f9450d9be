"""Notebook 09's exercises, checked on real ranks (the words and ``Verdict`` of ``dtutor.exercises``).

- ``check_barrier_prediction``: which ranks will rank 0's ``monitored_barrier`` name in ``tool_ranks.save_then_barrier``
  on 4 ranks that save ``BARRIER_LAYERS`` layers? The answer is compared with the ranks a real run names.
- ``check_hang_fix``: ``examples/hangs_train.py`` hangs on 2 ranks; the learner finds why with the tools, fixes a
  copy, and the check launches that copy with torchrun (a timeout: ``hung`` when it does not finish), then compares
  its weights and the steps it took with the single-device twin (``single_device_twin``: the same model, data and
  stopping rule on one process fed the whole global batch): ``right`` only when it trains like one device.
"""

from __future__ import annotations

import importlib.util
import runpy
import sys
import tempfile
from collections.abc import Iterable, Sequence
from pathlib import Path
from types import ModuleType
from typing import Any

from dtutor.exercises import TOLERANCE, Verdict, _say, check_answer
from dtutor.failures import tool_ranks, tools

BARRIER_LAYERS = tool_ranks.LAYERS  # the exercise's layers per rank (rank 0 checks in the others)
BARRIER_WAIT = 2.0  # the exercise's monitored_barrier timeout, in seconds
HANG_SCRIPT = tools.EXAMPLES / "hangs_train.py"
HANG_RUN = {"steps": 40, "target_loss": 0.1, "lr": 0.05}  # the options the check gives the learner's script
HANG_TIMEOUT = 30.0  # seconds the fixed script may take on 2 ranks before it counts as hung (start-up not counted)


def _as_ranks(answer: Any) -> list[int] | None:
    """A predicted rank or ranks as a sorted list (None: not ranks)."""
    values = [answer] if isinstance(answer, int) else answer
    if isinstance(values, Iterable) and not isinstance(values, str | bytes):
        values = list(values)
        if all(isinstance(value, int) and not isinstance(value, bool) for value in values):
            return sorted(set(values))
    return None


def check_barrier_prediction(answer: Any, *, report: dict | None = None) -> Verdict:
    """``answer``: the rank (or list of ranks) rank 0's ``monitored_barrier`` names in ``tool_ranks.save_then_barrier``
    with ``BARRIER_LAYERS`` and ``BARRIER_WAIT``; compared with a real run's (``report``: one already made)."""
    what = "the ranks monitored_barrier names"
    if answer is None:
        return check_answer(None, None, what=what, why="", hint="set my_prediction = [rank, ...], then run this cell "
                                                                  "again")
    predicted = _as_ranks(answer)
    if predicted is None:
        return _say("not quite", f"{what}: expected a rank or a list of ranks, got {answer!r}")
    report = report or tools.barrier_report(BARRIER_LAYERS, BARRIER_WAIT, quiet=True)
    arrives = tool_ranks.seconds_before_barrier(BARRIER_LAYERS[0])
    why = (f"Rank 0 arrives at {arrives:.1f} s and waits {BARRIER_WAIT:g} s, until {arrives + BARRIER_WAIT:.1f} s: "
           f"later ranks are named.\nThe real run's rank 0 said: {report['message']}")
    return check_answer(predicted, sorted(report["named"]), what=what, why=why)


def _load_script(path: Path) -> ModuleType:
    """``path`` imported as a module (its ``main`` does not run)."""
    spec = importlib.util.spec_from_file_location(f"dtutor_script_{path.stem}", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def single_device_twin(steps: int = HANG_RUN["steps"], target_loss: float = HANG_RUN["target_loss"],
                       lr: float = HANG_RUN["lr"]) -> dict:
    """The twin of a right fix: ``examples/hangs_train.py``'s model and data on one process fed the whole global
    batch, stopping once that batch's loss is below ``target_loss``. Returns ``{"state", "steps"}``."""
    import torch
    from torch import nn

    script = _load_script(HANG_SCRIPT)
    model = script.make_model()
    optimizer = torch.optim.SGD(model.parameters(), lr=lr)
    taken = 0
    for step in range(steps):
        inputs, targets = script.batch(step, 0, 1)
        loss = nn.functional.mse_loss(model(inputs), targets)
        if loss.item() < target_loss:
            break
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        taken += 1
    return {"state": model.state_dict(), "steps": taken}


def run_as_rank(script: str, args: Sequence[str] = ()) -> None:
    """Entry point: run a plain torchrun script as this rank (``sys.argv`` = the script and ``args``), so the course's
    worker watches it: a hung script's ranks are then named with the line each waits on (the hang finder)."""
    sys.argv = [script, *args]
    runpy.run_path(script, run_name="__main__")


def _run_fix(path: Path, timeout: float) -> tuple[str, str] | dict:
    """Launch the script on 2 ranks; its saved ``{"state", "steps"}``, or a verdict (word, text) when it did not
    finish or saved nothing."""
    import torch

    from dtutor.launch import LaunchError, run

    options = [f"--steps={HANG_RUN['steps']}", f"--target-loss={HANG_RUN['target_loss']}", f"--lr={HANG_RUN['lr']}"]
    with tempfile.TemporaryDirectory(prefix="dtutor-hang-fix-") as folder:
        output = Path(folder) / "weights.pt"
        try:
            run(f"{__name__}:run_as_rank", 2, timeout=timeout, quiet=True, script=str(path.resolve()),
                args=[*options, f"--output={output}"])
        except LaunchError as error:
            text = str(error).strip()
            if "did not finish within" in text:
                waiting = [f"\n  {line.strip()}" for line in text.splitlines() if " waits in " in line]
                return "hung", (f"{path.name} did not finish within {timeout:g} s on 2 ranks; "
                                + ("where each rank waits:" + "".join(waiting) if waiting else "a rank still waits"))
            who = f"rank {error.rank}" if error.rank is not None else "a rank"
            return "wrong", f"{path.name} failed on {who}: {text.splitlines()[-1][:100]}"
        if not output.is_file():
            return "wrong", f"{path.name} finished but wrote no weights to --output"
        return torch.load(output, weights_only=True)


def check_hang_fix(script: str | Path | None, *, timeout: float = HANG_TIMEOUT) -> Verdict:
    """Launch the learner's fixed copy of ``examples/hangs_train.py`` on 2 ranks with torchrun: ``hung`` if it has
    not finished after ``timeout`` s, ``wrong`` if it fails or trains unlike ``single_device_twin``, else ``right``."""
    if script is None:
        return _say("not attempted yet", "copy examples/hangs_train.py, fix the copy, set my_script = its path, then "
                                         "run this cell again")
    path = Path(script)
    if not path.is_file():
        return _say("not quite", f"no script at {path}")
    saved = _run_fix(path, timeout)
    if isinstance(saved, tuple):
        return _say(*saved)
    twin = single_device_twin()
    if saved.get("steps") != twin["steps"] or set(saved.get("state", {})) != set(twin["state"]):
        return _say("wrong", f"{path.name} took {saved.get('steps')} steps on 2 ranks; one device fed the whole batch "
                             f"takes {twin['steps']}.\nThe ranks must stop together, on the loss of the whole global "
                             "batch.")
    gap = max(float((saved["state"][name] - value).abs().max()) for name, value in twin["state"].items())
    if gap > TOLERANCE:
        return _say("wrong", f"{path.name}'s weights are {gap:.1e} away from one device's (> {TOLERANCE:g})")
    return _say("right", f"{path.name} finished on 2 ranks and trained like one device fed the whole batch: "
                         f"{twin['steps']} steps, max |difference| {gap:.1e}.\nEvery rank now takes the same decision, "
                         "from the loss all-reduced over the ranks.")
