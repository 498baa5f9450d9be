"""``python -m dtutor.bench BENCHMARK``: one subcommand per benchmark, each with only the flags it reads."""

import json

import pytest

from dtutor import bench

OWN_FLAGS = {"all": {"--mode", "--json"}, "readme": {"--json", "--readme"}, "allreduce": {"--mode", "--json"},
             "horovod_gap": {"--rounds", "--json"}, "ddp": {"--batch-per-rank", "--repeats", "--rounds", "--json"},
             "horovod": {"--batch-per-rank", "--repeats", "--json"}, "pipeline": {"--repeats", "--json"},
             "zero": {"--mode", "--json"}, "ring": {"--mode", "--ranks", "--json"},
             "ddp_by_hand": {"--mode", "--json"}, "gpu": {"--dry-run", "--gpus", "--json"},
             "activations": {"--mode", "--json"}, "ceiling": {"--rounds", "--json"}}


def _flags(command) -> set[str]:
    return {flag for action in command._actions for flag in action.option_strings if flag.startswith("--")} - {
        "--help"}


def test_each_benchmark_is_a_subcommand_with_a_help_line_and_only_its_own_flags():
    commands = next(action for action in bench.parser()._actions if action.dest == "command")
    assert {name: _flags(command) for name, command in commands.choices.items()} == OWN_FLAGS
    assert all(help_line.help for help_line in commands._choices_actions)


@pytest.mark.parametrize("argv", [["zero", "--repeats", "3"], ["pipeline", "--mode", "quick"], ["readme"], []])
def test_a_flag_the_benchmark_does_not_read_or_a_missing_one_is_refused(argv, capsys):
    with pytest.raises(SystemExit) as refused:
        bench.main(argv)
    assert refused.value.code == 2 and "usage: python -m dtutor.bench" in capsys.readouterr().err


def test_a_benchmark_gets_its_flags_prints_its_table_and_writes_its_json(monkeypatch, tmp_path, capsys):
    calls = []
    rows = [{"strategy": "ddp", "samples_per_s_1": 1234.0}]
    monkeypatch.setattr(bench, "bench_horovod_vs_ddp", lambda batch, repeats: calls.append((batch, repeats)) or rows)
    bench.main(["horovod", "--batch-per-rank", "64", "--repeats", "2", "--json", str(tmp_path / "out.json")])
    assert calls == [(64, 2)] and json.loads((tmp_path / "out.json").read_text()) == rows
    assert capsys.readouterr().out.splitlines() == ["strategy samples/s, 1 rank", "ddp                   1234"]
