"""The pipeline and tensor-parallel strategies through the driver: launched by name, equal to one device."""

import subprocess

import pytest

from dtutor import launch, max_difference, models
from dtutor.config import ConfigError, TrainConfig, check_world
from dtutor.result import identical
from dtutor.strategies import STRATEGIES

SETUP = {"global_batch": 64, "samples": 256, "epochs": 1, "test_samples": 64}  # conftest's SMALL_RUN


@pytest.mark.parametrize("strategy", ["pipeline_gpipe", "pipeline_1f1b", "tensor_parallel"])
def test_two_ranks_equal_one_device(strategy, small_reference, pipeline_runs):
    reference = small_reference
    if strategy.startswith("pipeline"):
        results = pipeline_runs(strategy)  # one launch, shared with the hand-written pipelines' tests
    else:
        results = launch.train(2, strategy=strategy, timeout=240, quiet=True, **SETUP)
    # fp32 after 4 steps; measured ~1e-8 (pipelines) and ~7e-9 (tensor parallel)
    assert max_difference(results[0], reference) < STRATEGIES[strategy].tolerance and identical(results[0], results[1])
    assert max_difference(reference, models.seeded(models.mnist_cnn, 0).state_dict()) > 1e-3  # it trained
    stats = results[0].epochs[0]
    assert stats.samples == 256 and stats.steps == 4  # every sample counted once, though all ranks read it
    assert stats.loss == pytest.approx(reference.epochs[0].loss, rel=1e-5)
    assert results[0].test_accuracy == pytest.approx(reference.test_accuracy, abs=1e-9)
    assert {r.details["micro_batch"] for r in results} == {64}  # one data rank: the whole batch per step


def test_a_data_by_tensor_grid_on_four_ranks_equals_one_device(small_reference):
    reference = small_reference
    results = launch.train(4, strategy="data_tensor", timeout=300, quiet=True, **SETUP)
    assert max_difference(results[0], reference) < STRATEGIES["data_tensor"].tolerance
    assert all(identical(results[0], other) for other in results[1:])
    stats = results[0].epochs[0]
    assert stats.samples == 256 and stats.loss == pytest.approx(reference.epochs[0].loss, rel=1e-5)
    assert {r.details["micro_batch"] for r in results} == {32}  # two replicas, each half the batch


@pytest.mark.parametrize(
    ("nprocs", "fields", "message"),
    [
        (5, {"strategy": "pipeline_gpipe"}, "world size: 5 pipeline stages .* more than the 4 layers of model 'cnn'"),
        (2, {"strategy": "pipeline_gpipe", "micro_batches": 3}, "micro_batches: 3 must divide the batch of each step"),
        (2, {"strategy": "pipeline_1f1b", "micro_batches": 1}, "micro_batches: 1F1B needs at least one micro-batch "
                                                               "per stage, so micro_batches >= 2 stages, got 1"),
        (3, {"strategy": "tensor_parallel", "global_batch": 63}, "world size: tensor parallelism over 3 ranks must "
                                                                 "divide the split layer widths of model 'cnn', 64"),
        (2, {"strategy": "ddp", "micro_batches": 4}, "micro_batches: only pipeline strategies cut a batch"),
        (2, {"strategy": "pipeline_1f1b", "micro_batches": 2, "accumulation": 2}, "accumulation: a pipeline"),
        (2, {"strategy": "pipeline_gpipe", "checkpoint": "p.pt"}, "checkpoint: 'pipeline_gpipe' keeps no"),
        (3, {"strategy": "data_tensor"}, "world size: 3 ranks cannot be cut into tensor 2 x data .*multiple of 2"),
    ],
)
def test_bad_input_is_refused_before_any_process_starts(monkeypatch, nprocs, fields, message):
    monkeypatch.setattr(subprocess, "Popen", lambda *a, **k: pytest.fail("a process was started"))
    with pytest.raises(ConfigError, match=message):
        launch.train(nprocs, **fields)


def test_pipelines_and_tensor_parallel_do_not_split_the_data():
    for strategy in ("pipeline_gpipe", "tensor_parallel"):
        assert check_world(TrainConfig(strategy=strategy, global_batch=64), 2) == 64
    assert check_world(TrainConfig(strategy="ddp", global_batch=64), 2) == 32
    assert check_world(TrainConfig(strategy="pipeline_gpipe", global_batch=63, micro_batches=7), 2) == 63


def test_the_model_shapes_the_config_checks_match_the_models():
    from dtutor.pytorch.model_parallel.tensor_parallel import tensor_parallel_plan

    for name, factory in models.MODELS.items():
        model = factory()
        assert len(models.pipeline_layers(model)) == models.MODEL_SHAPES[name].layers
        plan = tensor_parallel_plan(model)
        columns = [layer for layer, style in plan.items() if type(style).__name__ == "ColwiseParallel"]
        assert tuple(model.get_submodule(c).out_features for c in columns) == models.MODEL_SHAPES[name].split_widths
