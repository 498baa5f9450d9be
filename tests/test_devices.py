"""Tests for dtutor.devices: the GPU/CPU/backend inventory behind notebook 00 and its recommendations."""

from __future__ import annotations

import json
import logging
import os
import shutil
import subprocess
import sys
import types

import pandas as pd
import pytest
import torch

from dtutor import devices
from dtutor.devices import (
    NOTEBOOK_TOPICS,
    Accelerator,
    Backend,
    Inventory,
    SourceReport,
    inventory,
    merge_devices,
    recommend_notebook_runs,
)

GPU_SOURCES = ["gputil", "nvml", "torch", "tensorflow"]
HAS_GPU = torch.cuda.is_available() or shutil.which("nvidia-smi") is not None
cpu_only = pytest.mark.skipif(HAS_GPU, reason="checks what a machine without GPUs reports")


@pytest.fixture(scope="module")
def inv() -> Inventory:
    return inventory()  # TensorFlow and DeepSpeed included, as the notebook does


def _without(monkeypatch: pytest.MonkeyPatch, broken: str, exc: Exception) -> None:
    """Make ``devices.probes._import(broken)`` raise ``exc``; every other import works as usual."""
    real = devices.probes._import

    def fake(name: str):
        if name == broken:
            raise exc
        return real(name)

    monkeypatch.setattr(devices.probes, "_import", fake)


def _fake_module(monkeypatch: pytest.MonkeyPatch, name: str, module: object) -> None:
    real = devices.probes._import
    monkeypatch.setattr(devices.probes, "_import", lambda n: module if n == name else real(n))


# --- the real inventory of this machine ---------------------------------------------------------------


def test_every_source_reports_ok_xor_error(inv: Inventory) -> None:
    assert [s.name for s in inv.sources] == GPU_SOURCES
    for s in inv.sources:
        if s.ok:
            assert s.error is None, s
        else:
            assert s.error and s.error.strip(), s
            assert s.devices == [], s


@cpu_only
def test_cpu_only_machine_has_no_gpus_and_says_why(inv: Inventory) -> None:
    assert inv.gpus == []
    by_name = {s.name: s for s in inv.sources}
    for s in inv.sources:
        assert s.devices == [] and (not s.ok or s.error is None)
    assert not by_name["gputil"].ok and "nvidia-smi" in by_name["gputil"].error
    assert not by_name["nvml"].ok  # no libnvidia-ml.so without a driver
    assert by_name["torch"].ok and "is_available() is False" in by_name["torch"].note
    assert inv.backends["gloo"].usable
    assert not inv.backends["nccl"].usable


def test_cpu_cores(inv: Inventory) -> None:
    assert inv.cpu_logical >= 1 and inv.cpu_cores >= 1
    if hasattr(os, "sched_getaffinity"):
        assert inv.cpu_affinity == len(os.sched_getaffinity(0))
        assert 1 <= inv.cpu_affinity <= inv.cpu_logical


def test_backends_present(inv: Inventory) -> None:
    assert set(inv.backends) == {"gloo", "nccl", "mpi", "horovod", "deepspeed"}
    for b in inv.backends.values():
        assert b.detail, b
    assert inv.backends["deepspeed"].usable  # installed by ./course setup
    assert "communication" in inv.backends["deepspeed"].detail
    assert logging.getLogger("DeepSpeed").filters == []  # the quiet import cleaned up after itself


def test_nccl_needs_a_gpu(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(torch.distributed, "is_nccl_available", lambda: True)
    assert not devices._torch_backends(0)["nccl"].usable
    assert "at least one GPU" in devices._torch_backends(0)["nccl"].detail
    assert devices._torch_backends(2)["nccl"].usable


def test_json_ready(inv: Inventory) -> None:
    doc = json.loads(json.dumps(inv.to_dict()))
    assert doc["cpu_cores"] == inv.cpu_cores and len(doc["sources"]) == 4


# --- failures are recorded, not raised ---------------------------------------------------------------


def test_gputil_import_failure_is_recorded(monkeypatch: pytest.MonkeyPatch) -> None:
    _without(monkeypatch, "GPUtil", ModuleNotFoundError("No module named 'distutils'"))
    result = inventory(include_tf=False, include_deepspeed=False)
    gputil = result.sources[0]
    assert gputil.name == "gputil" and not gputil.ok and gputil.devices == []
    assert "ModuleNotFoundError" in gputil.error and "distutils" in gputil.error and "3.12" in gputil.error
    assert [s.name for s in result.sources] == GPU_SOURCES  # the other sources still ran


def test_nvml_init_failure_is_recorded(monkeypatch: pytest.MonkeyPatch) -> None:
    pynvml = pytest.importorskip("pynvml")

    def no_driver() -> None:
        raise pynvml.NVMLError(pynvml.NVML_ERROR_DRIVER_NOT_LOADED)

    monkeypatch.setattr(pynvml, "nvmlInit", no_driver)
    report = devices._probe("nvml", devices.probe_nvml)
    assert not report.ok and "Driver Not Loaded" in report.error


def test_tensorflow_skipped_is_a_failed_source() -> None:
    result = inventory(include_tf=False, include_deepspeed=False)
    tf = result.sources[-1]
    assert tf.name == "tensorflow" and not tf.ok and "skipped" in tf.error
    assert result.backends["deepspeed"].detail in ("installed (not imported)",
                                                   "not installed: run ./course setup")


def test_no_tf_no_deepspeed_keeps_the_process_free_of_them() -> None:
    code = ("import sys; from dtutor.devices import inventory; "
            "inventory(include_tf=False, include_deepspeed=False); "
            "print(sorted(m for m in ('tensorflow', 'deepspeed') if m in sys.modules))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300,
                         check=True)
    assert out.stdout.strip() == "[]"


# --- fake GPUs: nvidia-smi for GPUtil, a fake pynvml ---------------------------------------------------

FAKE_UUID = "GPU-5c2e1f0a-1111-2222-3333-444455556666"


def _fake_nvidia_smi(tmp_path, monkeypatch: pytest.MonkeyPatch) -> None:
    script = tmp_path / "nvidia-smi"
    script.write_text(f"#!/bin/sh\necho '0, {FAKE_UUID}, 37, 16384, 4096, 12288, 550.54, Tesla T4, 123, "
                      "Disabled, Disabled, 41'\n")
    script.chmod(0o755)
    monkeypatch.setenv("PATH", f"{tmp_path}{os.pathsep}{os.environ['PATH']}")


def _fake_pynvml() -> types.SimpleNamespace:
    calls: list[str] = []
    mem = types.SimpleNamespace(total=16384 * devices.MIB, free=12288 * devices.MIB)
    return types.SimpleNamespace(
        calls=calls,
        nvmlInit=lambda: calls.append("init"),
        nvmlShutdown=lambda: calls.append("shutdown"),
        nvmlSystemGetDriverVersion=lambda: b"550.54",
        nvmlDeviceGetCount=lambda: 1,
        nvmlDeviceGetHandleByIndex=lambda i: f"handle{i}",
        nvmlDeviceGetName=lambda h: "Tesla T4",
        nvmlDeviceGetUUID=lambda h: FAKE_UUID,
        nvmlDeviceGetMemoryInfo=lambda h: mem,
        nvmlDeviceGetUtilizationRates=lambda h: (_ for _ in ()).throw(RuntimeError("Not Supported")),
        nvmlDeviceGetCudaComputeCapability=lambda h: (7, 5),
    )


@pytest.mark.skipif(sys.platform == "win32", reason="fake nvidia-smi is a shell script")
def test_gputil_parses_nvidia_smi(tmp_path, monkeypatch: pytest.MonkeyPatch) -> None:
    pytest.importorskip("GPUtil")
    _fake_nvidia_smi(tmp_path, monkeypatch)
    report = devices.probe_gputil()
    assert report.ok and len(report.devices) == 1
    g = report.devices[0]
    assert (g.index, g.name, g.uuid, g.driver) == (0, "Tesla T4", FAKE_UUID, "550.54")
    assert (g.memory_total_mib, g.memory_free_mib, g.memory_used_mib) == (16384, 12288, 4096)
    assert g.utilization_pct == pytest.approx(37)


def test_nvml_probe_with_fake_library(monkeypatch: pytest.MonkeyPatch) -> None:
    fake = _fake_pynvml()
    _fake_module(monkeypatch, "pynvml", fake)
    report = devices.probe_nvml()
    assert report.ok and fake.calls == ["init", "shutdown"]
    g = report.devices[0]
    assert (g.name, g.driver, g.compute_capability) == ("Tesla T4", "550.54", "7.5")
    assert g.memory_total_mib == 16384
    assert g.utilization_pct is None  # "Not Supported" on this GPU: left unknown, not an error


@cpu_only  # a real GPU would show up next to the fake one
@pytest.mark.skipif(sys.platform == "win32", reason="fake nvidia-smi is a shell script")
def test_inventory_merges_fake_gputil_and_nvml(tmp_path, monkeypatch: pytest.MonkeyPatch) -> None:
    pytest.importorskip("GPUtil")
    _fake_nvidia_smi(tmp_path, monkeypatch)
    _fake_module(monkeypatch, "pynvml", _fake_pynvml())
    result = inventory(include_tf=False, include_deepspeed=False)
    (gpu,) = result.gpus
    assert gpu.sources == ["gputil", "nvml"]
    assert gpu.utilization_pct == pytest.approx(37)  # only GPUtil knew it
    assert gpu.compute_capability == "7.5"  # only NVML knew it


# --- merging ------------------------------------------------------------------------------------------


def test_merge_one_gpu_from_three_sources() -> None:
    nvml = SourceReport("nvml", True, [Accelerator(0, "A100", "GPU-ABC-1", 40960, 40000, 3.0, "550.54")])
    torch_r = SourceReport("torch", True, [Accelerator(0, "NVIDIA A100", "abc-1", 40536,
                                                       compute_capability="8.0")])
    tf = SourceReport("tensorflow", True, [Accelerator(0, "NVIDIA A100-SXM4-40GB", compute_capability="8.0")])
    (gpu,) = merge_devices([nvml, torch_r, tf])
    assert gpu.sources == ["nvml", "torch", "tensorflow"]
    assert (gpu.name, gpu.memory_total_mib, gpu.driver) == ("A100", 40960, "550.54")  # first source wins
    assert gpu.compute_capability == "8.0"  # filled in from torch
    assert gpu.memory_used_mib == 960


def test_merge_keeps_different_gpus_apart() -> None:
    nvml = SourceReport("nvml", True, [Accelerator(0, "T4", "GPU-aaa"), Accelerator(1, "T4", "GPU-bbb")])
    # CUDA_VISIBLE_DEVICES=1: torch calls physical GPU 1 "cuda:0"; the UUID says which one it is
    torch_r = SourceReport("torch", True, [Accelerator(0, "T4", "bbb", compute_capability="7.5")])
    merged = merge_devices([nvml, torch_r, SourceReport("gputil", False, error="nvidia-smi not found")])
    assert [(g.index, g.uuid, g.compute_capability, g.sources) for g in merged] == [
        (0, "GPU-aaa", None, ["nvml"]),
        (1, "GPU-bbb", "7.5", ["nvml", "torch"]),
    ]


def test_import_quietly_hides_what_an_import_writes_to_file_descriptor_2(tmp_path, monkeypatch, capfd) -> None:
    (tmp_path / "noisy_banner.py").write_text("import os\nos.write(2, b'C++ start-up line\\n')\nVALUE = 3\n")
    monkeypatch.syspath_prepend(str(tmp_path))
    assert devices.import_quietly("noisy_banner").VALUE == 3
    os.write(2, b"after\n")  # file descriptor 2 works again afterwards
    assert capfd.readouterr().err == "after\n"


def test_merge_of_nothing_is_empty() -> None:
    assert merge_devices([SourceReport("nvml", False, error="x"), SourceReport("torch", True)]) == []


# --- recommendations ----------------------------------------------------------------------------------


def _by_notebook(recs) -> dict:
    return {r.notebook: r for r in recs}


def test_recommendations_cover_every_notebook(inv: Inventory) -> None:
    recs = recommend_notebook_runs(inv)
    assert [r.notebook for r in recs] == list(NOTEBOOK_TOPICS)
    for r in recs:
        assert r.mode in ("gpu", "simulated", "unavailable") and r.how
        assert (r.workers == 0) == (r.mode == "unavailable")


@cpu_only
def test_cpu_recommendation_is_simulated_gloo(inv: Inventory) -> None:
    recs = _by_notebook(recommend_notebook_runs(inv))
    assert (recs["02"].mode, recs["02"].backend) == ("simulated", "gloo")
    assert recs["02"].workers >= 2 and "gloo" in recs["02"].how
    assert recs["04"].mode == "simulated" and "logical CPU devices" in recs["04"].how
    assert recs["06"].mode == "simulated" and recs["06"].backend == "gloo"
    assert (recs["05"].workers, recs["05"].backend) == (2, "gloo") and "processes" in recs["05"].how  # as 05 runs
    assert recs["08"].mode == "simulated" and "batch scripts" in recs["08"].how
    assert recs["01"].mode == recs["05"].mode == recs["07"].mode == "simulated"
    assert recs["01"].workers == 1 and "calls the module" in recs["01"].how  # DataParallel's CPU pass-through
    assert recommend_notebook_runs(inv, simulated_workers=3)[1].workers == 3


def test_four_gpus_recommend_nccl_with_four_ranks() -> None:
    gpus = [Accelerator(i, "A100", f"GPU-{i}", 40960, 40000) for i in range(4)]
    fake = Inventory(
        sources=[SourceReport("nvml", True, gpus), SourceReport("tensorflow", True, gpus)],
        gpus=gpus, cpu_logical=32, cpu_affinity=32,
        backends={"gloo": Backend("gloo", True), "nccl": Backend("nccl", True), "mpi": Backend("mpi", False),
                  "horovod": Backend("horovod", True, "frameworks: torch; built with: gloo, nccl"),
                  "deepspeed": Backend("deepspeed", True, "0.19.8: accelerator cuda, communication nccl")},
    )
    recs = _by_notebook(recommend_notebook_runs(fake))
    for nb in ("02", "03", "06"):
        assert (recs[nb].mode, recs[nb].workers, recs[nb].backend) == ("gpu", 4, "nccl"), recs[nb]
    assert recs["01"].mode == recs["04"].mode == recs["05"].mode == recs["07"].mode == "gpu"
    assert recs["04"].workers == 4 and recs["04"].backend == "NcclAllReduce"
    assert (recs["05"].workers, recs["05"].backend) == (2, "nccl")  # two stages, one per GPU
    assert recs["01"].workers == 4


def test_missing_horovod_says_how_to_get_it(inv: Inventory, monkeypatch: pytest.MonkeyPatch) -> None:
    real_find_spec = devices.backends.importlib.util.find_spec
    monkeypatch.setattr(devices.backends.importlib.util, "find_spec",
                        lambda name, *a: None if name == "horovod" else real_find_spec(name, *a))
    backend = devices._horovod_backend()
    assert not backend.usable and "./course setup" in backend.detail
    no_hvd = Inventory(inv.sources, inv.gpus, inv.cpu_logical, inv.cpu_affinity,
                       {**inv.backends, "horovod": backend})
    rec = _by_notebook(recommend_notebook_runs(no_hvd))["03"]
    assert rec.mode == "unavailable" and "./course setup" in rec.how


def test_the_inventory_and_recommendations_are_tables_with_the_values() -> None:
    gpu = Accelerator(0, "A100", "GPU-0", 40960.0, 40000.4, None, "550.54", "8.0", ["nvml", "torch"])
    fake = Inventory(sources=[SourceReport("nvml", True, [gpu]), SourceReport("gputil", False, error="no smi")],
                     gpus=[gpu], cpu_logical=32, cpu_affinity=16,
                     backends={"gloo": Backend("gloo", True, "built into torch"), "nccl": Backend("nccl", False),
                               "horovod": Backend("horovod", False), "deepspeed": Backend("deepspeed", False)})
    sources, gpus, backends = devices.table_inventory(fake)
    assert sources.attrs["title"] == "GPU sources"
    assert sources.values.tolist()[1] == ["gputil", "failed", 0, "no smi"]
    assert sources.values.tolist()[0][:3] == ["nvml", "ok", 1] and pd.isna(sources.loc[0, "detail"])
    assert gpus.attrs == {"title": "GPUs (merged): 1", "notes": ["CPU cores: 32 logical, 16 usable by this process"]}
    row = gpus.iloc[0]
    assert (row["name"], row["MiB total"], row["MiB free"], row["cc"], row["sources"]) == (
        "A100", 40960, 40000, "8.0", "nvml+torch") and pd.isna(row["util %"])  # unknown: missing, not 0
    assert backends.values.tolist()[:2] == [["gloo", "yes", "built into torch"], ["nccl", "no", ""]]
    recs = devices.table_recommendations(recommend_notebook_runs(fake))
    assert list(recs["nb"]) == list(NOTEBOOK_TOPICS) and recs.attrs["title"] == "How the course runs here"
    assert recs.set_index("nb").loc["01", ["strategy", "mode", "workers"]].tolist() == ["DataParallel", "gpu", 1]


# --- command line -------------------------------------------------------------------------------------


def _cli(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "dtutor.devices", *args],
                          capture_output=True, text=True, timeout=300)


def test_cli_prints_tables() -> None:
    out = _cli()
    assert out.returncode == 0, out.stderr
    for line in ("GPU sources", "GPUs (merged):", "CPU cores:", "Backends", "How the course runs here",
                 "gputil", "nvml", "tensorflow", "deepspeed", "DDP", "TF MirroredStrategy"):
        assert line in out.stdout, line
    assert "Setting accelerator" not in out.stdout + out.stderr  # DeepSpeed was imported quietly
    if not HAS_GPU:
        assert "GPUs (merged): 0" in out.stdout


def test_cli_json_parses() -> None:
    out = _cli("--json", "--no-tf")
    assert out.returncode == 0, out.stderr
    doc = json.loads(out.stdout)
    sources = {s["name"]: s for s in doc["inventory"]["sources"]}
    assert list(sources) == GPU_SOURCES and "skipped" in sources["tensorflow"]["error"]
    assert doc["inventory"]["cpu_cores"] >= 1
    assert [r["notebook"] for r in doc["recommendations"]] == list(NOTEBOOK_TOPICS)



def test_a_failed_quiet_import_shows_what_it_printed(tmp_path, monkeypatch, capfd) -> None:
    (tmp_path / "broken_banner.py").write_text("import os\nos.write(2, b'C++ start-up line\\n')\n1 / 0\n")
    monkeypatch.syspath_prepend(str(tmp_path))
    with pytest.raises(ZeroDivisionError):
        devices.import_quietly("broken_banner")
    assert capfd.readouterr().err == "C++ start-up line\n"  # shown, not lost with the import
