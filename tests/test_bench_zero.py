"""``python -m dtutor.bench zero``: rows of measured against formula, the table's verdict, the plot, the command."""

import json

import pytest

from dtutor import bench, tables
from dtutor.bench import zero

PSI = 1_000_000


def fake_rank(rank: int, run: dict, **bytes_: int) -> dict:
    """A measurement as ``memory.measure_run`` returns it."""
    base = dict.fromkeys(["parameters", "gradients", "host_gradients", "master_weights", "optimizer_state",
                          "gathered_parameters", "reduce_bucket", "buffers", "bucket_capacity", "bucket_resident"], 0)
    return {"run": run, "rank": rank, "ranks": 2, "parameter_count": PSI, "moment": "after backward",
            "bytes": {**base, **bytes_}}


ZERO2 = {"strategy": "deepspeed", "zero_stage": 2, "precision": "bf16"}


def zero2(rank: int, buffers: int) -> dict:
    return fake_rank(rank, ZERO2, parameters=2 * PSI, gradients=PSI, master_weights=2 * PSI,
                     optimizer_state=4 * PSI, buffers=buffers, bucket_capacity=10**9, bucket_resident=2 * PSI)


def test_a_row_sets_each_part_beside_its_formula():
    row = zero.memory_row([zero2(0, 300), zero2(1, 100)])
    assert row["configuration"] == "ZeRO-2 bf16" and row["within_target"]
    assert row["formula"]["parameters"] == 2 * PSI and row["formula"]["optimizer"] == 6 * PSI
    assert row["ratio"] == {"parameters": 1.0, "gradients": 1.0, "optimizer": 1.0, "total": 1.0}
    assert row["other"] == [300, 100] and row["total"] == [9 * PSI, 9 * PSI]


def test_the_worst_rank_decides_the_ratio_and_the_verdict():
    off = zero2(1, 0)
    off["bytes"]["gradients"] = int(1.2 * PSI)
    row = zero.memory_row([zero2(0, 0), off])
    assert row["ratio"]["gradients"] == pytest.approx(1.2) and not row["within_target"]
    table = zero.table_zero([row], verdict=True)
    assert table.attrs["notes"][0].endswith("every cell within 10% of its formula: missed")
    cells = table.iloc[0]
    assert cells[("gradients MB", "measured")] == "1.0-1.2" and cells[("gradients MB", "formula")] == 1.0  # ranges
    assert cells[("configuration", "")] == "ZeRO-2 bf16" and cells[("total", "ratio")] == pytest.approx(1.022, abs=1e-3)
    good = zero.table_zero([zero.memory_row([zero2(0, 0), zero2(1, 0)])], verdict=True)
    assert good.attrs["notes"][0].endswith("every cell within 10% of its formula: met")
    assert "reduce bucket (ZeRO-2 bf16): 1,000 MB allocated, 2.0 MB resident" in " ".join(good.attrs["notes"])


def test_labels_name_stage_precision_optimizer_and_offload():
    assert zero.label({"strategy": "fsdp"}) == "FSDP fp32"
    assert zero.label({**ZERO2, "offload": True, "optimizer": "sgd"}) == "ZeRO-2 bf16 sgd + offload"


def test_the_plot_titles_the_measured_ratio():
    figure = zero.plot_memory([zero.memory_row([zero2(0, 0), zero2(1, 0)])])
    assert figure.axes[0].get_title().endswith("measured / formula 1.000 to 1.000")
    assert [t.get_text() for t in figure.axes[0].get_xticklabels()] == ["ZeRO-2 bf16"]


def test_the_command_prints_and_writes_the_quick_table(tmp_path, capsys):
    out = tmp_path / "zero.json"
    bench.main(["zero", "--mode", "quick", "--json", str(out)])
    printed = " ".join(capsys.readouterr().out.split())
    rows = json.loads(out.read_text())
    assert [row["configuration"] for row in rows] == ["ZeRO-3 bf16", "FSDP fp32"]
    assert all(row["within_target"] for row in rows) and "every cell within 10% of its formula: met" in printed
    assert {"parameters", "gradients", "optimizer", "total", "other", "formula", "ratio", "moment"} <= rows[0].keys()


def test_gradients_waiting_in_the_bucket_are_reported_apart():
    ranks = [zero2(0, 0), zero2(1, 0)]
    for rank in ranks:
        end_of_backward = {**rank["bytes"], "gradients": 0, "reduce_bucket": 2 * PSI}
        rank["moments"] = {"end of backward, before the reduction": end_of_backward, "after backward": rank["bytes"]}
    row = zero.memory_row(ranks)
    assert row["bucket_in_use"] == 2 * PSI and row["within_target"]  # not model state: the ratios do not see it
    notes = zero.table_zero([row]).attrs["notes"]
    assert "gradients in the reduce bucket at the end of backward (not counted): ZeRO-2 bf16 2.0 MB" in notes


def test_offload_says_what_a_gpu_would_hold_and_why_its_total_matches_zero1():
    offload = {**ZERO2, "offload": True}
    ranks = [fake_rank(rank, offload, parameters=2 * PSI, host_gradients=2 * PSI, master_weights=2 * PSI,
                       optimizer_state=4 * PSI) for rank in (0, 1)]
    zero1 = {"strategy": "deepspeed", "zero_stage": 1, "precision": "bf16"}
    plain = [fake_rank(rank, zero1, parameters=2 * PSI, gradients=2 * PSI, master_weights=2 * PSI,
                       optimizer_state=4 * PSI) for rank in (0, 1)]
    rows = [zero.memory_row(plain), zero.memory_row(ranks)]
    assert rows[1]["device"] == [2 * PSI] * 2 and rows[1]["host"] == [8 * PSI] * 2 and rows[0]["host"] == [0, 0]
    table = zero.table_zero(rows)  # a learner's table: no verdict unless the benchmark asks
    notes = " ".join(table.attrs["notes"])
    assert "each GPU would hold 2.0 MB" in notes and "host memory would hold 8.0 MB" in notes
    assert "equals ZeRO-1 bf16's by coincidence" in notes and "when N = 2" in notes
    assert table[("device", "MB")].tolist() == ["10.0", "2.0"]  # offload: the rest is in host memory
    assert table[("total MB", "formula")].tolist() == [10.0, 10.0]
    text = tables.text(table)
    assert "met" not in text.split() and max(map(len, text.splitlines())) <= 150
