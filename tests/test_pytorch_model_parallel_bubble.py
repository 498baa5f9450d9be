"""The bubble table, the memory table and ``python -m dtutor.bench pipeline``."""

import json

import pytest

from dtutor import bench
from dtutor.pytorch.model_parallel import bubble, demos, memory


def _row(schedule, m, measured, excess=5.0, peaks=(1, 1)):
    theory = bubble.theory_bubble(2, m)
    return {"schedule": schedule, "stages": 2, "micro_batches": m, "measured": measured, "median": measured,
            "theory": theory,
            "gap": measured - theory, "relative_gap": measured / theory - 1, "per_stage": [measured, measured],
            "span_ms": 100.0, "compute_ms": 10.0, "excess_ms": excess, "hop_ms": 1.25, "peak_held": list(peaks)}


ROWS = [_row("gpipe", 1, 0.52), _row("gpipe", 4, 0.25, peaks=(4, 4)), _row("gpipe", 8, 0.2, 20.0, (8, 8)),
        _row("1f1b", 8, 0.19, 20.0, (2, 1))]


def test_bubble_table_states_theory_gap_and_verdicts_from_the_numbers():
    lines = bubble.format_bubble(ROWS).splitlines()
    assert lines[1].split() == ["gpipe", "2", "1", "52.0%", "50.0%", "+2.0%", "+4%", "5.0", "1/1", "within",
                                "10%:", "met"]
    assert lines[2].endswith("within 10%: missed") and "20.0%" in lines[2]  # 25% against 20%: +25% relative
    assert not lines[3].rstrip().endswith(("met", "missed"))  # m = 8: no target, explained below
    assert lines[3].split()[-1] == "8/8" and lines[4].split()[-1] == "2/1"
    assert lines[-1] == ("at m = 8: the step is 20.0 ms longer than (m + p - 1) x 10.0 ms of compute; 16 boundary "
                         "crossings x 1.25 ms per hop = 20.0 ms of it is send/recv latency, the theory counts none; "
                         "the other 0.0 ms is stages waiting on uneven compute")


def test_bubble_plot_title_comes_from_the_largest_m():
    assert bubble.plot_bubble(ROWS).axes[0].get_title() == "p = 2 stages: the bubble; at m = 8 20% measured vs 11%"


def test_a_small_measurement_has_the_table_s_shape_and_the_schedules_activations():
    rows = demos.bubble_rows(2, micro_batches=(1, 2), width=64, layers_per_stage=1, micro_batch_size=8, repeats=1)
    assert [(r["schedule"], r["micro_batches"]) for r in rows] == [("gpipe", 1), ("gpipe", 2), ("1f1b", 2)]
    assert [r["peak_held"] for r in rows] == [[1, 1], [2, 2], [2, 1]]
    assert [r["theory"] for r in rows] == pytest.approx([1 / 2, 1 / 3, 1 / 3])
    assert all(0 < r["measured"] < 1 and r["hop_ms"] > 0 and len(r["per_stage"]) == 2 for r in rows)
    assert [(e.stage, e.kind) for e in rows[0]["events"]] == [(0, "forward"), (1, "forward"), (1, "backward"),
                                                              (0, "backward")]


def test_parameter_memory_per_rank_of_each_split():
    rows = demos.memory_rows("cnn", speed=False)
    assert [(r["layout"], r["strategy"]) for r in rows] == [
        ("unsplit", "single"), ("seed split (part1 | part2)", "-"), ("pipeline stages", "pipeline_gpipe"),
        ("pipeline stages", "pipeline_1f1b"), ("tensor parallel shards", "tensor_parallel")]
    assert all(r["samples_per_s"] is None for r in rows)
    assert rows[1]["largest_share"] == pytest.approx(1 - 320 / 121_930)
    found = {r["layout"]: r["bytes_per_rank"] for r in rows}
    whole = 121_930 * 4
    assert found["unsplit"] == [whole, whole]
    assert found["seed split (part1 | part2)"] == [320 * 4, whole - 320 * 4]
    assert sum(found["pipeline stages"]) == whole and min(found["pipeline stages"]) > 0
    shards = found["tensor parallel shards"]  # 1600 x 64 and 64 x 10 halved, the rest whole
    assert shards[0] == shards[1] == whole - (1600 * 64 + 64 + 64 * 10) * 4 // 2


def test_memory_table_for_people():
    rows = [{"layout": "unsplit", "strategy": "single", "bytes_per_rank": [4096, 4096], "largest_share": 1.0,
             "samples_per_s": 1234.0},
            {"layout": "seed split (part1 | part2)", "strategy": "-", "bytes_per_rank": [1024, 3072],
             "largest_share": 0.75, "samples_per_s": None}]
    lines = memory.format_memory(rows).splitlines()
    assert lines[1].split() == ["unsplit", "single", "4.0", "|", "4.0", "100%", "1,234"]
    assert lines[2].split()[-4:] == ["|", "3.0", "75%", "-"]


def test_bench_pipeline_prints_both_tables_and_writes_json(monkeypatch, tmp_path, capsys):
    table = [{"layout": "unsplit", "strategy": "single", "bytes_per_rank": [8, 8], "largest_share": 1.0,
              "samples_per_s": 10.0}]
    monkeypatch.setattr(bench, "bench_pipeline", lambda repeats: {"bubble": ROWS, "memory": table})
    bench.main(["pipeline", "--json", str(tmp_path / "out.json")])
    printed = capsys.readouterr().out
    assert printed.startswith("schedule") and "layout" in printed and "at m = 8" in printed
    assert json.loads((tmp_path / "out.json").read_text())["bubble"][0]["theory"] == 0.5
