"""The cost model's check against bench all's rows: a small result worked out by hand, and the recorded one."""

import json

import pytest

from dtutor.bench import cost_model as cm
from dtutor.bench import model_check as mc
from dtutor.bench.report import RESULTS
from dtutor.tables import text

CNN_FLOPS_PER_SAMPLE = 14_778_624  # forward and backward, test_bench_cost_model derives it layer by layer


def _row(key, rate_1, rate_2=None, **extra):
    return {"key": key, "label": key, "framework": "torch", "parallelism": "data", "samples_per_s_1": rate_1,
            "samples_per_s_2": rate_2, **extra}


def test_a_ddp_row_predicted_by_hand():
    # single: 10 samples per step at 100 samples/s = 0.1 s per step, so the rate is 10 x FLOPs/sample / 0.1 s
    # ddp at 2 workers, 10 samples each: compute 0.1 s; all-reduce of 1 MB: 2 x 1 ms + 1 MB / 100 MB/s = 12 ms in
    # one call, the last bucket, which backward cannot hide: 0.112 s predicted; measured 20 / 160 per s = 0.125 s
    result = {"mode": "quick", "batch_per_worker": 10, "single_1": 100.0, "ceilings": [1.1, 1.3],
              "rows": [_row("single", 100.0), _row("ddp", 100.0, 160.0, collectives={"all_reduce": 1e6},
                                                     calls={"all_reduce": 1.0}, batch_measured=64)]}
    checked = mc.check_bench_all(result, cm.Link(alpha_s=1e-3, beta_bytes_per_s=1e8))
    assert checked["rate_flops_per_s"] == pytest.approx(10 * CNN_FLOPS_PER_SAMPLE / 0.1)
    single, ddp = checked["rows"]
    assert single["runs"][1]["error"] == pytest.approx(0.0, abs=1e-12)  # the calibration row
    two = ddp["runs"][2]
    assert (two["compute_s"], two["exposed_s"], two["step_s"]) == pytest.approx((0.1, 0.012, 0.112))
    assert two["measured_s"] == pytest.approx(0.125)
    assert two["error"] == pytest.approx(0.112 / 0.125 - 1)  # -10.4%: within 25%, no explanation
    assert ddp["explanation"] == ""


def test_a_row_missing_by_more_than_25_percent_is_explained_from_its_measurements():
    # 2 workers measured at 20 / 100 = 0.2 s against 0.1 s predicted (-50%); its background threads took 60 ms
    # of CPU per step of 200 ms: that is the explanation
    result = {"mode": "quick", "batch_per_worker": 10, "single_1": 100.0, "ceilings": [],
              "rows": [_row("single", 100.0), _row("horovod", 100.0, 100.0, wall_per_step=0.2,
                                                    main_thread_cpu_per_step=0.1, other_threads_cpu_per_step=0.06)]}
    horovod = mc.check_bench_all(result, cm.Link(0.0, 1e9))["rows"][1]
    assert horovod["runs"][2]["error"] == pytest.approx(-0.5)
    assert "background threads took 60 ms of CPU per step (30% of the step)" in horovod["explanation"]


def test_every_recorded_row_is_predicted_and_each_large_miss_explained():
    result = json.loads((RESULTS / "cpu" / "bench_all_full.json").read_text())
    checked = mc.check_bench_all(result)  # the recorded all-reduce's α-β link
    assert [row["key"] for row in checked["rows"]] == [row["key"] for row in result["rows"]]
    for row, recorded in zip(checked["rows"], result["rows"], strict=True):
        for workers, run in row["runs"].items():
            measured = result["batch_per_worker"] * workers / recorded[f"samples_per_s_{workers}"]
            assert run["measured_s"] == pytest.approx(measured)
            assert run["step_s"] == pytest.approx(run["compute_s"] + run["exposed_s"] + run["bubble_s"])
        missed = any(abs(run["error"]) > mc.EXPLAIN_ABOVE for run in row["runs"].values())
        assert bool(row["explanation"]) == missed
    frame = mc.table_check(checked)
    assert len(frame) == len(result["rows"]) and "err % 2 w" in frame.columns
    assert max(len(line) for line in text(frame).splitlines()) <= 150
