import pytest
import torch

from dtutor import dataparallel

needs_two_gpus = pytest.mark.skipif(len(dataparallel.gpu_ids()) < 2, reason="needs 2 CUDA GPUs")


def test_outputs_and_gradients_equal_the_plain_module():
    differences = dataparallel.compare_with_plain_module(batch_size=16)
    assert differences["outputs"] < 1e-6 and differences["gradients"] < 1e-6


def test_without_gpus_dataparallel_calls_the_module_directly():
    if dataparallel.gpu_ids():
        pytest.skip("this machine has GPUs")
    wrapped = dataparallel.wrap(torch.nn.Linear(2, 2))
    assert wrapped.device_ids == [] and "calls the wrapped module directly" in dataparallel.describe(wrapped)


def test_training_through_the_shared_loop():
    result = dataparallel.train(steps=3, batch_size=16, progress=False)
    assert result["steps"] == 3 and result["samples"] == 48 and result["loss"] > 0


def test_the_four_phases_refuse_fewer_than_two_gpus():
    with pytest.raises(ValueError, match="at least 2 GPUs"):
        dataparallel.one_step_by_hand(torch.nn.Linear(2, 2), torch.zeros(4, 2), [0])


def test_memory_measurement_needs_gpus():
    if dataparallel.gpu_ids():
        pytest.skip("this machine has GPUs")
    with pytest.raises(RuntimeError, match="needs CUDA GPUs"):
        dataparallel.peak_memory_per_gpu()


def test_memory_plot_marks_the_first_gpus_excess():
    figure = dataparallel.plot_peak_memory([3 * 2**30, 2 * 2**30, 2 * 2**30])
    labels = [t.get_text() for t in figure.axes[0].texts]
    assert "+1.00 GiB" in labels


@needs_two_gpus
def test_by_hand_equals_dataparallel_on_gpus():
    model = torch.nn.Linear(8, 4)
    inputs = torch.randn(6, 8)
    by_hand, log = dataparallel.one_step_by_hand(model, inputs, dataparallel.gpu_ids())
    expected = dataparallel.wrap(model)(inputs)
    torch.testing.assert_close(by_hand, expected)
    assert log[0].startswith("scatter:")


@needs_two_gpus
def test_first_gpu_peaks_highest():
    peaks = dataparallel.peak_memory_per_gpu(width=1024, depth=2, batch_size=512, steps=2)
    assert peaks[0] > max(peaks[1:])
