"""The seed's split (two devices in one process, two processes with send/recv) and the timeline tools."""

import pytest

from dtutor import launch, models
from dtutor.pytorch.model_parallel import demos, split
from dtutor.pytorch.model_parallel.timeline import Event, idle_fractions, mean_idle, plot_timeline, theory_bubble


@pytest.fixture(scope="module")
def two_processes():
    return launch.run("dtutor.pytorch.model_parallel.split:split_demo", 2, timeout=240, quiet=True)  # both ranks


def test_part1_is_conv32_and_maxpool_and_part2_the_rest():
    part1, part2 = split.split_cnn(models.mnist_cnn())
    assert [type(m).__name__ for m in part1] == ["Conv2d", "ReLU", "MaxPool2d"]
    assert type(part2[0]).__name__ == "Conv2d" and type(part2[-1]).__name__ == "Linear"
    assert [name for name, _ in part2.named_parameters()][0] == "3.weight"  # the full model's names


def test_two_devices_in_one_process_equal_the_unsplit_model():
    result = demos.split_two_devices()
    assert result["forward_difference"] == 0.0 and result["step_difference"] == 0.0
    assert result["activation_shape"] == (32, 32, 13, 13)


def test_two_processes_equal_the_unsplit_model(two_processes):
    first, second = two_processes
    assert first == {**second, "events": first["events"]}  # every fact the same on both ranks
    assert first["forward_difference"] == 0.0 and first["step_difference"] == 0.0
    assert first["activation_shape"] == (32, 32, 13, 13) and first["activation_bytes"] == 32 * 32 * 13 * 13 * 4
    assert first["parameters"] == [320, models.MNIST_CNN_PARAMETERS - 320]


def test_in_the_naive_split_one_stage_always_waits(two_processes):
    events = two_processes[0]["events"]
    assert [(e.stage, e.kind) for e in events] == [(0, "forward"), (1, "forward"), (1, "backward"), (0, "backward")]
    assert all(a.end <= b.start for a, b in zip(events, events[1:], strict=False))  # never two at once
    assert min(idle_fractions(events).values()) > 0.2


def _event(stage, kind, start, end, micro_batch=0):
    return Event(stage, kind, micro_batch, start, end)


def test_idle_fraction_is_the_share_of_the_step_a_stage_does_not_compute():
    events = [_event(0, "forward", 0.0, 1.0), _event(1, "forward", 1.0, 2.0), _event(1, "backward", 2.0, 4.0),
              _event(0, "backward", 4.0, 6.0)]
    assert idle_fractions(events) == {0: pytest.approx(0.5), 1: pytest.approx(0.5)}
    assert mean_idle(events) == pytest.approx(0.5)


@pytest.mark.parametrize(("stages", "micro_batches", "theory"), [(2, 1, 1 / 2), (2, 2, 1 / 3), (2, 4, 1 / 5),
                                                                 (2, 8, 1 / 9), (4, 4, 3 / 7)])
def test_gpipe_theory(stages, micro_batches, theory):
    assert theory_bubble(stages, micro_batches) == pytest.approx(theory)


def test_timeline_plot_title_states_the_measured_idle_and_the_theory():
    events = [_event(0, "forward", 0.0, 0.001), _event(1, "forward", 0.001, 0.002),
              _event(1, "backward", 0.002, 0.004), _event(0, "backward", 0.004, 0.006)]
    axes = plot_timeline(events).axes[0]
    assert axes.get_title() == "2 stages, 1 micro-batch(es): idle 50% of the step (GPipe theory 50%)"
    assert [t.get_text() for t in axes.get_yticklabels()] == ["stage 0", "stage 1"]
