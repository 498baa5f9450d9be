"""The bubble table and ``python -m dtutor.bench pipeline``."""

import json

import pytest

from dtutor import bench, tables
from dtutor.pytorch.model_parallel import bubble


def _row(schedule, sends, m, measured, replayed, peaks=(1, 1), communication_ms=5.0):
    theory = bubble.theory_bubble(2, m)
    return {"schedule": schedule, "sends": sends, "stages": 2, "micro_batches": m, "measured": measured,
            "median": measured, "theory": theory, "gap": measured - theory, "relative_gap": measured / theory - 1,
            "replayed": replayed, "uneven": replayed - theory, "communication": measured - replayed,
            "per_stage": [measured, measured], "span_ms": 100.0, "compute_ms": 10.0,
            "communication_ms": communication_ms, "compute_cv": 0.12, "hop_ms": 1.25, "peak_held": list(peaks)}


ROWS = [_row("gpipe", "blocking", 4, 0.25, 0.21, (4, 4)), _row("gpipe", "blocking", 8, 0.2, 0.13, (8, 8), 20.0),
        _row("gpipe", "overlapped", 1, 0.52, 0.5), _row("gpipe", "overlapped", 4, 0.21, 0.2, (4, 4)),
        _row("gpipe", "overlapped", 8, 0.15, 0.14, (8, 8), 2.5), _row("1f1b", "overlapped", 8, 0.19, 0.15, (2, 1))]


def test_bubble_table_splits_the_gap_and_carries_no_verdict_for_a_learner():
    table = bubble.table_bubble(ROWS)
    assert "target" not in table.columns
    assert list(table.columns) == ["schedule", "sends", "p", "m", "measured %", "theory %", "rel. gap %",
                                   "uneven points", "comm. points", "peak activations"]
    assert table.iloc[0].tolist() == ["gpipe", "blocking", 2, 4, 25.0, 20.0, 25, 1.0, 4.0, "4/4"]
    assert table.iloc[2].tolist() == ["gpipe", "overlapped", 2, 1, 52.0, 50.0, 4, 0.0, 2.0, "1/1"]
    assert table["peak activations"].tolist()[-2:] == ["8/8", "2/1"]
    assert table.attrs["notes"][-6:] == [
        "at m = 8, GPipe blocking: 20.0% idle, theory 11.1%",
        "  uneven compute +1.9 points: with free communication the step idles 13.0%; compute varies by 12%",
        "  communication  +7.0 points: 20.0 ms waited; 16 crossings at 1.25 ms per hop: 20.0 ms "
        "(a blocking transfer also waits for its receiver)",
        "at m = 8, GPipe overlapped: 15.0% idle, theory 11.1%",
        "  uneven compute +2.9 points: with free communication the step idles 14.0%; compute varies by 12%",
        "  communication  +1.0 points: 2.5 ms waited; 16 crossings at 1.25 ms per hop: 20.0 ms (if none were hidden)"]
    text = tables.text(table)
    assert "met" not in text.split() and max(map(len, text.splitlines())) <= 150


def test_the_benchmark_s_verdict_judges_overlapped_gpipe_up_to_m_4_on_p_2_only():
    targets = bubble.table_bubble(ROWS, verdict=True)["target"].tolist()
    assert targets[2:4] == ["within 10%: met", "within 10%: met"]  # 21% against 20%
    assert targets[:2] == ["", ""] and targets[4:] == ["", ""]  # blocking, m = 8, 1F1B: not judged
    missed = bubble.table_bubble([_row("gpipe", "overlapped", 4, 0.23, 0.22)], verdict=True)
    assert missed["target"].tolist() == ["within 10%: missed"]  # 23% against 20%: +15% relative
    four_stages = {**_row("gpipe", "overlapped", 4, 0.5, 0.45), "stages": 4, "peak_held": [4] * 4}
    judged = bubble.table_bubble([four_stages], verdict=True).iloc[0]
    assert judged["peak activations"] == "4/4/4/4" and judged["target"] == ""  # oversubscribed: not judged


def test_bubble_plot_title_comes_from_overlapped_gpipe_at_the_largest_m():
    title = bubble.plot_bubble(ROWS).axes[0].get_title()
    assert title == "p = 2 stages: the bubble; at m = 8 15% measured (gpipe, overlapped) vs 11%"


@pytest.mark.parametrize(("variant", "message"), [
    ("1f1b/blocking", "variants: 1f1b/blocking deadlocks"),
    ("gpipe", "variants: each is 'gpipe' or '1f1b', '/', then 'blocking' or 'overlapped'; got 'gpipe'"),
    ("zb/overlapped", "got 'zb/overlapped'")])
def test_a_variant_that_cannot_run_is_refused_before_any_process_starts(monkeypatch, variant, message):
    from dtutor import launch

    monkeypatch.setattr(launch, "run", lambda *a, **k: pytest.fail("launched"))
    with pytest.raises(ValueError, match=message):
        bubble.measure_bubble(2, variants=(variant,))


def test_a_small_measurement_has_the_table_s_shape_and_the_schedules_activations():
    rows = bubble.measure_bubble(2, micro_batches=(1, 2), width=64, layers_per_stage=1, micro_batch_size=8, repeats=1)
    assert [(r["schedule"], r["sends"], r["micro_batches"]) for r in rows] == [
        ("gpipe", "blocking", 1), ("gpipe", "blocking", 2), ("gpipe", "overlapped", 1), ("gpipe", "overlapped", 2),
        ("1f1b", "overlapped", 2)]
    assert [r["peak_held"] for r in rows] == [[1, 1], [2, 2], [1, 1], [2, 2], [2, 1]]
    assert [r["theory"] for r in rows] == pytest.approx([1 / 2, 1 / 3, 1 / 2, 1 / 3, 1 / 3])
    for row in rows:
        assert 0 < row["measured"] < 1 and row["hop_ms"] > 0 and len(row["per_stage"]) == 2
        assert row["uneven"] + row["communication"] == pytest.approx(row["measured"] - row["theory"])
        assert row["replayed"] <= row["measured"] + 1e-12  # free communication never makes the step longer
    assert [(e.stage, e.kind) for e in rows[0]["events"]] == [(0, "forward"), (1, "forward"), (1, "backward"),
                                                              (0, "backward")]


def test_bench_pipeline_prints_both_tables_and_writes_json(monkeypatch, tmp_path, capsys):
    table = [{"layout": "unsplit", "strategy": "single", "bytes_per_rank": [8, 8], "largest_share": 1.0,
              "samples_per_s": 10.0}]
    monkeypatch.setattr(bench, "bench_pipeline", lambda repeats: {"bubble": ROWS, "memory": table})
    bench.main(["pipeline", "--json", str(tmp_path / "out.json")])
    printed = capsys.readouterr().out
    assert printed.startswith("schedule") and "layout" in printed and "at m = 8" in printed
    assert "within 10%: met" in printed  # the benchmark keeps its target
    assert json.loads((tmp_path / "out.json").read_text())["bubble"][0]["theory"] == 0.2
