"""Tests for dtutor.launch.train: every bad config is refused in the caller, and each strategy's launcher is
chosen with the right entry point and arguments (the runners and drivers are replaced by recorders)."""

from __future__ import annotations

import subprocess
import sys
import types
from typing import Any

import pytest

from dtutor import launch
from dtutor.config import ConfigError, TrainConfig, choose_backend
from dtutor.launch import training
from dtutor.result import RunResult
from dtutor.strategies import STRATEGIES

TORCH_DRIVER, TF_DRIVER = "dtutor.pytorch.driver:train", "dtutor.tf.driver:train"


class Recorder:
    """Stands in for a runner or a driver: remembers each call and returns one RunResult per rank."""

    def __init__(self, runner: bool):
        self.calls: list[tuple[tuple, dict[str, Any]]] = []
        self.returned: list[Any] = []  # what each call returned, to check that ``train`` hands back that
        self.runner = runner  # a runner (entry, nprocs, ...) returns a list; a driver returns one result

    def __call__(self, *args: Any, **kwargs: Any) -> Any:
        self.calls.append((args, kwargs))
        if not self.runner:
            self.returned.append(RunResult(rank=0, world_size=1, config=kwargs))
        else:
            self.returned.append([RunResult(rank=rank, world_size=args[1], config={}) for rank in range(args[1])])
        return self.returned[-1]


@pytest.fixture
def recorders(monkeypatch: pytest.MonkeyPatch) -> dict[str, Recorder]:
    """Replace the three runners and the two drivers; nothing may start a process."""
    monkeypatch.setattr(subprocess, "Popen", lambda *a, **k: pytest.fail("a process was started"))
    found = {name: Recorder(runner=True) for name in ("run", "run_horovod", "run_tf_workers")}
    for name, recorder in found.items():
        monkeypatch.setattr(training, name, recorder)
    for framework, entry in (("torch", TORCH_DRIVER), ("tensorflow", TF_DRIVER)):
        found[framework] = Recorder(runner=False)
        monkeypatch.setitem(sys.modules, entry.partition(":")[0], types.SimpleNamespace(train=found[framework]))
    return found


def _only_call(recorders: dict[str, Recorder], used: str) -> tuple[tuple, dict[str, Any]]:
    """The one call of ``used``; every other recorder was never called."""
    assert [name for name, recorder in recorders.items() if recorder.calls] == [used]
    (call,) = recorders[used].calls
    return call


@pytest.mark.parametrize(
    ("nprocs", "options", "message"),
    [
        (2, {"strategy": "warp"}, "strategy: must be one of"),
        (2, {"lr": "fast"}, "lr: must be a number > 0"),
        (2, {"epochs": 0}, "epochs: must be a whole number >= 1"),
        (2, {"epochs": -1}, "epochs: must be a whole number >= 1"),
        (2, {"model": "resnet"}, "model: must be one of"),
        (2, {"global_batch": 63}, "global_batch: 63 must be a multiple of"),
        (2, {"global_batch": 64, "accumulation": 3}, "global_batch: 64 must be a multiple of"),
        (2, {"samples": 32}, "samples: 32 cannot fill one global batch of 64"),
        (2, {"samples": 10**6}, r"samples: 1000000 asked for, but the training data has \d+"),
        (1, {"strategy": "single", "samples": 10**6}, r"samples: 1000000 asked for, but the training data has"),
        (2, {"strategy": "mirrored", "samples": 10**6}, r"samples: 1000000 asked for, but the training data has"),
        (2, {"epoch": 2}, "epoch: not a TrainConfig field; did you mean 'epochs'"),
        (2, {"momentum": 1.5}, r"momentum: must be a number in \[0, 1\)"),
        (2, {"backend": "carrier-pigeon"}, "backend: must be one of"),
        (64, {"backend": "nccl"}, "'nccl' needs one GPU per rank"),
        (2, {"strategy": "single"}, "nprocs: 'single' runs in this one process"),
        (2, {"strategy": "dataparallel"}, "nprocs: 'dataparallel' runs in this one process"),
        (0, {}, "nprocs must be a whole number >= 1"),
        (2, {"nnodes": 0}, "nnodes must be a whole number >= 1"),
        (2, {"strategy": "horovod", "nnodes": 2}, "nnodes: 'horovod' runs on one machine"),
        (2, {"strategy": "multiworker", "nnodes": 2}, "nnodes: 'multiworker' runs on one machine"),
        (2, {"strategy": "mirrored", "model": "mlp"}, "model: 'mirrored' trains the Keras CNN only"),
        (3, {"strategy": "mirrored"}, "global_batch: 64 must be a multiple of"),
        (2, {"strategy": "horovod_keras", "accumulation": 2}, "accumulation: 'horovod_keras' does not accumulate"),
        (5, {"strategy": "pipeline_gpipe"}, "world size: 5 pipeline stages .* more than the 4 layers of model 'cnn'"),
        (2, {"strategy": "pipeline_gpipe", "micro_batches": 3}, "micro_batches: 3 must divide the batch of each "
                                                                 "step, 64"),
        (2, {"strategy": "pipeline_1f1b"}, "micro_batches: 1F1B needs .* micro_batches >= 2 stages, got 1"),
        (3, {"strategy": "tensor_parallel", "model": "mlp", "global_batch": 63},
         "world size: tensor parallelism over 3 ranks must divide the split layer widths of model 'mlp', 1024"),
        (2, {"strategy": "ddp", "micro_batches": 2}, "micro_batches: only pipeline strategies"),
        (2, {"strategy": "pipeline_gpipe", "accumulation": 2}, "accumulation: a pipeline accumulates"),
        (2, {"strategy": "tensor_parallel", "checkpoint": "x.pt"}, "checkpoint: 'tensor_parallel' keeps no"),
        (2, {"max_restarts": -1}, "max_restarts must be a whole number >= 0, got -1"),
        (2, {"strategy": "horovod", "max_restarts": 1}, "max_restarts: 'horovod' runs under horovodrun"),
    ],
)
def test_bad_input_is_refused_before_anything_starts(recorders, nprocs, options, message):
    with pytest.raises(ValueError, match=message):
        launch.train(nprocs, **options)
    assert all(not r.calls for r in recorders.values())


def test_config_errors_are_config_errors(recorders):
    with pytest.raises(ConfigError):
        launch.train(2, lr="fast")


def test_ddp_runs_the_torch_driver_through_torchrun_with_a_concrete_backend(recorders):
    results = launch.train(2, nnodes=2, timeout=60, quiet=True, threads_per_rank=1, strategy="ddp", epochs=2,
                           global_batch=128)
    args, kwargs = _only_call(recorders, "run")
    assert args == (TORCH_DRIVER, 2)
    expected = TrainConfig(strategy="ddp", epochs=2, global_batch=128, backend=choose_backend("auto", 2))
    assert kwargs == {"nnodes": 2, "timeout": 60, "quiet": True, "threads_per_rank": 1, "max_restarts": 0,
                      **expected.as_arguments()}
    assert kwargs["backend"] in ("gloo", "nccl") and results is recorders["run"].returned[0]  # the ranks' results


@pytest.mark.parametrize(("strategy", "framework", "entry"),
                         [("horovod", "torch", TORCH_DRIVER), ("horovod_keras", "tensorflow", TF_DRIVER)])
def test_horovod_strategies_run_their_framework_driver_through_horovodrun(recorders, strategy, framework, entry):
    launch.train(2, strategy=strategy, samples=256)
    args, kwargs = _only_call(recorders, "run_horovod")
    assert args == (entry, 2) and kwargs.pop("framework") == framework
    backend = choose_backend("auto", 2) if framework == "torch" else "auto"  # TF: torch not consulted
    expected = TrainConfig(strategy=strategy, samples=256, backend=backend).as_arguments()
    assert kwargs == {"timeout": 300.0, "quiet": False, "threads_per_rank": None, **expected}


def test_multiworker_runs_the_tf_driver_on_tf_workers(recorders):
    launch.train(4, strategy="multiworker", timeout=30)
    args, kwargs = _only_call(recorders, "run_tf_workers")
    assert args == (TF_DRIVER, 4)
    expected = TrainConfig(strategy="multiworker").as_arguments()
    assert kwargs == {"timeout": 30, "quiet": False, "threads_per_rank": None, **expected}


@pytest.mark.parametrize("strategy", ["single", "dataparallel"])
def test_in_process_torch_strategies_call_the_driver_here(recorders, strategy):
    (result,) = launch.train(strategy=strategy, lr=0.1)
    args, kwargs = _only_call(recorders, "torch")
    expected = TrainConfig(strategy=strategy, lr=0.1, backend=choose_backend("auto", 1))
    assert args == () and kwargs == expected.as_dict() and result.config == kwargs


def test_mirrored_calls_the_tf_driver_here_with_nprocs_replicas(recorders):
    (result,) = launch.train(2, strategy="mirrored", seed=3)
    args, kwargs = _only_call(recorders, "tensorflow")
    assert args == () and kwargs == {"replicas": 2, **TrainConfig(strategy="mirrored", seed=3).as_dict()}
    assert isinstance(result, RunResult)


LAUNCHERS = {"torchrun": "run", "horovodrun": "run_horovod", "tf_workers": "run_tf_workers"}  # -> the recorder


@pytest.mark.parametrize("strategy", list(STRATEGIES))
def test_every_registered_strategy_runs_its_frameworks_driver_through_its_launcher(recorders, strategy):
    info = STRATEGIES[strategy]
    nprocs = 1 if info.launcher == "inprocess" else 2
    options = {"micro_batches": 2} if info.schedule == "1f1b" else {}  # 1F1B: m >= stages
    results = launch.train(nprocs, strategy=strategy, **options)
    used = LAUNCHERS.get(info.launcher, info.framework)  # in process: the framework's driver, called here
    args, kwargs = _only_call(recorders, used)
    assert kwargs["strategy"] == strategy
    if info.launcher == "inprocess":
        assert args == () and results == [recorders[used].returned[0]]
    else:
        assert args == (training.DRIVERS[info.framework], nprocs) and results is recorders[used].returned[0]


def test_tensorflow_strategies_keep_torch_out_of_the_caller():
    code = ("import sys; from dtutor.launch import training; "
            "[training.prepare(2, 1, {'strategy': s}) for s in ('mirrored', 'multiworker', 'horovod_keras')]; "
            "print(sorted(m for m in ('torch', 'tensorflow') if m in sys.modules))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120, check=True)
    assert out.stdout.strip() == "[]"


# --- train_many: several runs, one launch

class ManyRecorder:
    """Stands in for a runner under ``train_many``: each rank returns one RunResult per run, tagged with its index."""

    def __init__(self):
        self.calls: list[tuple[tuple, dict[str, Any]]] = []

    def __call__(self, entry: str, nprocs: int, **kwargs: Any) -> list[list[RunResult]]:
        self.calls.append(((entry, nprocs), kwargs))
        return [[RunResult(rank=rank, world_size=nprocs, config={"run": index}) for index in range(len(kwargs["runs"]))]
                for rank in range(nprocs)]


@pytest.mark.parametrize(("strategy", "runner"), [("ddp", "run"), ("horovod", "run_horovod")])
def test_train_many_checks_every_run_then_launches_once(monkeypatch, strategy, runner):
    monkeypatch.setattr(subprocess, "Popen", lambda *a, **k: pytest.fail("a process was started"))
    recorder = ManyRecorder()
    monkeypatch.setattr(training, runner, recorder)
    runs = [{"strategy": strategy, "epochs": 1}, {"strategy": strategy, "epochs": 3, "lr": 0.5}]
    trained = launch.train_many(2, runs, quiet=True)
    ((entry, nprocs), kwargs), = recorder.calls
    assert (entry, nprocs) == (training.IN_TURN, 2) and kwargs["quiet"] is True
    assert kwargs["runs"] == [training.prepare(2, 1, run).as_arguments() for run in runs]
    assert [run["backend"] for run in kwargs["runs"]] == [choose_backend("auto", 2)] * 2
    assert kwargs.get("group_backend") == (choose_backend("auto", 2) if runner == "run" else None)
    if runner == "run_horovod":
        assert kwargs["framework"] == "torch"
    assert [[(r.rank, r.config["run"]) for r in ranks] for ranks in trained] == [[(0, 0), (1, 0)], [(0, 1), (1, 1)]]


@pytest.mark.parametrize(("runs", "message"), [
    ([], "runs: one or more runs"),
    ([{"strategy": "ddp"}, {"strategy": "mirrored"}], "runs: one or more runs, all under torchrun"),
    ([{"strategy": "ddp"}, {"strategy": "ddp", "backend": "nccl"}], "'nccl' needs one GPU per rank|one backend"),
    ([{"strategy": "ddp"}, {"strategy": "ddp", "lr": "fast"}], "lr: must be a number > 0, got 'fast'"),
])
def test_train_many_refuses_runs_before_anything_starts(recorders, runs, message):
    with pytest.raises(ValueError, match=message):
        launch.train_many(2, runs)
    assert not any(recorder.calls for recorder in recorders.values())


def test_runs_in_turn_join_the_group_once_and_leave_it_once_even_after_an_error(monkeypatch):
    from dtutor.pytorch import process_group

    events: list[str] = []
    monkeypatch.setattr(process_group, "join_process_group", lambda backend: events.append(f"join {backend}"))
    monkeypatch.setattr(process_group, "leave_process_group", lambda: events.append("leave"))
    assert training.fit_in_turn([1, 2], lambda run: events.append(f"fit {run}") or run, "gloo") == [1, 2]
    assert events == ["join gloo", "fit 1", "fit 2", "leave"]
    events.clear()
    with pytest.raises(ZeroDivisionError):
        training.fit_in_turn([1, 0], lambda run: events.append(f"fit {run}") or 1 / run, "gloo")
    assert events == ["join gloo", "fit 1", "fit 0", "leave"]
    events.clear()
    training.fit_in_turn([1], lambda run: events.append(f"fit {run}"))  # horovodrun: each strategy joins itself
    assert events == ["fit 1"]


def test_train_in_turn_hands_each_runs_fields_to_the_driver(recorders):
    results = training.train_in_turn([{"strategy": "single", "epochs": 1}, {"strategy": "single", "epochs": 2}])
    assert [kwargs for _, kwargs in recorders["torch"].calls] == [{"strategy": "single", "epochs": e} for e in (1, 2)]
    assert results == recorders["torch"].returned
