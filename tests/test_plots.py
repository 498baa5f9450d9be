"""Learning curves: every run on the same axes, the title computed from the runs."""

import matplotlib
import numpy as np
import pytest

from dtutor import plots
from dtutor.result import EpochStats, RunResult

matplotlib.use("Agg")


def run(name: str, accuracy: float, weight: float) -> RunResult:
    epochs = [EpochStats(e, 4, 128, 2.0 / (e + 1), 0.3 * (e + 1), 0.1) for e in range(3)]
    return RunResult(0, 2, {"strategy": name}, epochs=epochs, step_losses=[2.0, 1.5, 1.0, 0.5] * 3,
                     test_accuracy=accuracy, parameters={"w": np.full(3, weight)})


def test_the_title_states_each_test_accuracy_and_how_far_apart_the_runs_ended():
    title = plots.learning_title({"ddp on 2 ranks": run("ddp", 0.97, 1.0), "one device": run("single", 0.96, 1.5)})
    assert title == ("ddp on 2 ranks: test accuracy 0.970; one device: test accuracy 0.960; "
                     "step losses within 0.0e+00; parameters within 5.0e-01")


def test_every_run_is_drawn_on_both_axes():
    figure = plots.learning_curves({"ddp": run("ddp", 0.97, 1.0), "single": run("single", 0.97, 1.0)})
    loss, accuracy = figure.axes
    assert [len(line.get_xdata()) for line in loss.lines] == [12, 12]
    assert len(accuracy.lines) == 4  # training accuracy per epoch and the test marker, for each run
    assert figure._suptitle.get_text().endswith("; parameters bitwise equal")


def test_nothing_to_plot_is_refused():
    with pytest.raises(ValueError, match="runs"):
        plots.learning_curves({})


def test_the_step_loss_gap_is_the_largest_over_the_steps_both_ran():
    a, b = run("ddp", 0.9, 1.0), run("single", 0.9, 1.0)
    b.step_losses = [x + 0.25 * (i == 3) for i, x in enumerate(b.step_losses)][:5]
    assert plots.step_loss_gap(a, b) == 0.25
