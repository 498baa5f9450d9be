"""``python -m dtutor.bench ceiling`` (dtutor.bench.ceiling_causes): the per-round ratios from invented runs, and
one tiny real launch for the shape of what the workers return (no timing is asserted)."""

import pytest

from dtutor import tables
from dtutor.bench import ceiling_causes

FIT_SAMPLES = 64 * 2  # samples x epochs of the invented fits


def _run(round_, phase, rate, cpu=0.001, wall=0.002, wait=0.0, migrations=0.0):
    return {"round": round_, "phase": phase, "samples_per_s": rate, "cpu_s_per_sample": cpu,
            "wall_s_per_sample": wall, "runqueue_wait_s": wait, "migrations": migrations, "steal_s": [0.01, 0.0]}


def invented() -> dict:
    """Two rounds: round 0, core 1 slower and the pair below twice one alone; round 1, one alone slow."""
    zero = [_run(-1, "cold", 90), _run(0, "alone", 100, migrations=2), _run(0, "alone on core 0", 100),
            _run(0, "alone on core 1", 80, cpu=0.00125), _run(0, "side by side", 90, wait=0.064),
            _run(0, "side by side, pinned", 90),
            _run(1, "alone", 80), _run(1, "alone on core 0", 100), _run(1, "alone on core 1", 100),
            _run(1, "side by side", 90), _run(1, "side by side, pinned", 100)]
    one = [_run(0, "side by side", 95, wait=0.064), _run(0, "side by side, pinned", 72, cpu=0.00125),
           _run(1, "side by side", 90), _run(1, "side by side, pinned", 100)]
    threads = {"intra_op_threads": 1, "inter_op_threads": 2, "OMP_NUM_THREADS": "1", "cores": [0, 1]}
    return {"ranks": [{"rank": 0, **threads, "runs": zero}, {"rank": 1, **threads, "runs": one}], "rounds": 2,
            "batch": 16, "samples": 64, "epochs": 2, "load_before": 0.5, "load_after": 0.6,
            "machine": {"date": "2026-12-07T03:00:00+00:00"}}


def test_each_round_gives_the_ceiling_with_and_without_pinning_and_by_cpu_time():
    first, second = ceiling_causes.by_round(invented())
    assert first["ceiling"] == pytest.approx((90 + 95) / 200) and second["ceiling"] == pytest.approx(180 / 160)
    assert first["ceiling_pinned"] == pytest.approx((90 + 72) / (100 + 80))  # each rank against its own core
    assert first["ceiling_cpu"] == pytest.approx(1.0) and second["ceiling_cpu"] == pytest.approx(1.0)
    assert first["wait_share_pair"] == pytest.approx((0.25 + 0.25 + 0 + 0) / 4)  # 0.064 s of 0.256 s, side by side
    assert first["core1_over_core0"] == pytest.approx(0.8) and first["migrations_alone"] == 2
    assert first["cpu_ms_pinned"] == pytest.approx(1.125) and first["steal_s"] == pytest.approx(7 * 0.01 / 2)


def test_the_summary_gives_each_figure_median_and_range_and_the_findings_say_them():
    result = invented()
    found = ceiling_causes.summary(result)
    assert found["spreads"]["ceiling"] == pytest.approx({"median": 1.025, "min": 0.925, "max": 1.125})
    assert found["cold_over_warm"] == pytest.approx(90 / 90)  # the median of the warm lone fits: 100 and 80
    lines = ceiling_causes.findings(result)
    assert lines[0] == ("The ceiling by the wall clock over 2 rounds: 1.02 (0.93 to 1.12) unpinned, "
                        "0.95 (0.90 to 1.00) with each process pinned to a core of its own.")
    assert lines[1] == "By CPU time (samples per CPU-second, pinned): 1.00 (1.00 to 1.00)."
    assert lines[2].endswith("without a core: other processes on this machine had it.")  # 25% in round 0
    assert lines[3].endswith("0.90 (0.80 to 1.00) of core 0's speed: the two vCPUs differ, and change from round "
                             "to round.")
    assert "at most 2 time(s) per fit, every process had 1 intra-op thread (OMP_NUM_THREADS=1)" in lines[4]


def test_the_findings_draw_a_conclusion_only_where_the_figures_show_it():
    result = invented()
    for rank in result["ranks"]:
        for run in rank["runs"]:
            run["runqueue_wait_s"] = 0.0  # never waited for a core
            if run["phase"] == "alone on core 1":
                run["samples_per_s"], run["cpu_s_per_sample"] = 100, 0.001  # as fast as core 0
    lines = ceiling_causes.findings(result)
    assert lines[2].endswith("runnable but without a core.") and lines[3].endswith("of core 0's speed.")
    text = "\n".join(tables.text(make(result)) for make in (ceiling_causes.table_rounds, ceiling_causes.table_summary))
    assert "measured 2026-12-07T03:00" in text and max(len(line) for line in text.splitlines()) <= 150


def test_one_tiny_launch_runs_every_phase_on_the_ranks_that_train_in_it():
    result = ceiling_causes.measure(rounds=1, batch=16, samples=32, epochs=2, timeout=120)
    ranks = {rank["rank"]: rank for rank in result["ranks"]}
    assert [run["phase"] for run in ranks[0]["runs"]][0] == "cold" and len(ranks[0]["runs"]) == 1 + 5
    assert sorted(run["phase"] for run in ranks[1]["runs"]) == ["side by side", "side by side, pinned"]
    assert ranks[0]["intra_op_threads"] == 1 and ranks[0]["OMP_NUM_THREADS"] == "1"
    run = ranks[1]["runs"][0]
    assert run["samples_per_s"] > 0 and run["cpu_s_per_sample"] > 0 and run["wall_s_per_sample"] > 0
    assert len(ceiling_causes.by_round(result)) == 1
