"""``python -m dtutor.bench activations``: its quick mode once, its tables' shape, and its command."""

from dtutor import bench
from dtutor.bench import activations


def test_the_quick_bench_gives_both_tables_and_the_measured_time_ratios(monkeypatch):
    monkeypatch.setattr(activations, "time_ratios", lambda batch, rounds: [1.2, 1.3, 1.25][:rounds])
    result = activations.bench_activations(quick=True)
    models = activations.table_activations(result["models"])
    assert len(models) == 4 and list(models.columns)[0] == "model"
    table = activations.table_recomputation(result["recomputation"])
    assert len(table) == 2 and "median 1.250, min 1.200, max 1.300 (3 rounds)" in table.attrs["notes"][-1]


def test_the_time_ratio_is_measured_per_round():
    ratios = activations.time_ratios(batch=2, rounds=2, steps=1)
    assert len(ratios) == 2 and all(ratio > 0 for ratio in ratios)


def test_the_command_is_registered():
    args = bench.parser().parse_args(["activations", "--mode", "quick"])
    assert args.command == "activations" and args.mode == "quick"
