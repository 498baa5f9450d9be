"""Pipelines by hand and with torch.distributed.pipelining: m micro-batches give the full-batch gradients."""

import pytest

from dtutor import launch
from dtutor.pytorch.model_parallel.gpipe import gpipe_actions, one_f_one_b_actions, split_batch

GPIPE = "dtutor.pytorch.model_parallel.gpipe"  # the hand-written schedules, launched on 2 ranks
TOLERANCE = 1e-6  # fp32; measured ~6e-9 (the micro-batch sums are added in another order)


def _peak_held(actions):
    held = peak = 0
    for kind, _ in actions:
        held += 1 if kind == "F" else -1
        peak = max(peak, held)
    return peak


def test_gpipe_runs_every_forward_then_every_backward():
    assert gpipe_actions(3) == [("F", 0), ("F", 1), ("F", 2), ("B", 0), ("B", 1), ("B", 2)]


def test_1f1b_warms_up_then_alternates_and_holds_at_most_p_minus_s_activations():
    assert one_f_one_b_actions(0, 2, 4) == [("F", 0), ("F", 1), ("B", 0), ("F", 2), ("B", 1), ("F", 3), ("B", 2),
                                             ("B", 3)]
    assert one_f_one_b_actions(1, 2, 4) == [("F", 0), ("B", 0), ("F", 1), ("B", 1), ("F", 2), ("B", 2), ("F", 3),
                                             ("B", 3)]
    for stage in range(4):
        actions = one_f_one_b_actions(stage, 4, 8)
        assert sorted(actions) == sorted(gpipe_actions(8)) and _peak_held(actions) == 4 - stage
    assert _peak_held(gpipe_actions(8)) == 8


def test_1f1b_refuses_fewer_micro_batches_than_stages():
    with pytest.raises(ValueError, match="micro_batches: 1F1B needs micro_batches >= 4 stages, got 3"):
        one_f_one_b_actions(0, 4, 3)


def test_a_batch_must_cut_into_equal_micro_batches():
    with pytest.raises(ValueError, match="micro_batches: 3 must divide the batch of 32"):
        split_batch(__import__("torch").zeros(32), 3)


def test_by_hand_m_micro_batches_give_the_full_batch_gradients():
    result = launch.run(f"{GPIPE}:gpipe_by_hand", 2, timeout=300, quiet=True, micro_batches=4)[0]
    assert result["gradient_difference"]["gpipe"] < TOLERANCE and result["gradient_difference"]["1f1b"] < TOLERANCE
    assert result["peak_held"] == {"gpipe": [4, 4], "1f1b": [2, 1]}
    events = result["events"]["gpipe"]
    assert len(events) == 2 * 2 * 4 and {e.kind for e in events} == {"forward", "backward"}


def test_overlapped_gpipe_by_hand_gives_the_same_gradients():
    result = launch.run(f"{GPIPE}:gpipe_by_hand", 2, timeout=300, quiet=True, micro_batches=4, schedules=("gpipe",),
                        blocking_gpipe=False)[0]
    assert result["gradient_difference"]["gpipe"] < TOLERANCE and result["peak_held"] == {"gpipe": [4, 4]}


def test_the_library_schedules_give_the_full_batch_gradients_and_scale_by_m_themselves():
    result = launch.run("dtutor.pytorch.model_parallel.pipeline:library_gradients", 2, timeout=300, quiet=True,
                        micro_batches=4)[0]
    assert result["gradient_difference"]["gpipe"] < TOLERANCE and result["gradient_difference"]["1f1b"] < TOLERANCE
    assert result["pitfall_ratio"] == pytest.approx(4.0, rel=1e-4)  # dividing the loss by m again: m x too small
