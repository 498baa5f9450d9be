"""``python -m dtutor.bench gpu`` on a CPU: the plan checked and written (--dry-run), a machine without CUDA refused in
one line, the run's bookkeeping with stand-in parts, the reader's tables, and the measurements on tiny sizes.

Modules: dtutor.bench.gpu (the plan), gpu_run (the run), gpu_parts (inside the processes), gpu_report (the reader).
Nothing here launches a process: the real parts need a GPU machine.
"""

import json
import types

import pytest

from dtutor import bench
from dtutor.bench import gpu, gpu_parts, gpu_report, gpu_run
from dtutor.result import EpochStats, RunResult
from dtutor.strategies import STRATEGIES

# The CNN's FLOPs per sample, by hand (2 per multiply-add): forward conv1 26x26x32x9x2 = 389,376, conv2 11x11x64x288x2
# = 4,460,544, fc 1600x64x2 = 204,800 and 64x10x2 = 1,280; backward twice forward (weight and input gradients) less
# conv1's input gradient (the images need none): 3 x 5,056,000 - 389,376
CNN_TRAINING_FLOPS_PER_SAMPLE = 3 * 5_056_000 - 389_376


@pytest.fixture
def no_launch(monkeypatch):
    """Every launch (torchrun, a fresh process, ...) goes through ``supervise``: here it fails the test."""
    def refuse(commands, **options):
        raise AssertionError(f"a launch was started: {commands[0][:4]}")

    monkeypatch.setattr("dtutor.launch.runners.supervise", refuse)


def test_the_dry_run_checks_the_plan_and_writes_every_part_planned(tmp_path, capsys, no_launch):
    path = tmp_path / "plan.json"
    bench.main(["gpu", "--dry-run", "--json", str(path)])
    written = json.loads(path.read_text())
    assert written["kind"] == "bench gpu" and written["dry_run"] and written["device"] is None
    assert {part["status"] for part in written["parts"].values()} == {"planned"}
    assert written["budget_s"] == sum(part["budget_s"] for part in written["parts"].values()) <= gpu.WINDOW_S
    assert {"dataparallel_memory", "two_ranks", "two_ranks_zero", "allreduce_2"} <= set(written["parts"])  # --gpus 2
    strategies = {run["strategy"] for part in written["parts"].values() for run in part["runs"]}
    assert strategies == {"single", "dataparallel", "ddp", "fsdp", "deepspeed"}
    zero = [(r["zero_stage"], r.get("offload", False)) for p in written["parts"].values() for r in p["runs"]
            if r["strategy"] == "deepspeed" and p["nprocs"] == 1]
    assert sorted(set(zero)) == [(1, False), (2, False), (2, True), (3, False), (3, True)]
    assert "two_ranks" in capsys.readouterr().out
    one_gpu = gpu.plan(1)
    assert all(part.min_gpus == part.nprocs == 1 for part in one_gpu)
    assert gpu.check_plan(one_gpu) == []


def test_the_plan_check_finds_each_kind_of_problem():
    good = gpu.plan(2)
    assert gpu.check_plan(good) == []
    bad = [gpu.Part("a", "", "train_many", 300, 200, runs=[{"strategy": "zero_infinity"}]),
           gpu.Part("a", "", "train_many", 200, 300, nprocs=2,
                    runs=[{"strategy": "deepspeed", "offload": True, "backend": "nccl"}])]
    problems = gpu.check_plan(bad)
    assert any("over the 480 s window" in p for p in problems) and any("share a name" in p for p in problems)
    assert any("budget 300 s over its timeout" in p for p in problems)
    assert any("unknown strategy 'zero_infinity'" in p for p in problems)
    assert any("2 ranks need 2 GPUs" in p for p in problems)
    assert any("offload: DeepSpeed offloads a partitioned optimizer" in p for p in problems)


def test_without_cuda_the_real_run_stops_with_one_line(monkeypatch, no_launch):
    monkeypatch.setattr("dtutor.config.gpu_count", lambda: 0)
    with pytest.raises(SystemExit, match="no CUDA GPU here .* python -m dtutor.bench gpu --dry-run"):
        bench.main(["gpu"])


def _stand_in(outcomes):
    """Runners that return or raise what ``outcomes`` says for each part, advancing a fake clock by its seconds."""
    clock = {"now": 0.0}

    def runner(part, timeout):
        seconds, value = outcomes[part.name]
        clock["now"] += seconds
        if isinstance(value, Exception):
            raise value
        return value
    return clock, runner


def test_the_run_records_each_part_ok_failed_or_skipped_and_the_reader_shows_it(tmp_path, monkeypatch):
    parts = [gpu.Part("inventory", "facts", "inventory", 10, 20),
             gpu.Part("train", "ddp", "train_many", 100, 200, runs=[{"strategy": "ddp", "backend": "nccl"}]),
             gpu.Part("broken", "x", "models", 100, 200),
             gpu.Part("late", "y", "models", 300, 400),
             gpu.Part("needs_pkg", "z", "models", 1, 5, requires=("no_such_package_here",)),
             gpu.Part("dataparallel_memory", "dp", "dataparallel_memory", 10, 20, min_gpus=2)]
    facts = {"gpus": [{"index": 0, "name": "NVIDIA H100 80GB HBM3", "memory_bytes": 80 * 2**30,
                       "capability": "9.0"}], "versions": {"torch": "2.13.0", "nccl": "2.27.5"},
             "peak": gpu_parts.peak_for("NVIDIA H100 80GB HBM3")}
    row = {"strategy": "ddp", "fields": {"strategy": "ddp"}, "ranks": 1, "samples_per_s": 5000.0, "step_s": 0.05,
           "peak_memory_bytes": 3 * 2**20}
    clock, runner = _stand_in({"inventory": (5, facts), "train": (150, {"rows": [row]}),
                               "broken": (50, RuntimeError("CUDA error: out of memory"))})
    monkeypatch.setattr(gpu_run, "time", types.SimpleNamespace(monotonic=lambda: clock["now"]))
    monkeypatch.setattr(gpu_run, "RUNNERS", dict.fromkeys(gpu_run.RUNNERS, runner))
    result = gpu_run.run_parts(gpu.skeleton(parts, dry_run=False), parts, gpus=1, progress=lambda line: None)
    status = {name: (part["status"], part["error"]) for name, part in result["parts"].items()}
    assert status["inventory"] == ("ok", None) and status["train"] == ("ok", None)
    assert status["broken"] == ("failed", "RuntimeError: CUDA error: out of memory")
    assert status["late"] == ("skipped", "275 s left of the 480 s window, budget 300 s")  # 480 - 5 - 150 - 50
    assert status["needs_pkg"] == ("skipped", "no_such_package_here not installed")
    assert status["dataparallel_memory"] == ("skipped", "needs 2 GPUs, 1 here")
    assert result["device"] == "NVIDIA H100 80GB HBM3" and result["versions"]["nccl"] == "2.27.5"
    assert result["parts"]["train"]["result"]["rows"][0]["part"] == "train" and result["seconds"] == 205
    path = gpu.write(result, tmp_path / "gpu" / gpu.default_path(result).name)
    assert path.name == f"nvidia-h100-80gb-hbm3-{result['date']}.json"
    (tmp_path / "gpu" / "2026-01-01_old_bench_all.json").write_text(json.dumps({"mode": "full", "rows": []}))
    found = gpu_report.newest(tmp_path / "gpu")
    assert found["file"] == f"gpu/{path.name}"
    device, table_parts, training = gpu_report.tables(found)
    assert device["name"].tolist() == ["NVIDIA H100 80GB HBM3"] and "989.4 TFLOP/s" in device.attrs["notes"][0]
    assert table_parts["status"].tolist() == ["ok", "ok", "failed", "skipped", "skipped", "skipped"]
    assert training.loc[0, "step ms"] == 50.0 and training.loc[0, "peak MiB"] == 3
    assert gpu_report.newest(tmp_path / "nothing") is None


@pytest.mark.parametrize(("name", "gpu_name"), [
    ("NVIDIA H100 80GB HBM3", "H100 SXM"), ("NVIDIA H100 PCIe", "H100 PCIe"), ("NVIDIA H200", "H200 SXM"),
    ("NVIDIA GH200 480GB", "GH200"),
    ("NVIDIA A100-SXM4-80GB", "A100"), ("NVIDIA L4", "L4"), ("NVIDIA L40S", "L40S"), ("NVIDIA A10", "A10"),
    ("NVIDIA A10G", None), ("Tesla V100-SXM2-16GB", None), (None, None)])
def test_the_peak_table_matches_device_names(name, gpu_name):
    found = gpu_parts.peak_for(name)
    assert (found and found["gpu"]) == gpu_name
    if found:
        assert found["source"].startswith("https://www.nvidia.com/")


def test_one_training_run_becomes_a_row():
    result = RunResult(0, 1, {"strategy": "fsdp", "global_batch": 256, "precision": "bf16"},
                       epochs=[EpochStats(0, 5, 1280, 2.3, 0.1, 9.0), EpochStats(1, 5, 1280, 2.2, 0.2, 0.5)],
                       step_losses=[2.3, 2.1], seconds=9.5, peak_memory_bytes=123, peak_memory_kind="cuda")
    row = gpu_parts.summarize(result)
    assert row["samples_per_s"] == 2560 and row["step_s"] == 0.1 and row["final_loss"] == 2.1  # warm-up skipped
    assert row["strategy"] in STRATEGIES and row["peak_memory_bytes"] == 123


def test_the_models_are_measured_with_counted_flops_on_tiny_sizes():
    tiny = {"cnn": {"batch": 8}, "transformer": {"batch": 2, "sequence": 16, "width": 32, "layers": 2, "heads": 4,
                                                 "vocab": 64}}
    found = gpu_parts.measure_models(["cnn", "transformer"], ["fp32", "bf16"], seconds=0.01, device="cpu", sizes=tiny)
    cnn = [row for row in found["rows"] if row["model"] == "cnn"]
    assert [row["flops_per_step"] for row in cnn] == [8 * CNN_TRAINING_FLOPS_PER_SAMPLE] * 2
    assert found["peak"] is None and all(row["mfu"] is None for row in found["rows"])  # no GPU: no peak
    for row in found["rows"]:
        assert row["steps_timed"] >= 3 and row["step_s"] > 0 and len(row["losses"]) == gpu_parts.WARMUP_STEPS + \
            row["steps_timed"]
    fp32, bf16 = (row for row in found["rows"] if row["model"] == "transformer")
    assert bf16["losses"][0] == pytest.approx(fp32["losses"][0], abs=0.05)  # same model and batch, 16-bit compute
    # 6 FLOPs per weight of a matrix and token (forward 2, backward 4): per layer 12 w^2 (Q, K, V, out, a 4w MLP),
    # and the head; attention's scores and weighted sum add up to 12 b s^2 w per layer (CUDA's kernels are counted)
    matrices, tokens = 2 * 12 * 32 * 32 + 32 * 64, 2 * 16
    assert 6 * matrices * tokens <= fp32["flops_per_step"] <= 6 * matrices * tokens + 2 * 12 * 2 * 16**2 * 32


def test_a_device_name_becomes_a_file_name():
    assert gpu.slug("NVIDIA H100 80GB HBM3") == "nvidia-h100-80gb-hbm3"
    assert gpu.slug("NVIDIA A100-SXM4-80GB") == "nvidia-a100-sxm4-80gb" and gpu.slug("") == "unknown"
