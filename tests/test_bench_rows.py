"""From runs to the table (dtutor.bench.rows): medians, paired efficiency, ceiling, proofs, bytes vs theory.

``fake_result`` builds a whole ``bench all`` result from invented runs (no process starts); the report and
claims tests use it too.
"""

import json

import numpy as np
import pytest

from dtutor.bench import rows, suite

G = 487_720
A = {"w": np.zeros(G // 4)}  # the reference's parameters: G bytes in fp32
NEAR = {"w": np.full(G // 4, 1e-8)}  # within every tolerance but the bitwise one
FAR = {"w": np.full(G // 4, 1e-3)}


def rank(rate, parameters=None, sent=None, state=3 * G, cpu=(0.1, 0.09), **more):
    return {"samples_per_s": rate, "parameters": parameters, "bytes_per_step": sent, "model_state_bytes": state,
            "model_state": {"parameters": G, "gradients": G, "optimizer": state - 2 * G},
            "wall_per_step": 0.12, "cpu_per_step": cpu[0], "main_thread_cpu_per_step": cpu[1], **more}


def record(name, round_, *ranks, workers=2, batch=64):
    return {"round": round_, "case": {"name": name, "workers": workers, "global_batch": batch}, "ranks": list(ranks)}


ROWS = [suite.Row("single", "single", "single", "torch", "inprocess", "data"),
        suite.Row("ddp", "ddp", "ddp", "torch", "torchrun", "data"),
        suite.Row("horovod", "horovod", "horovod", "torch", "horovodrun", "data"),
        suite.Row("deepspeed_zero3", "deepspeed", "deepspeed ZeRO-3", "torch", "torchrun", "data", {"zero_stage": 3}),
        suite.Row("mirrored", "mirrored", "mirrored", "tensorflow", "inprocess", "data")]


def fake_records():
    found = []
    for r, (alone, ceiling, ddp2, hvd2) in enumerate([(100, (90, 80), 180, 150), (110, (99, 88), 176, 143)]):
        found += [record("single@1", r, rank(alone, A), workers=1),
                  record("ceiling", r, rank(ceiling[0], A), rank(ceiling[1], A)),
                  record("ddp@1", r, rank(100), workers=1), record("ddp@2", r, rank(ddp2), rank(ddp2)),
                  record("horovod@1", r, rank(100), workers=1),
                  record("horovod@2", r, rank(hvd2, cpu=(0.12, 0.1)), rank(hvd2)),
                  record("deepspeed_zero3@1", r, {"name": "deepspeed_zero3@1", "error": "RuntimeError: boom"}),
                  record("deepspeed_zero3@2", r, rank(60), rank(60)),
                  record("mirrored@1", r, rank(50), workers=1), record("mirrored@2", r, rank(80)),
                  # the proof runs: parameters, bytes, model state
                  record("proof:reference", r, rank(None, A, 0.0), workers=1),
                  record("proof:ddp", r, rank(None, NEAR, G), rank(None, None, G)),
                  record("proof:horovod", r, rank(None, NEAR, G), rank(None, None, G)),
                  record("proof:deepspeed_zero3", r, rank(None, NEAR, 0.86 * 1.5 * G, state=G),
                         rank(None, None, 0.5 * G, state=G)),
                  record("proof:tf_reference", r, rank(None, A), workers=1),
                  record("proof:mirrored", r, rank(None, FAR))]
    return found


def fake_result():
    planned = {"rows": ROWS, "skipped": {"single": {2: "one device by definition"}}}
    table = rows.build_rows(planned, fake_records())
    machine = {"date": "2026-11-23T23:00:00+00:00", "cpus": 2, "gpu_text": ", no GPU", "gpus": [],
               "load_before": 0.5, "load_after": 0.7, "versions": {"torch": "2.13.0"}}
    return {"mode": "quick", "batch_per_worker": 64, "steps": 4, "epochs": 2, "repeats": 2, "machine": machine,
            "proof_setup": suite.PROOF, **table, "records": suite.strip(fake_records())}


@pytest.fixture(scope="module")
def table():
    return {row["key"]: row for row in fake_result()["rows"]}


def test_the_ceiling_is_two_independent_runs_over_twice_one_alone_each_round():
    runs = rows.index(fake_records())
    assert rows.ceilings(runs) == pytest.approx([0.85, 0.85])
    assert fake_result()["ceiling"] == pytest.approx(0.85) and fake_result()["single_1"] == 105


def test_each_rounds_figures_are_kept_for_the_spread():
    runs = rows.index(fake_records())
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
    assert table["ddp"]["proof"] == {"reference": "proof:reference", "tolerance": 1e-5, "difference": 1e-8,
                                     "passed": True}
    assert table["deepspeed_zero3"]["proof"]["reference"] == "proof:ddp"
    assert table["deepspeed_zero3"]["proof"]["difference"] == 0.0  # the same as DDP's
    assert table["single"]["proof"]["passed"] and table["single"]["proof"]["tolerance"] == 0.0
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
    assert rows.proof_reference("single") == ("ceiling", 0.0)
    assert rows.proof_reference("fsdp") == ("proof:ddp", 1e-6)
    assert rows.proof_reference("mirrored") == ("proof:tf_reference", 1e-5)
    assert rows.proof_reference("pipeline_1f1b") == ("proof:reference", 1e-5)


def test_model_facts_are_the_cnns_cut_and_linear_pair():
    assert rows.model_facts("cnn", 2) == {"boundaries": [1600], "pairs": [(1600, 10)]}


def test_the_result_is_json_ready():
    json.dumps({k: v for k, v in fake_result().items()})
