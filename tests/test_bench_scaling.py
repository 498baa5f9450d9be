"""The DDP scaling, Horovod-vs-DDP and driver-overhead benchmarks (dtutor.bench.scaling)."""

import pytest

from dtutor import TrainConfig, bench, data, tables
from dtutor.pytorch import fit

RESULT = {"samples_per_s_1": 1000.0, "samples_per_s_2": 1700.0, "samples_per_s_independent": 1780.0,
          "efficiency": 0.85, "ceiling": 0.89, "of_ceiling": 0.955, "driver_s": 1.01,
          "hand_s": 1.0, "overhead": 0.01, "overhead_q1": -0.01, "overhead_q3": 0.03, "control": -0.004, "rounds": 60,
          "steps": 10, "efficiency_rounds": [0.8, 0.85, 0.86], "ceiling_rounds": [0.88, 0.89, 0.95],
          "of_ceiling_rounds": [0.93, 0.955, 0.97]}


def test_ddp_table_verdicts_follow_the_numbers_and_the_machines_ceiling():
    table = bench.table_ddp(RESULT, verdict=True).set_index("measure")
    assert table.loc["DDP / ceiling", "value"] == 0.955 and table.loc["DDP / ceiling", "target"] == ">= 0.9: met"
    assert table.loc["ceiling: independent / (2 T1)", "value"] == 0.89
    assert table.loc["2 independent processes (the ceiling), samples/s", "value"] == 1780
    assert table.loc["driver overhead % (median of 60 pairs)", "target"] == "<= 2%: met"
    assert table.loc["control: hand loop against itself, %"].tolist() == [-0.4, "the noise floor", ""]

    def targets(**changed) -> list[str]:
        return [t for t in bench.table_ddp(RESULT | changed, verdict=True)["target"] if t]

    assert targets(of_ceiling=0.7, of_ceiling_rounds=[0.6, 0.7, 0.89], overhead=0.05, overhead_q1=0.03) == \
        [">= 0.9: missed", "<= 2%: missed"]
    assert targets(of_ceiling_rounds=[0.85, 0.955, 0.97])[0] == ">= 0.9: undecided"  # the rounds span the target
    assert targets(of_ceiling_rounds=[0.955])[0] == ">= 0.9: undecided"  # one round: no spread to judge by
    assert targets(overhead=0.03, overhead_q1=-0.04)[1] == (
        "<= 2%: undecided (the middle half of the pairs spans the target: more --rounds)")
    assert targets(overhead=0.05, control=0.04)[1] == "<= 2%: undecided (the noise floor, +4.0%, is beyond the target)"


def test_a_learners_ddp_table_shows_the_measurements_without_verdicts():
    table = bench.table_ddp(RESULT)
    assert list(table.columns) == ["measure", "value", "note"]  # no target column
    values = dict(zip(table["measure"], table["value"], strict=True))
    assert values["DDP samples/s, 1 rank (1 thread)"] == 1000 and values["DDP / ceiling"] == 0.955
    notes = dict(zip(table["measure"], table["note"], strict=True))
    assert notes["DDP / ceiling"] == "0.93 to 0.97 over 3 rounds"
    assert notes["ceiling: independent / (2 T1)"] == "this machine, this run: 0.88 to 0.95 over 3 rounds"
    assert values["driver overhead % (median of 60 pairs)"] == 1.0 and values["middle half of the pairs, %"] == (
        "-1.0 to +3.0")
    text = tables.text(table)
    assert "target" not in text and ": met" not in text and "missed" not in text


def test_table_headers_are_for_people():
    table = bench.table_scaling([{"strategy": "ddp", "samples_per_s_1": 1234.0, "of_ceiling": 0.9},
                                 {"strategy": "horovod", "samples_per_s_1": 99.0, "of_ceiling": 0.75123}])
    assert list(table.columns) == ["strategy", "samples/s, 1 rank", "of the ceiling"]
    assert table.values.tolist() == [["ddp", 1234, 0.9], ["horovod", 99.0, 0.751]]  # >= 100: whole; else 3 digits
    spread = bench.table_scaling([{"strategy": "ddp", "of_ceiling": 0.9, "of_ceiling_rounds": [0.85, 0.9, 0.934]}])
    assert spread.values.tolist() == [["ddp", "0.9 (0.85-0.934)"]]  # a median with its range; the rounds not a column


def test_the_hand_written_loop_computes_what_the_driver_computes():
    config = TrainConfig(strategy="single", global_batch=16, samples=48, epochs=2, test_samples=0)
    dataset = data.torch_dataset(data.load_mnist("train", limit=48, verbose=False))
    losses, _ = bench.hand_written_fit(config, dataset)
    assert losses == pytest.approx(fit(config, train_data=dataset).step_losses, rel=1e-6)


def test_driver_overhead_pairs_both_contenders():
    result = bench.driver_overhead(steps=2, batch_size=4, rounds=3)
    assert result["rounds"] == 3 and result["overhead_q1"] <= result["overhead_q3"] and "control" in result
    assert result["driver_s"] == pytest.approx(result["hand_s"], rel=2.0)  # same work: same order of time


def test_scaling_plot_title_states_the_measured_efficiency_and_ceiling():
    figure = bench.plot_scaling(RESULT)
    assert figure.axes[0].get_title() == "DDP on 2 ranks: 0.85 of perfect, 0.95 of the ceiling (0.89)"


def test_two_independent_processes_measure_the_ceiling():
    rate = bench.ceiling(batch_per_rank=32, samples=128, epochs=2)
    assert rate > 0


def test_every_run_of_the_scaling_rounds_trains_the_samples_and_epochs_asked_for(monkeypatch):
    """The notebook's quicker settings reach each launch (the launches replaced by recorders: nothing starts)."""
    from types import SimpleNamespace

    from dtutor import launch

    trained, ran = [], []
    monkeypatch.setattr(launch, "train", lambda nprocs, **kw: trained.append((nprocs, kw)) or
                        [SimpleNamespace(samples_per_second=lambda: 100.0 * nprocs)])
    monkeypatch.setattr(launch, "run", lambda entry, nprocs, **kw: ran.append(kw) or [90.0, 90.0])
    rows = bench.bench_horovod_vs_ddp(batch_per_rank=64, repeats=1, samples=512, epochs=3)
    assert [(nprocs, kw["strategy"], kw["global_batch"], kw["samples"], kw["epochs"]) for nprocs, kw in trained] == \
        [(n, strategy, 64 * n, 512, 3) for strategy in ("ddp", "horovod") for n in (1, 2)]
    assert [(kw["batch_per_rank"], kw["samples"], kw["epochs"]) for kw in ran] == [(64, 256, 3)] * 2
    assert [(row["strategy"], row["efficiency"], row["of_ceiling"]) for row in rows] == \
        [("ddp", 1.0, pytest.approx(200 / 180)), ("horovod", 1.0, pytest.approx(200 / 180))]


def test_repeats_must_be_positive():
    with pytest.raises(ValueError, match="repeats: must be >= 1"):
        bench.scaling("ddp", repeats=0)
