import subprocess
import sys

import numpy as np
import pytest
import torch

from dtutor.result import EpochStats, RunResult, as_arrays, identical, max_difference


def result(parameters=None) -> RunResult:
    return RunResult(0, 2, {"strategy": "ddp"}, epochs=[EpochStats(0, 4, 256, 1.5, 0.25, 0.5)],
                     test_accuracy=0.9, parameters=parameters)


def test_one_comparison_for_tensors_arrays_lists_and_results():
    torch_params = {"w": torch.tensor([1.0, 2.0]), "b": torch.tensor([0.5], dtype=torch.bfloat16)}
    numpy_params = {"w": np.array([1.0, 2.5], dtype=np.float32), "b": np.array([0.5])}
    assert max_difference(torch_params, numpy_params) == 0.5
    assert max_difference(result(numpy_params), numpy_params) == 0.0 and identical(result(numpy_params), numpy_params)
    assert max_difference([np.ones(2), np.zeros(1)], [np.ones(2), np.full(1, 0.25)]) == 0.25


@pytest.mark.parametrize(("other", "message"), [({"w": np.ones(2)}, "different names"),
                                               ({"w": np.ones(3), "b": np.ones(1)}, "has shape")])
def test_mismatched_sets_are_refused(other, message):
    with pytest.raises(ValueError, match=message):
        max_difference({"w": np.ones(2), "b": np.ones(1)}, other)


def test_a_result_without_parameters_says_so():
    with pytest.raises(ValueError, match="holds no parameters"):
        as_arrays(result())


def test_summary_and_dict_are_short_and_computed_from_the_numbers():
    run = result({"w": np.ones(3)})
    assert run.epochs[0].samples_per_second == 512.0
    assert run.summary() == "ddp on 2 rank(s); epoch 0: loss 1.5000, accuracy 0.250, 512 samples/s; test accuracy 0.900"
    assert repr(run).startswith("RunResult(rank=0, ddp") and "array" not in repr(run)
    assert run.as_dict()["parameters"] is None and run.as_dict(parameters=True)["parameters"] == {"w": [1.0] * 3}


def test_throughput_skips_the_warm_up_epochs():
    run = RunResult(0, 2, {"strategy": "ddp"}, epochs=[EpochStats(0, 2, 100, 1.0, 0.5, 10.0),
                                                      EpochStats(1, 2, 100, 1.0, 0.5, 1.0),
                                                      EpochStats(2, 2, 100, 1.0, 0.5, 3.0)])
    assert run.samples_per_second() == 50.0 and run.samples_per_second(skip_epochs=0) == 300 / 14
    assert RunResult(0, 1, {}, epochs=run.epochs[:1]).samples_per_second() is None  # only a warm-up


def test_a_mirrored_run_is_summarized_as_one_process_with_its_replicas():
    epoch = EpochStats(epoch=0, steps=4, samples=256, loss=2.29021, accuracy=0.1406, seconds=2.0)
    two = RunResult(rank=0, world_size=1, config={"strategy": "mirrored"}, epochs=[epoch], test_accuracy=0.164,
                    details={"replicas_in_sync": 2})
    assert two.summary() == ("mirrored on 1 process(es), 2 replicas in sync; epoch 0: loss 2.2902, "
                             "accuracy 0.141, 128 samples/s; test accuracy 0.164")
    workers = RunResult(rank=0, world_size=2, config={"strategy": "multiworker"}, details={"replicas_in_sync": 2})
    assert workers.summary() == "multiworker on 2 rank(s)"


def test_a_task_without_accuracy_is_summarized_by_its_losses():
    epoch = EpochStats(epoch=1, steps=4, samples=64, loss=0.67771, accuracy=None, seconds=0.5)
    run = RunResult(0, 1, {"strategy": "single"}, epochs=[epoch], test_loss=0.33734)
    assert epoch.summary() == "epoch 1: loss 0.6777, 128 samples/s"
    assert run.summary() == "single on 1 rank(s); epoch 1: loss 0.6777, 128 samples/s; test loss 0.3373"
    assert run.as_dict()["epochs"][0]["accuracy"] is None


def test_process_peak_memory_counts_what_a_fresh_process_allocated():
    code = ("from dtutor.result import process_peak_memory\n"
            "block = bytearray(b'x') * (300 * 2**20)  # 300 MiB, every page written\n"
            "print(*process_peak_memory(), sep=',')")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120, check=True)
    peak, kind = out.stdout.strip().split(",")
    assert kind == "process peak RSS" and 300 * 2**20 <= int(peak) < 2 * 2**30
