"""The bubble table, measured from the pipeline strategies' training."""

import pytest

from dtutor import max_difference, tables
from dtutor.pytorch.model_parallel import bubble
from dtutor.strategies import STRATEGIES


def _row(strategy, sends, m, measured, replayed, peaks=(1, 1), communication_ms=5.0, rate=1234.4):
    theory = bubble.theory_bubble(2, m)
    row = {"strategy": strategy, "schedule": "1f1b" if "1f1b" in strategy else "gpipe", "sends": sends, "stages": 2,
           "micro_batches": m, "theory": theory, "samples_per_s": rate}
    if measured is None:  # a library schedule: no timeline
        return row | dict.fromkeys(bubble.TIMELINE_KEYS)
    return row | {"measured": measured, "median": measured, "gap": measured - theory,
                  "relative_gap": measured / theory - 1, "replayed": replayed, "uneven": replayed - theory,
                  "communication": measured - replayed, "per_stage": [measured, measured], "span_ms": 100.0,
                  "compute_ms": 10.0, "communication_ms": communication_ms, "compute_cv": 0.12, "hop_ms": 1.25,
                  "peak_held": list(peaks)}


HAND = "pipeline_by_hand"
ROWS = [_row(HAND, "blocking", 4, 0.25, 0.21, (4, 4)), _row(HAND, "blocking", 8, 0.2, 0.13, (8, 8), 20.0),
        _row(HAND, "overlapped", 1, 0.52, 0.5), _row(HAND, "overlapped", 4, 0.21, 0.2, (4, 4)),
        _row(HAND, "overlapped", 8, 0.15, 0.14, (8, 8), 2.5),
        _row("pipeline_by_hand_1f1b", "overlapped", 8, 0.19, 0.15, (2, 1)),
        _row("pipeline_gpipe", "library", 8, None, None, rate=987.6)]


def test_bubble_table_splits_the_gap_and_carries_no_verdict_for_a_learner():
    table = bubble.table_bubble(ROWS)
    assert list(table.columns) == ["strategy", "sends", "p", "m", "samples/s", "measured %", "theory %", "rel. gap %",
                                   "uneven points", "comm. points", "peak activations"]
    assert table.iloc[0].tolist() == [HAND, "blocking", 2, 4, 1234, 25.0, 20.0, 25, 1.0, 4.0, "4/4"]
    assert table.iloc[2].tolist() == [HAND, "overlapped", 2, 1, 1234, 52.0, 50.0, 4, 0.0, 2.0, "1/1"]
    assert table["peak activations"].tolist()[-3:-1] == ["8/8", "2/1"]
    library = table.iloc[-1]  # the library's schedule: its speed, GPipe's theory, no timeline
    assert library[["strategy", "samples/s", "theory %"]].tolist() == ["pipeline_gpipe", 988, 11.1]
    assert library[["measured %", "rel. gap %", "peak activations"]].isna().all()
    assert table.attrs["notes"][-6:] == [
        "at m = 8, GPipe by hand, blocking: 20.0% idle, theory 11.1%",
        "  uneven compute +1.9 points: with free communication the step idles 13.0%; compute varies by 12%",
        "  communication  +7.0 points: 20.0 ms waited; 16 crossings at 1.25 ms per hop: 20.0 ms "
        "(a blocking transfer also waits for its receiver)",
        "at m = 8, GPipe by hand, overlapped: 15.0% idle, theory 11.1%",
        "  uneven compute +2.9 points: with free communication the step idles 14.0%; compute varies by 12%",
        "  communication  +1.0 points: 2.5 ms waited; 16 crossings at 1.25 ms per hop: 20.0 ms (if none were hidden)"]
    text = tables.text(table)
    assert "target" not in text and "met" not in text.split() and max(map(len, text.splitlines())) <= 150


def test_bubble_plot_title_comes_from_overlapped_gpipe_by_hand_at_the_largest_m():
    axes = bubble.plot_bubble(ROWS).axes[0]
    assert axes.get_title() == "p = 2 stages: the bubble; at m = 8 15% measured (gpipe, overlapped) vs 11%"
    assert len(axes.get_lines()) == 1 + 3  # theory and the three hand-written variants (the library keeps no timeline)


@pytest.mark.parametrize(("variant", "message"), [
    ("pipeline_by_hand_1f1b/blocking", "variants: 1F1B with blocking sends deadlocks"),
    ("pipeline_by_hand", "variants: each is pipeline_gpipe or pipeline_1f1b, or pipeline_by_hand or "
                         "pipeline_by_hand_1f1b, '/', then 'blocking' or 'overlapped'; got 'pipeline_by_hand'"),
    ("gpipe/overlapped", "got 'gpipe/overlapped'")])
def test_a_variant_that_cannot_run_is_refused_before_any_process_starts(monkeypatch, variant, message):
    from dtutor import launch

    monkeypatch.setattr(launch, "run", lambda *a, **k: pytest.fail("launched"))
    with pytest.raises(ValueError, match=message):
        bubble.measure_bubble(2, variants=(variant,))


def test_a_small_measurement_trains_each_variant_and_times_the_hand_written_one():
    rows = bubble.measure_bubble(2, micro_batches=(2,), variants=("pipeline_by_hand/overlapped", "pipeline_gpipe"),
                                 width=64, layers_per_stage=1, micro_batch_size=8, repeats=2, return_parameters=True)
    hand, library = rows
    assert [(r["strategy"], r["sends"], r["micro_batches"]) for r in rows] == [
        (HAND, "overlapped", 2), ("pipeline_gpipe", "library", 2)]
    # overlapped GPipe by hand trains the balanced model as the library's GPipe does (3 steps, one per epoch)
    assert max_difference(hand["result"], library["result"]) < STRATEGIES[HAND].tolerance
    assert [len(r["result"].epochs) for r in rows] == [3, 3] and library["samples_per_s"] > 0
    assert hand["peak_held"] == [2, 2] and hand["theory"] == pytest.approx(1 / 3) and library["measured"] is None
    assert 0 < hand["measured"] < 1 and hand["hop_ms"] > 0 and len(hand["per_stage"]) == 2
    assert hand["uneven"] + hand["communication"] == pytest.approx(hand["measured"] - hand["theory"])
    assert hand["replayed"] <= hand["measured"] + 1e-12  # free communication never makes the step longer
    assert [(e.kind, e.micro_batch) for e in hand["events"] if e.stage == 1] == [
        ("forward", 0), ("forward", 1), ("backward", 0), ("backward", 1)]
