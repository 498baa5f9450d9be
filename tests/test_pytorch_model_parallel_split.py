"""The Alibaba Cloud article's split of the CNN: two devices in one process, two processes with send/recv."""

import pytest

from dtutor import launch, models
from dtutor.pytorch.model_parallel import split
from dtutor.pytorch.model_parallel.timeline import idle_fractions


@pytest.fixture(scope="module")
def two_processes():
    return launch.run("dtutor.pytorch.model_parallel.split:split_demo", 2, timeout=240, quiet=True)  # both ranks


def test_part1_is_conv32_and_maxpool_and_part2_the_rest():
    part1, part2 = split.split_cnn(models.mnist_cnn())
    assert [type(m).__name__ for m in part1] == ["Conv2d", "ReLU", "MaxPool2d"]
    assert type(part2[0]).__name__ == "Conv2d" and type(part2[-1]).__name__ == "Linear"
    assert [name for name, _ in part2.named_parameters()][0] == "3.weight"  # the full model's names


def test_two_devices_in_one_process_equal_the_unsplit_model():
    result = split.two_device_demo()
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
