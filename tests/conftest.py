import os

os.environ.setdefault("DTUTOR_OFFLINE", "1")
os.environ.setdefault("TQDM_DISABLE", "1")

import concurrent.futures  # noqa: E402
import mmap  # noqa: E402
import multiprocessing  # noqa: E402
import pickle  # noqa: E402
import subprocess  # noqa: E402
import sys  # noqa: E402
import textwrap  # noqa: E402
import uuid  # noqa: E402
from pathlib import Path  # noqa: E402
from typing import TYPE_CHECKING  # noqa: E402

import psutil  # noqa: E402
import pytest  # noqa: E402

from dtutor.devices import horovod_frameworks  # noqa: E402

if TYPE_CHECKING:
    import torch


def require_horovod(framework: str) -> None:
    """Skip without a Horovod built for ``framework``, except in CI (DTUTOR_REQUIRE_HOROVOD=1), where it fails."""
    built = horovod_frameworks() or []
    if framework not in built:
        message = f"Horovod built with {framework} is not installed (built: {built})"
        if os.environ.get("DTUTOR_REQUIRE_HOROVOD") == "1":
            pytest.fail(message)
        pytest.skip(message)


MARKER = "DTUTOR_TEST_MARKER"


@pytest.fixture
def process_marker(monkeypatch) -> str:
    """A unique value in the environment that every process a launch starts inherits (see ``marked_processes``)."""
    value = uuid.uuid4().hex
    monkeypatch.setenv(MARKER, value)
    return value


def marked_processes(value: str) -> list[psutil.Process]:
    """Every live process on this machine whose environment carries ``process_marker``'s value."""
    found = []
    for process in psutil.process_iter():
        try:
            if process.environ().get(MARKER) == value and process.pid != os.getpid():
                found.append(process)
        except (psutil.AccessDenied, psutil.NoSuchProcess, psutil.ZombieProcess):
            pass
    return found


@pytest.fixture
def own_code_importable(monkeypatch) -> None:
    """Launched ranks can import ``tests/own_code.py`` (a learner's own module) as ``own_code``."""
    folder = str(Path(__file__).parent)
    monkeypatch.setenv("PYTHONPATH", os.pathsep.join([folder, os.environ.get("PYTHONPATH", "")]))


# --- Launches shared between tests: the same run (strategy and config) is launched once per session

@pytest.fixture(scope="session")
def shared_train():
    """``shared_train(nprocs, **fields)``: ``launch.train(nprocs, quiet=True, **fields)``, launched once per session
    for each distinct ``nprocs``, placement (``nnodes``, ``threads_per_rank``) and ``TrainConfig`` (fields left at
    their defaults or written out are the same run; ``timeout`` and ``quiet`` aside); every test that asks for
    the same run gets the same results (read them; do not change them). A run that fails is not kept. It can
    stand in for ``launch.train`` (``test_exercises`` patches it in): it calls ``dtutor.launch.training.train``.

    ``shared_train.many(nprocs, [fields, ...])``: the same for several runs (no placement): those not launched yet
    train in turn in one launch (``launch.train_many``); per run, every rank's results."""
    from dtutor import TrainConfig
    from dtutor.launch import training

    runs: dict[tuple[int, str, str], list] = {}

    def key(nprocs: int, placement: dict, fields: dict) -> tuple[int, str, str]:
        config = TrainConfig.from_kwargs(**fields).as_dict()
        return nprocs, repr(sorted(placement.items())), repr(sorted(config.items()))

    def train(nprocs: int = 1, *, timeout: float = 300, **fields) -> list:
        fields.pop("quiet", None)
        placement = {name: fields.pop(name) for name in ("nnodes", "threads_per_rank") if name in fields}
        found = key(nprocs, placement, fields)
        if found not in runs:
            runs[found] = training.train(nprocs, timeout=timeout, quiet=True, **placement, **fields)
        return runs[found]

    def many(nprocs: int, asked: list[dict], *, timeout: float = 300) -> list[list]:
        asked = [{name: value for name, value in run.items() if name not in ("quiet", "timeout")} for run in asked]
        keys = [key(nprocs, {}, fields) for fields in asked]
        missing = {k: fields for k, fields in zip(keys, asked, strict=True) if k not in runs}
        if missing:
            runs.update(zip(missing, training.train_many(nprocs, list(missing.values()), timeout=timeout, quiet=True),
                            strict=True))
        return [runs[k] for k in keys]

    train.many = many
    return train


# --- TensorFlow: every test that runs TensorFlow does it in a fresh child process (its devices are fixed for the
# whole process when it initialises); this pytest process never imports TensorFlow.

TF_SETUP = {"samples": 256, "global_batch": 64, "epochs": 1, "test_samples": 128}  # 4 steps, lr 0.05, momentum 0.9


def run_child(code: str, *args: str, timeout: float = 300) -> dict:
    """Run ``code`` (``args`` in ``sys.argv``) in a fresh Python; it pickles a dict to ``sys.argv[1]``."""
    environ = {**os.environ, "DTUTOR_OFFLINE": "1", "TF_CPP_MIN_LOG_LEVEL": "2", "TQDM_DISABLE": "1"}
    environ.pop("TF_USE_LEGACY_KERAS", None)  # the code under test must set it itself
    done = subprocess.run([sys.executable, "-c", textwrap.dedent(code), *args], capture_output=True, text=True,
                          timeout=timeout, env=environ)
    if done.returncode != 0:
        pytest.fail(f"child failed with exit code {done.returncode}:\n{done.stderr[-3000:]}")
    with open(args[0], "rb") as file:
        return pickle.load(file)


@pytest.fixture(scope="session")
def tf_reference():
    """``mirrored`` with replicas=1 (one Keras device) on ``TF_SETUP``, in a fresh process, once per session:
    the reference the TensorFlow strategies are proven against (``reference="tf_single"`` in the registry)."""
    from dtutor import launch

    return launch.run_single("dtutor.tf.driver:train", timeout=300, replicas=1, strategy="mirrored", **TF_SETUP)


# -- the PyTorch pipelines' small runs, shared by the tests of the strategies, the hand-written schedules and
# the bubble: each is launched once per session.

SMALL_RUN = {"global_batch": 64, "samples": 256, "epochs": 1, "test_samples": 64}  # 4 steps of the CNN on MNIST


@pytest.fixture(scope="session")
def small_reference(shared_train):
    """``single`` (one device, in this process) on ``SMALL_RUN``: what the model-parallel strategies equal (and
    DDP and Horovod, whose tests ask ``shared_train`` for the same run)."""
    return shared_train(1, strategy="single", **SMALL_RUN)[0]


PIPELINES = ("pipeline_gpipe", "pipeline_1f1b", "pipeline_by_hand", "pipeline_by_hand_1f1b")


@pytest.fixture(scope="session")
def pipeline_runs():
    """``pipeline_runs(name)``: every rank's ``RunResult`` of pipeline strategy ``name`` on 2 ranks, ``SMALL_RUN``
    with 4 micro-batches. The four pipelines (``PIPELINES``) train one after the other in one launch, on first
    use (``bubble.record``: a hand-written one's timelines kept)."""
    from dtutor.pytorch.model_parallel import bubble

    runs: dict[str, list] = {}

    def run(name: str) -> list:
        if not runs:
            recorded = bubble.record(2, *({"strategy": n, "micro_batches": 4, **SMALL_RUN} for n in PIPELINES),
                                     timeout=300)
            runs.update(zip(PIPELINES, recorded, strict=True))
        return runs[name]

    return run


@pytest.fixture
def no_process_may_start(monkeypatch):
    """Any attempt to start a process, or to import TensorFlow (even if an earlier test did), fails the test."""
    def refuse(*args, **kwargs):
        raise AssertionError(f"a process was started: {args[:1]}")

    monkeypatch.setattr(subprocess, "Popen", refuse)
    for name in [m for m in sys.modules if m == "tensorflow" or m.startswith(("tensorflow.", "tf_keras"))]:
        monkeypatch.delitem(sys.modules, name)
    monkeypatch.setitem(sys.modules, "tensorflow", None)  # `import tensorflow` now raises ImportError
    yield
    assert psutil.Process().children(recursive=True) == []


def side_by_side(calls: dict[str, tuple], timeout: float) -> dict:
    """Each call, ``(function, *args)``, in a fresh process of its own, all at once (launches that mostly wait):
    name -> what it returned. Its processes end with it, multiprocessing's resource tracker too, which the pool
    starts and which would otherwise stay this process's child until pytest exits (tests assert none is left)."""
    from multiprocessing import resource_tracker

    spawn = multiprocessing.get_context("spawn")
    try:
        with concurrent.futures.ProcessPoolExecutor(len(calls), mp_context=spawn) as pool:
            futures = {name: pool.submit(*call) for name, call in calls.items()}
            return {name: future.result(timeout=timeout) for name, future in futures.items()}
    finally:
        resource_tracker._resource_tracker._stop()  # no public way to end it; it starts again when needed


def never_written(nbytes: int, dtype: "torch.dtype | None" = None) -> "torch.Tensor":
    """A tensor on a fresh anonymous mapping, none of its pages touched yet. ``torch.empty`` is not: glibc may hand
    it memory an earlier test wrote and freed (the heap's top keeps up to 64 MB), so its pages may be resident."""
    import torch  # here: conftest itself imports no framework

    return torch.frombuffer(mmap.mmap(-1, nbytes), dtype=dtype or torch.uint8)  # the tensor keeps the mapping alive


# --- Slurm: the throwaway cluster's leftovers

SLURM_MARK = "DTUTOR_SLURM_TEST"  # its value, carried by every job's processes, is how a cluster's leftovers are found


def listening(ports: list[int]) -> list[int]:
    """The ``ports`` some process still listens on."""
    return sorted({c.laddr.port for c in psutil.net_connections("tcp")
                   if c.status == psutil.CONN_LISTEN and c.laddr.port in ports})


def assert_nothing_left(folder: Path, ports: list[int], mark: str) -> None:
    """No process of the cluster or of its jobs (marked ``mark``), no listening port, no folder."""
    from dtutor.launch import slurm_local

    assert slurm_local.leftovers(folder, (SLURM_MARK, mark)) == []
    assert listening(ports) == []
    assert not folder.exists()


# --- Launchers replaced by recorders (Slurm's and ssh's generated commands run against these)

def launcher_recorder(task_variable: str, task_default: str) -> str:
    """A stand-in launcher (a Python script): writes what it was given (arguments, TF_CONFIG, the hostfile) to
    ``$RECORDS/<its name>-<task>.json``, the task read from ``task_variable`` (``task_default`` where unset)."""
    return f"""#!{sys.executable}
import json, os, pathlib, sys
name, task = pathlib.Path(sys.argv[0]).name, os.environ.get("{task_variable}", "{task_default}")
seen = {{"argv": sys.argv[1:], "TF_CONFIG": os.environ.get("TF_CONFIG")}}
hostfile = os.environ.get("HOSTFILE")
if hostfile:
    seen["hostfile"] = pathlib.Path(hostfile).read_text()
(pathlib.Path(os.environ["RECORDS"]) / f"{{name}}-{{task}}.json").write_text(json.dumps(seen))
"""


# --- ``python -m dtutor.bench all``: a whole result from invented runs (no process starts)

CNN_BYTES = 487_720  # the course's CNN: 121,930 parameters in fp32, so also its gradient bytes


def _fake_rank(rate, parameters=None, sent=None, state=3 * CNN_BYTES, cpu=(0.1, 0.09), **more) -> dict:
    return {"samples_per_s": rate, "parameters": parameters, "bytes_per_step": sent, "model_state_bytes": state,
            "model_state": {"parameters": CNN_BYTES, "gradients": CNN_BYTES, "optimizer": state - 2 * CNN_BYTES},
            "wall_per_step": 0.12, "cpu_per_step": cpu[0], "main_thread_cpu_per_step": cpu[1], **more}


def _fake_record(name, round_, *ranks, workers=2, batch=64) -> dict:
    return {"round": round_, "case": {"name": name, "workers": workers, "global_batch": batch}, "ranks": list(ranks)}


def fake_bench_records() -> list[dict]:
    """Two rounds of invented runs: single, the ceiling, ddp, horovod, ZeRO-3 (failing at 1 worker), mirrored,
    and the proof runs (DDP, Horovod, ZeRO-3 within every tolerance but the bitwise one; mirrored 1e-3 off)."""
    import numpy as np

    rank, record = _fake_rank, _fake_record
    alike = {"w": np.zeros(CNN_BYTES // 4)}  # the reference's parameters: CNN_BYTES in fp32
    near = {"w": np.full(CNN_BYTES // 4, 1e-8)}
    far = {"w": np.full(CNN_BYTES // 4, 1e-3)}
    g, found = CNN_BYTES, []
    for r, (alone, ceiling, ddp2, hvd2) in enumerate([(100, (90, 80), 180, 150), (110, (99, 88), 176, 143)]):
        found += [record("single@1", r, rank(alone, alike), workers=1),
                  record("ceiling", r, rank(ceiling[0], alike), rank(ceiling[1], alike)),
                  record("ddp@1", r, rank(100), workers=1), record("ddp@2", r, rank(ddp2), rank(ddp2)),
                  record("horovod@1", r, rank(100), workers=1),
                  record("horovod@2", r, rank(hvd2, cpu=(0.12, 0.1)), rank(hvd2)),
                  record("deepspeed_zero3@1", r, {"name": "deepspeed_zero3@1", "error": "RuntimeError: boom"}),
                  record("deepspeed_zero3@2", r, rank(60), rank(60)),
                  record("mirrored@1", r, rank(50), workers=1), record("mirrored@2", r, rank(80)),
                  # the proof runs: parameters, bytes, model state
                  record("proof:reference", r, rank(None, alike, 0.0), workers=1),
                  record("proof:ddp", r, rank(None, near, g), rank(None, None, g)),
                  record("proof:horovod", r, rank(None, near, g), rank(None, None, g)),
                  record("proof:deepspeed_zero3", r, rank(None, near, 0.86 * 1.5 * g, state=g),
                         rank(None, None, 0.5 * g, state=g)),
                  record("proof:tf_reference", r, rank(None, alike), workers=1),
                  record("proof:mirrored", r, rank(None, far))]
    return found


def fake_bench_result() -> dict:
    """What ``bench all`` returns for ``fake_bench_records`` (five rows; single at 2 workers skipped)."""
    from dtutor.bench import rows, suite

    planned = {"rows": [suite.Row("single", "single", "single", "torch", "inprocess", "data"),
                        suite.Row("ddp", "ddp", "ddp", "torch", "torchrun", "data"),
                        suite.Row("horovod", "horovod", "horovod", "torch", "horovodrun", "data"),
                        suite.Row("deepspeed_zero3", "deepspeed", "deepspeed ZeRO-3", "torch", "torchrun", "data",
                                  {"zero_stage": 3}),
                        suite.Row("mirrored", "mirrored", "mirrored", "tensorflow", "inprocess", "data")],
               "skipped": {"single": {2: "one device by definition"}}}
    table = rows.build_rows(planned, fake_bench_records())
    machine = {"date": "2026-11-23T23:00:00+00:00", "cpus": 2, "gpu_text": ", no GPU", "gpus": [],
               "load_before": 0.5, "load_after": 0.7, "versions": {"torch": "2.13.0"}}
    return {"mode": "quick", "batch_per_worker": 64, "steps": 4, "epochs": 2, "repeats": 2, "machine": machine,
            "proof_setup": suite.PROOF, **table, "records": suite.strip(fake_bench_records())}
