"""``python -m dtutor.bench all`` (dtutor.bench.suite): the plan from the registry, and a tiny real run.

No timing is asserted: the tiny run checks the table's structure and its deterministic facts only.
"""

import importlib.util
import json

import pytest

from dtutor.bench import report, suite
from dtutor.strategies import STRATEGIES


def test_the_rows_are_the_registry_with_deepspeed_once_per_zero_stage():
    rows = suite.registry_rows()
    assert [row.strategy for row in rows if row.strategy != "deepspeed"] == [n for n in STRATEGIES if n != "deepspeed"]
    assert [(row.key, row.extra) for row in rows if row.strategy == "deepspeed"] == [
        ("deepspeed_zero1", {"zero_stage": 1}), ("deepspeed_zero2", {"zero_stage": 2}),
        ("deepspeed_zero3", {"zero_stage": 3})]


def test_the_plan_runs_or_skips_every_row_at_each_worker_count_with_a_reason():
    planned = suite.plan(suite.MODES["tiny"], gpus=0)
    cases = {case["name"]: (key, case) for key, found in planned["launches"].items() for case in found}
    for row in planned["rows"]:
        for workers in (1, 2):
            assert (f"{row.key}@{workers}" in cases) != (workers in planned["skipped"].get(row.key, {}))
    assert planned["skipped"]["single"] == {2: "one device by definition (the ceiling row runs 2 of it at once)"}
    assert "GPU(s) here" in planned["skipped"]["dataparallel"][2]
    assert cases["ceiling"][0] == ("torchrun", 2) and cases["proof:reference"][0] == ("torchrun", 1)
    assert cases["proof:tf_reference"][0] == ("tf_process", 1) and cases["mirrored@2"][1]["replicas"] == 2
    assert cases["horovod_keras@2"][0] == ("horovodrun:tensorflow", 2)
    ddp = cases["ddp@2"][1]
    assert ddp["global_batch"] == 16 and ddp["fields"]["samples"] == 32 and "probe" not in ddp  # timed only
    assert cases["pipeline_1f1b@2"][1]["fields"]["micro_batches"] == 4


def test_every_row_has_a_proof_run_with_its_tests_set_up():
    planned = suite.plan(suite.MODES["tiny"], gpus=0)
    proofs = {case["name"]: (key, case) for key, found in planned["launches"].items() for case in found
              if case["name"].startswith("proof:")}
    runnable = [row.key for row in planned["rows"] if len(planned["skipped"].get(row.key, {})) < 2]
    assert "data_tensor" not in runnable  # a 2-D grid: 4 workers, in its test
    assert set(proofs) == {f"proof:{key}" for key in runnable if key != "single"} | {
        "proof:reference", "proof:tf_reference"}
    for name, (_, case) in proofs.items():
        assert case["probe"] and case["global_batch"] == 64 and case["fields"]["samples"] == 256
        assert case["workers"] == (1 if name in ("proof:dataparallel", "proof:reference", "proof:tf_reference")
                                   else 2)
    assert proofs["proof:deepspeed_zero2"][1]["fields"]["zero_stage"] == 2
    assert proofs["proof:pipeline_gpipe"][1]["fields"]["micro_batches"] == 4


def test_on_two_gpus_dataparallel_gets_a_launch_of_its_own():
    planned = suite.plan(suite.MODES["tiny"], gpus=2)
    assert [case["name"] for case in planned["launches"][(suite.TWO_GPUS, 1)]] == ["dataparallel@2",
                                                                                 "proof:dataparallel"]
    assert "dataparallel@1" in [case["name"] for case in planned["launches"][("torchrun", 1)]]


def test_what_is_missing_is_skipped_with_the_reason(monkeypatch):
    monkeypatch.setattr(importlib.util, "find_spec", lambda name, *a: None if name == "tensorflow" else object())
    row = next(r for r in suite.registry_rows() if r.strategy == "multiworker")
    assert suite.unavailable(row, 2, gpus=0) == "TensorFlow is not installed"


def test_bad_input_is_refused_before_anything_starts():
    with pytest.raises(ValueError, match="mode: must be one of quick, full, tiny"):
        suite.bench_all("fast")
    with pytest.raises(ValueError, match="micro_batches: 4 must divide the batch of each step, 3"):
        suite.plan(suite.Mode(batch_per_worker=3, steps=1, epochs=1, repeats=1), gpus=0)  # a pipeline's 3 / 4


def test_rounds_rotate_the_order():
    assert suite.rotated([1, 2, 3], 0) == [1, 2, 3] and suite.rotated([1, 2, 3], 4) == [2, 3, 1]
    assert suite.rotated([], 2) == []


@pytest.fixture(scope="module")
def tiny():
    """The PyTorch torchrun rows in tiny mode: two launches (1 process, 2 processes)."""
    keys = {"single", "dataparallel", "ddp", "fsdp", "pipeline_1f1b", "tensor_parallel"}
    return suite.bench_all("tiny", progress=lambda line: None,
                           rows=[row for row in suite.registry_rows() if row.key in keys])


def test_a_tiny_run_gives_one_row_per_strategy_every_proof_passing(tiny):
    assert tiny["proof_setup"] == suite.PROOF
    rows = {row["key"]: row for row in tiny["rows"]}
    assert list(rows) == ["single", "dataparallel", "ddp", "fsdp", "pipeline_1f1b", "tensor_parallel"]
    assert all(row["proof"]["passed"] and not row["errors"] for row in rows.values())
    assert rows["dataparallel"]["samples_per_s_2"] is None and 2 in rows["dataparallel"]["skipped"]
    assert all(rows[k]["samples_per_s_1"] > 0 and rows[k]["samples_per_s_2"] > 0 for k in ("ddp", "fsdp"))
    assert tiny["ceiling"] > 0 and rows["ddp"]["vs_ceiling"] == pytest.approx(rows["ddp"]["efficiency"] /
                                                                               tiny["ceiling"])


def test_a_tiny_run_counts_what_theory_says(tiny):
    rows = {row["key"]: row for row in tiny["rows"]}
    for key in ("ddp", "fsdp", "pipeline_1f1b", "tensor_parallel"):
        assert rows[key]["bytes_match"], (key, rows[key]["bytes_counted"], rows[key]["bytes_theory"])
    assert rows["ddp"]["bytes_theory"] == 487_720 and rows["ddp"]["model_state_bytes"] == 3 * 487_720
    assert rows["fsdp"]["model_state_bytes"] == 3 * 487_720 // 2  # every state sharded over 2 ranks
    assert rows["single"]["bytes_counted"] == 0


def test_a_tiny_run_is_json_and_prints_every_row(tiny):
    json.dumps(tiny)
    table = report.table_all(tiny)
    assert {"single", "ddp", "fsdp", "pipeline_1f1b", "tensor_parallel"} <= set(table["strategy"])


def test_the_command_line_prints_the_table_and_writes_the_json(monkeypatch, tmp_path, capsys):
    from conftest import fake_bench_result

    from dtutor import bench

    monkeypatch.setattr(suite, "bench_all", lambda mode: fake_bench_result() | {"mode": mode})
    bench.main(["all", "--mode", "quick", "--json", str(tmp_path / "all.json")])
    assert capsys.readouterr().out.startswith("quick mode on 2 CPU(s), no GPU")
    assert [row["key"] for row in json.loads((tmp_path / "all.json").read_text())["rows"]][:2] == ["single", "ddp"]
