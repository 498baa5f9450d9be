"""One progress bar per run: a bar here, or relayed by a launched rank 0 and shown once by the supervisor."""

import io
import json

import pytest

from dtutor import progress


def relayed(capsys, steps: int, total: int) -> list[dict]:
    with progress.progress(total, "ddp") as bar:
        for step in range(steps):
            bar.update(1, label=f"ddp, epoch {step // 2}")
    return [progress.parse_relay(line) for line in capsys.readouterr().out.splitlines()]


def test_a_launched_rank_relays_its_progress_as_marker_lines(monkeypatch, capsys):
    monkeypatch.setenv(progress.PROGRESS_ENV, "relay")
    monkeypatch.setattr(progress, "RELAY_INTERVAL_S", 3600.0)  # only the first and the last line
    states = relayed(capsys, 4, 4)
    assert [(s["done"], s["total"]) for s in states] == [(0, 4), (4, 4)]
    assert states[-1]["label"] == "ddp, epoch 1"


def test_an_interrupted_run_still_relays_where_it_stopped(monkeypatch, capsys):
    monkeypatch.setenv(progress.PROGRESS_ENV, "relay")
    monkeypatch.setattr(progress, "RELAY_INTERVAL_S", 3600.0)
    assert [s["done"] for s in relayed(capsys, 3, 10)] == [0, 3]


def test_ranks_that_do_not_log_show_nothing(monkeypatch, capsys):
    monkeypatch.setenv(progress.PROGRESS_ENV, "relay")
    with progress.progress(4, "ddp", show=False) as bar:
        bar.update(4)
    assert capsys.readouterr().out == "" and bar.done == 4


def test_relayed_lines_are_found_behind_any_prefix_and_nothing_else_is():
    line = "[rank 0] " + progress.RELAY_MARKER + json.dumps({"done": 3, "total": 9, "label": "x"})
    assert progress.parse_relay(line)["done"] == 3
    assert progress.parse_relay("[rank 0] epoch 0: loss 2.3") is None
    assert progress.parse_relay(progress.RELAY_MARKER + "{not json") is None


@pytest.mark.parametrize("enabled", [True, False])
def test_the_supervisor_consumes_relayed_lines_and_shows_one_bar(monkeypatch, enabled):
    monkeypatch.delenv("TQDM_DISABLE")
    bars = []

    def fake_tqdm(total, label, unit):
        from tqdm import tqdm

        # explicit: tqdm reads TQDM_DISABLE once, when it is first imported (conftest sets it for the suite)
        bars.append(tqdm(total=total, desc=label, file=io.StringIO(), disable=False))
        return bars[-1]

    monkeypatch.setattr(progress, "_tqdm", fake_tqdm)
    bar = progress.RelayedBar(enabled=enabled)
    for done in (0, 5, 10):
        assert bar.feed(progress.RELAY_MARKER + json.dumps({"done": done, "total": 10, "label": "ddp, epoch 1",
                                                            "postfix": {"loss": 0.25}}))
    assert not bar.feed("[rank 0] a line to print")
    if enabled:
        assert len(bars) == 1 and bars[0].n == 10 and bars[0].desc == "ddp, epoch 1"
        assert "loss 0.25" in bars[0].postfix
    else:
        assert bars == []
    bar.close()


def test_tqdm_disable_turns_the_bars_off(monkeypatch):
    monkeypatch.setenv("TQDM_DISABLE", "1")
    assert progress.bars_disabled() and not progress.RelayedBar().enabled


def test_no_bar_is_drawn_into_a_pipe_or_a_file(monkeypatch):
    monkeypatch.delenv("TQDM_DISABLE")
    monkeypatch.setattr("sys.stderr", io.StringIO())
    assert not progress.can_draw() and progress._tqdm(10, "ddp", "step").disable
