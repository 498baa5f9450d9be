"""From runs to the table (dtutor.bench.rows): medians, paired efficiency, ceiling, proofs, bytes vs theory.

``fake_bench_result`` (conftest) builds a whole ``bench all`` result from invented runs (no process starts).
"""

import json

import pytest
from conftest import CNN_BYTES as G
from conftest import fake_bench_records, fake_bench_result

from dtutor.bench import rows
from dtutor.strategies import STRATEGIES


@pytest.fixture(scope="module")
def table():
    return {row["key"]: row for row in fake_bench_result()["rows"]}


def test_the_ceiling_is_two_independent_runs_over_twice_one_alone_each_round():
    runs = rows.index(fake_bench_records())
    assert rows.ceilings(runs) == pytest.approx([0.85, 0.85])
    assert fake_bench_result()["ceiling"] == pytest.approx(0.85) and fake_bench_result()["single_1"] == 105


def test_each_rounds_figures_are_kept_for_the_spread():
    runs = rows.index(fake_bench_records())
    assert rows.ceiling_by_round(runs) == pytest.approx({0: 0.85, 1: 0.85})
    assert rows.rate_by_round(runs, "ddp@2") == {0: 180, 1: 176}
    assert rows.rate_by_round(runs, "deepspeed_zero3@1") == {}  # failed runs give no rate
    assert rows.efficiency_by_round(runs, "ddp") == pytest.approx({0: 0.9, 1: 0.88})


def test_rates_are_medians_and_efficiency_the_median_of_each_rounds_pair(table):
    ddp = table["ddp"]
    assert ddp["samples_per_s_1"] == 100 and ddp["samples_per_s_2"] == 178
    assert ddp["efficiency"] == pytest.approx(0.89)  # median of 0.90 and 0.88
    assert ddp["vs_ceiling"] == pytest.approx(0.89 / 0.85)


def test_bytes_are_the_busiest_workers_against_theory(table):
    assert table["ddp"]["bytes_counted"] == G and table["ddp"]["bytes_theory"] == G
    assert table["ddp"]["bytes_match"] and table["ddp"]["bytes_ratio"] == 1.0
    zero3 = table["deepspeed_zero3"]
    assert zero3["bytes_theory"] == 1.5 * G and zero3["bytes_ratio"] == pytest.approx(0.86)
    assert zero3["bytes_match"] is False and zero3["model_state_bytes"] == G
    assert table["mirrored"]["bytes_theory"] is None  # one process: nothing crosses a link
    assert table["single"]["bytes_theory"] == 0.0 and table["single"]["bytes_match"]


def test_proofs_use_each_strategys_reference_and_tolerance(table):
    assert table["ddp"]["proof"] == {"reference": "proof:reference", "tolerance": STRATEGIES["ddp"].tolerance,
                                     "difference": 1e-8, "passed": True}
    assert table["deepspeed_zero3"]["proof"]["reference"] == "proof:ddp"
    assert table["deepspeed_zero3"]["proof"]["difference"] == 0.0  # the same as DDP's
    assert table["single"]["proof"]["passed"] and table["single"]["proof"]["tolerance"] == 0.0  # bit for bit
    assert table["mirrored"]["proof"]["passed"] is False  # 1e-3 from the TF reference: a failed proof shows


def test_failures_and_skips_are_kept_with_their_reasons(table):
    assert table["deepspeed_zero3"]["errors"] == ["RuntimeError: boom"]
    assert table["deepspeed_zero3"]["samples_per_s_1"] is None and table["deepspeed_zero3"]["efficiency"] is None
    assert table["single"]["skipped"] == {2: "one device by definition"}
    assert table["single"]["samples_per_s_2"] is None and table["single"]["workers_measured"] == 1
    assert table["deepspeed_zero3"]["workers_measured"] == 2 and table["ddp"]["batch_measured"] == 64


def test_cpu_per_step_separates_the_main_thread_from_the_others(table):
    assert table["horovod"]["main_thread_cpu_per_step"] == pytest.approx(0.095)
    assert table["horovod"]["other_threads_cpu_per_step"] == pytest.approx(0.015)


def test_every_proof_is_compared_with_its_registry_entrys_reference_and_tolerance():
    runs = {"single": "proof:reference", "ddp": "proof:ddp", "tf_single": "proof:tf_reference"}
    for name, info in STRATEGIES.items():
        reference = "ceiling" if name == "single" else runs[info.reference]  # the ceiling repeats the 1-worker run
        assert rows.proof_reference(name) == (reference, info.tolerance)


def test_model_facts_are_the_cnns_cut_and_linear_pair():
    assert rows.model_facts("cnn", 2) == {"boundaries": [1600], "pairs": [(1600, 10)]}


def test_the_result_survives_a_json_round_trip_without_the_parameters():
    result = fake_bench_result()
    back = json.loads(json.dumps(result, allow_nan=False))
    assert set(back) == set(result) and len(back["records"]) == len(result["records"]) == 32
    assert not any("parameters" in rank for record in back["records"] for rank in record["ranks"])  # arrays dropped
    assert [row["key"] for row in back["rows"]] == ["single", "ddp", "horovod", "deepspeed_zero3", "mirrored"]
    assert [row["proof"] for row in back["rows"]] == [row["proof"] for row in result["rows"]]
    assert back["rows"][1]["efficiency"] == pytest.approx(0.89) and back["machine"] == result["machine"]
