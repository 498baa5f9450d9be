import pytest
import torch

from dtutor import launch, max_difference
from dtutor.pytorch import dataparallel_lessons
from dtutor.pytorch.dataparallel import gpu_ids
from dtutor.strategies import STRATEGIES

needs_two_gpus = pytest.mark.skipif(len(gpu_ids()) < 2, reason="needs 2 CUDA GPUs")
SETUP = {"global_batch": 32, "samples": 64, "epochs": 1, "test_samples": 0}


def test_without_gpus_dataparallel_passes_the_whole_batch_to_the_one_module():
    if gpu_ids():
        pytest.skip("this machine has GPUs")
    seen = []
    module = torch.nn.Linear(3, 2)
    module.register_forward_hook(lambda mod, inputs, output: seen.append(inputs[0].shape[0]))
    wrapped = dataparallel_lessons.wrap(module)
    wrapped(torch.zeros(10, 3))
    assert seen == [10] and wrapped.module is module  # one call, the whole batch: nothing scattered
    assert "calls the wrapped module directly" in dataparallel_lessons.describe(wrapped)


def test_the_strategy_trains_like_one_device():
    by_dataparallel = launch.train(1, strategy="dataparallel", **SETUP)[0]
    alone = launch.train(1, strategy="single", **SETUP)[0]
    assert by_dataparallel.strategy == "dataparallel" and by_dataparallel.world_size == 1
    assert max_difference(by_dataparallel, alone) < STRATEGIES["dataparallel"].tolerance


def test_a_learners_own_code_under_dataparallel_equals_one_device():
    import own_code

    by_dataparallel, alone = own_code.main(strategy="dataparallel"), own_code.main(strategy="single")
    assert max_difference(by_dataparallel, alone) < STRATEGIES["dataparallel"].tolerance


def test_in_process_strategies_refuse_more_processes():
    with pytest.raises(ValueError, match="nprocs: 'dataparallel' runs in this one process"):
        launch.train(2, strategy="dataparallel", **SETUP)


def test_the_four_phases_refuse_fewer_than_two_gpus():
    with pytest.raises(ValueError, match="at least 2 GPUs"):
        dataparallel_lessons.one_step_by_hand(torch.nn.Linear(2, 2), torch.zeros(4, 2), [0])


def test_memory_measurement_needs_gpus():
    if gpu_ids():
        pytest.skip("this machine has GPUs")
    with pytest.raises(RuntimeError, match="needs CUDA GPUs"):
        dataparallel_lessons.peak_memory_per_gpu()


def test_memory_plot_marks_the_first_gpus_excess():
    figure = dataparallel_lessons.plot_peak_memory([3 * 2**30, 2 * 2**30, 2 * 2**30])
    assert "+1.00 GiB" in [t.get_text() for t in figure.axes[0].texts]


@needs_two_gpus
def test_outputs_and_gradients_equal_the_plain_module_on_gpus():
    differences = dataparallel_lessons.compare_with_plain_module(batch_size=16)
    assert differences["outputs"] < 1e-5 and differences["gradients"] < 1e-5


@needs_two_gpus
def test_by_hand_equals_dataparallel_on_gpus():
    model = torch.nn.Linear(8, 4)
    inputs = torch.randn(6, 8)
    by_hand, log = dataparallel_lessons.one_step_by_hand(model, inputs, gpu_ids())
    torch.testing.assert_close(by_hand, dataparallel_lessons.wrap(model)(inputs))
    assert log[0].startswith("scatter:")


@needs_two_gpus
def test_first_gpu_peaks_highest():
    peaks = dataparallel_lessons.peak_memory_per_gpu(width=1024, depth=2, batch_size=512, steps=2)
    assert peaks[0] > max(peaks[1:])

