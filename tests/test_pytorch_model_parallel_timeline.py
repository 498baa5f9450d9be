"""The timeline tools: idle fractions, GPipe's theory, the replay with free communication, the chart."""

import pytest

from dtutor.pytorch.model_parallel.timeline import (
    Event,
    describe,
    idle_fractions,
    mean_idle,
    plot_timeline,
    replay,
    theory_bubble,
)


def _event(stage, kind, start, end, micro_batch=0):
    return Event(stage, kind, micro_batch, start, end)


def test_idle_fraction_is_the_share_of_the_step_a_stage_does_not_compute():
    events = [_event(0, "forward", 0.0, 1.0), _event(1, "forward", 1.0, 2.0), _event(1, "backward", 2.0, 4.0),
              _event(0, "backward", 4.0, 6.0)]
    assert idle_fractions(events) == {0: pytest.approx(0.5), 1: pytest.approx(0.5)}
    assert mean_idle(events) == pytest.approx(0.5)


@pytest.mark.parametrize(("stages", "micro_batches", "theory"), [(2, 1, 1 / 2), (2, 2, 1 / 3), (2, 4, 1 / 5),
                                                                 (2, 8, 1 / 9), (4, 4, 3 / 7)])
def test_gpipe_theory(stages, micro_batches, theory):
    assert theory_bubble(stages, micro_batches) == pytest.approx(theory)


def test_timeline_plot_title_states_the_measured_idle_and_the_theory():
    events = [_event(0, "forward", 0.0, 0.001), _event(1, "forward", 0.001, 0.002),
              _event(1, "backward", 0.002, 0.004), _event(0, "backward", 0.004, 0.006)]
    axes = plot_timeline(events).axes[0]
    assert axes.get_title() == "2 stages, 1 micro-batch(es): idle 50% of the step (GPipe theory for equal stages 50%)"
    assert [t.get_text() for t in axes.get_yticklabels()] == ["stage 0", "stage 1"]


def _unequal_gpipe(micro_batches=8):
    """GPipe on 2 stages where stage 1 computes a tenth of stage 0: its bars are far too narrow for a label."""
    events, clock = [], 0.0
    for i in range(micro_batches):
        events += [_event(0, "forward", clock, clock + 1.0, i), _event(1, "forward", clock + 1.0, clock + 1.1, i)]
        clock += 1.0
    clock += 0.2
    for i in range(micro_batches):
        events += [_event(1, "backward", clock, clock + 0.2, i), _event(0, "backward", clock + 0.2, clock + 2.2, i)]
        clock += 2.2
    return events


def test_timeline_labels_only_the_bars_wide_enough_and_is_tall_enough_to_read():
    figure = plot_timeline(_unequal_gpipe())
    labelled = {(round(t.get_position()[1]), t.get_text()) for t in figure.axes[0].texts}
    assert labelled == {(0, str(i)) for i in range(8)}  # stage 0's bars carry their numbers, stage 1's none
    assert figure.get_size_inches()[1] * figure.dpi >= 250


def test_describe_gives_each_stage_s_compute_and_idle_with_and_without_communication():
    lines = describe(_gpipe_step(forward=1.0, backward=2.0, hop=0.25)).splitlines()
    assert lines[0].split() == ["stage", "compute", "per", "micro-batch", "idle", "idle", "with", "free",
                                "communication"]
    assert lines[1].split()[:3] == ["0", "3000.00", "ms"] and lines[1].split()[-1] == "33%"  # theory, no hops
    assert lines[-1] == "GPipe's theory for 2 equal stages and 2 micro-batch(es): 33% idle"


def _gpipe_step(forward, backward, hop):
    """GPipe, p = 2, m = 2, blocking transfers of ``hop`` seconds: what the measured step looks like."""
    f0, f1 = (0.0, forward), (forward, 2 * forward)
    g0 = (f0[1] + hop, f0[1] + hop + forward)  # stage 1 forward 0 after its activation arrives
    g1 = (max(g0[1], f1[1] + hop), max(g0[1], f1[1] + hop) + forward)
    b0 = (g1[1], g1[1] + backward)
    b1 = (b0[1], b0[1] + backward)
    c0 = (b0[1] + hop, b0[1] + hop + backward)
    c1 = (max(c0[1], b1[1] + hop), max(c0[1], b1[1] + hop) + backward)
    return [_event(0, "forward", *f0, 0), _event(0, "forward", *f1, 1), _event(1, "forward", *g0, 0),
            _event(1, "forward", *g1, 1), _event(1, "backward", *b0, 0), _event(1, "backward", *b1, 1),
            _event(0, "backward", *c0, 0), _event(0, "backward", *c1, 1)]


def test_replay_removes_the_communication_and_keeps_order_and_durations():
    measured = _gpipe_step(forward=1.0, backward=2.0, hop=0.25)
    replayed = replay(measured)
    assert mean_idle(measured) > theory_bubble(2, 2)  # the hops made the step longer
    assert mean_idle(replayed) == pytest.approx(theory_bubble(2, 2))  # equal stages, free communication
    durations = {(e.stage, e.kind, e.micro_batch): e.seconds for e in measured}
    assert {(e.stage, e.kind, e.micro_batch): e.seconds for e in replayed} == pytest.approx(durations)
    assert max(e.end for e in replayed) == pytest.approx(3 * 3.0)  # (m + p - 1) slots of forward + backward


def test_replay_of_uneven_stages_idles_more_than_theory():
    events = _gpipe_step(forward=1.0, backward=2.0, hop=0.0)
    slow = [Event(e.stage, e.kind, e.micro_batch, e.start, e.start + (1.5 if (e.stage, e.micro_batch) == (1, 0)
                                                                          and e.kind == "forward" else 1) * e.seconds)
            for e in events]
    assert mean_idle(replay(slow)) > theory_bubble(2, 2)


def test_replay_refuses_events_that_are_not_one_pipeline_step():
    backward_first = [_event(0, "backward", 0.0, 1.0), _event(0, "forward", 1.0, 2.0),
                      _event(1, "forward", 0.0, 1.0), _event(1, "backward", 1.0, 2.0)]
    with pytest.raises(ValueError, match="events: the stages wait on each other in a cycle"):
        replay(backward_first)
