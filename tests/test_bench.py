import torch

from dtutor import bench, models


def test_ddp_table_reports_targets_met_or_missed():
    result = {"samples_per_s_1": 1000.0, "samples_per_s_2": 1900.0, "efficiency": 0.95,
              "shared_s": 1.01, "hand_s": 1.0, "overhead": 0.01,
              "overhead_q1": -0.01, "overhead_q3": 0.03}
    table = bench.format_ddp(result)
    assert ">= 0.85 ok" in table and "<= 2% ok" in table
    assert ">= 0.85 MISSED" in bench.format_ddp(result | {"efficiency": 0.5})


def test_plain_table():
    table = bench.format_table([{"method": "DDP", "samples_per_s_1": 1234.5}, {"method": "Horovod",
                                                                               "samples_per_s_1": 99.0}])
    assert table.splitlines() == [" method  samples_per_s_1", "    DDP            1,234", "Horovod               99"]


def test_hand_written_loop_trains():
    model = models.seeded(models.mnist_cnn, 0)
    before = [p.detach().clone() for p in model.parameters()]
    batches = [(torch.randn(4, 1, 28, 28), torch.randint(0, 10, (4,)))]
    bench.hand_written_loop(model, batches, torch.optim.SGD(model.parameters(), lr=0.1))
    assert any(not torch.equal(a, b) for a, b in zip(before, model.parameters(), strict=True))


def test_loop_overhead_measures_both_loops():
    result = bench.loop_overhead(steps=2, batch_size=4, rounds=2)
    assert result["shared_s"] > 0 and result["hand_s"] > 0


def test_scaling_plot():
    figure = bench.plot_scaling({"samples_per_s_1": 100.0, "samples_per_s_2": 180.0, "efficiency": 0.9})
    assert "0.90" in figure.axes[0].get_title()
