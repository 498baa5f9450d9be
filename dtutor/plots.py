"""Plots the notebooks share: learning curves of runs that should train alike.

``learning_curves({"ddp on 2 ranks": ranks[0], "one device": alone})`` draws every run's training loss per
optimizer step and its accuracy per epoch on the same axes: the first run as a thick line, the others as
dashed lines on top, so a distributed run and its single-device twin show as one line with dashes along it.
The title is computed from the runs: their test accuracies, how far apart their step losses and their
parameters ended. (Runs equal to 1e-8 after a few steps drift apart over hundreds: training amplifies float
rounding. The curves overlap; the bitwise proofs use short runs.)
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from dtutor.result import RunResult, max_difference

STYLES = ({"linewidth": 4.0, "alpha": 0.45}, {"linewidth": 1.4, "linestyle": "--"},
          {"linewidth": 1.4, "linestyle": ":"}, {"linewidth": 1.0, "linestyle": "-."})


def _style(index: int) -> dict[str, Any]:
    return STYLES[min(index, len(STYLES) - 1)]


def step_loss_gap(a: RunResult, b: RunResult) -> float:
    """The largest difference between two runs' losses at the same step (over the steps both ran)."""
    return max((abs(x - y) for x, y in zip(a.step_losses, b.step_losses, strict=False)), default=0.0)


def learning_title(runs: Mapping[str, RunResult]) -> str:
    """What the curves show, from the numbers: each run's test accuracy, and how far the others are from the first."""
    parts = [f"{name}: test accuracy {run.test_accuracy:.3f}" if run.test_accuracy is not None else name
             for name, run in runs.items()]
    first, *others = runs.values()
    if others:
        parts.append(f"step losses within {max(step_loss_gap(first, other) for other in others):.1e}")
    if others and all(run.parameters is not None for run in runs.values()):
        gap = max(max_difference(first, other) for other in others)
        parts.append("parameters bitwise equal" if gap == 0 else f"parameters within {gap:.1e}")
    return "; ".join(parts)


def learning_curves(runs: Mapping[str, RunResult], title: str | None = None):
    """Loss per step and accuracy per epoch of each run, overlaid; returns the matplotlib figure.

    ``runs`` maps a label to a ``RunResult`` (rank 0 of a launch is enough: every rank logs the same global
    loss). Training accuracy is per epoch; each run's test accuracy is a marker after its last epoch.
    ``title`` defaults to ``learning_title(runs)``.
    """
    import matplotlib.pyplot as plt

    if not runs:
        raise ValueError("runs: give at least one RunResult to plot")
    figure, (loss_axes, accuracy_axes) = plt.subplots(1, 2, figsize=(9.5, 3.2))
    for index, (name, run) in enumerate(runs.items()):
        style = _style(index)
        loss_axes.plot(range(1, len(run.step_losses) + 1), run.step_losses, label=name, **style)
        epochs = [stats.epoch + 1 for stats in run.epochs]
        line, = accuracy_axes.plot(epochs, [stats.accuracy for stats in run.epochs], marker="o", label=name,
                                   **style)
        if run.test_accuracy is not None and epochs:
            accuracy_axes.plot([epochs[-1] + 0.25], [run.test_accuracy], marker="*", markersize=12,
                               linestyle="none", color=line.get_color(), label=f"{name}, test")
    loss_axes.set(xlabel="optimizer step", ylabel="training loss", title="loss per step")
    accuracy_axes.set(xlabel="epoch", ylabel="accuracy", ylim=(0, 1.02), title="training accuracy per epoch")
    accuracy_axes.legend(fontsize="small", loc="lower right")
    loss_axes.legend(fontsize="small")
    figure.suptitle(title if title is not None else learning_title(runs), fontsize="medium")
    figure.tight_layout()
    return figure
