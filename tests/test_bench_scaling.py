"""The DDP scaling, Horovod-vs-DDP and driver-overhead benchmarks (dtutor.bench.scaling), through dtutor.bench."""

import pytest

from dtutor import TrainConfig, bench, data
from dtutor.pytorch import fit

RESULT = {"samples_per_s_1": 1000.0, "samples_per_s_2": 1700.0, "samples_per_s_independent": 1780.0,
          "efficiency": 0.85, "ceiling": 0.89, "of_ceiling": 0.955, "driver_s": 1.01,
          "hand_s": 1.0, "overhead": 0.01, "overhead_q1": -0.01, "overhead_q3": 0.03, "control": -0.004, "rounds": 60,
          "steps": 10}


def test_ddp_table_verdicts_follow_the_numbers_and_the_machines_ceiling():
    table = bench.format_ddp(RESULT, verdict=True)
    assert "  DDP / ceiling                                    0.955  >= 0.9: met" in table
    assert "  ceiling: independent / (2 T1)                    0.890" in table and "1,780" in table
    assert "<= 2%: met" in table and "control: hand loop against itself" in table and "-0.40%" in table
    missed = bench.format_ddp(RESULT | {"of_ceiling": 0.7, "overhead": 0.05, "overhead_q1": 0.03}, verdict=True)
    assert ">= 0.9: missed" in missed and "<= 2%: missed" in missed
    spread = bench.format_ddp(RESULT | {"overhead": 0.03, "overhead_q1": -0.04}, verdict=True)
    assert "<= 2%: undecided (the middle half of the pairs spans the target: more --rounds)" in spread
    noisy = bench.format_ddp(RESULT | {"overhead": 0.05, "control": 0.04}, verdict=True)
    assert "<= 2%: undecided (the noise floor, +4.0%, is beyond the target)" in noisy


def test_a_learners_ddp_table_shows_the_measurements_without_verdicts():
    table = bench.format_ddp(RESULT)
    assert "  DDP / ceiling                                    0.955" in table and "(the noise floor)" in table
    assert "target" not in table and ": met" not in table and "missed" not in table
    assert table.splitlines()[0] == "measure                                            value"


def test_table_headers_are_for_people():
    table = bench.format_table([{"strategy": "ddp", "samples_per_s_1": 1234.0, "of_ceiling": 0.9},
                                {"strategy": "horovod", "samples_per_s_1": 99.0, "of_ceiling": 0.75}])
    assert table.splitlines() == ["strategy  samples/s, 1 rank  of the ceiling",
                                  "     ddp              1,234             0.9",
                                  " horovod                 99            0.75"]


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
    rate = bench.ceiling(batch_per_rank=32, samples=128)
    assert rate > 0


def test_repeats_must_be_positive():
    with pytest.raises(ValueError, match="repeats: must be >= 1"):
        bench.scaling("ddp", repeats=0)
