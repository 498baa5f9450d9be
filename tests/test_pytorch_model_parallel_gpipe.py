"""Pipelines by hand (the strategies pipeline_by_hand and pipeline_by_hand_1f1b) and the library's one-step proof:
m micro-batches give what one device gives on the whole batch."""

import pytest

from dtutor import launch, max_difference, models
from dtutor.pytorch.model_parallel import bubble
from dtutor.pytorch.model_parallel.gpipe import gpipe_actions, one_f_one_b_actions, split_batch
from dtutor.result import identical
from dtutor.strategies import STRATEGIES

TOLERANCE = 1e-6  # fp32 gradients of one step; measured ~6e-9 (the micro-batch sums are added in another order)


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


@pytest.mark.parametrize(("hand", "library"), [("pipeline_by_hand", "pipeline_gpipe"),
                                               ("pipeline_by_hand_1f1b", "pipeline_1f1b")])
def test_by_hand_trains_equal_to_one_device_and_to_the_library_schedule(pipeline_runs, small_reference, hand,
                                                                         library):
    results, tolerance = pipeline_runs(hand), STRATEGIES[hand].tolerance
    assert max_difference(results[0], small_reference) < tolerance and identical(results[0], results[1])
    assert max_difference(results[0], pipeline_runs(library)[0]) < tolerance
    assert max_difference(small_reference, models.seeded(models.mnist_cnn, 0).state_dict()) > 1e-3  # it trained
    stats = results[0].epochs[0]
    assert stats.samples == 256 and stats.steps == 4  # every sample counted once, though both stages read it
    assert stats.loss == pytest.approx(small_reference.epochs[0].loss, rel=1e-5)
    assert results[0].test_accuracy == pytest.approx(small_reference.test_accuracy, abs=1e-9)


def test_each_step_keeps_its_timeline_and_the_activations_each_stage_held(pipeline_runs):
    gpipe, one_f_one_b = pipeline_runs("pipeline_by_hand"), pipeline_runs("pipeline_by_hand_1f1b")
    assert bubble.peak_held(gpipe) == [4, 4] and bubble.peak_held(one_f_one_b) == [2, 1]
    steps = bubble.timelines(gpipe)
    assert len(steps) == 4 and all(len(events) == 2 * 2 * 4 for events in steps)  # 2 stages x (F, B) x m = 4
    first = [(e.stage, e.kind, e.micro_batch) for e in steps[0]]
    assert first[0] == (0, "forward", 0) and first[-1] == (0, "backward", 3)  # all forwards, then all backwards
    assert [(kind, i) for stage, kind, i in first if stage == 1] == [
        (kind, i) for kind in ("forward", "backward") for i in range(4)]
    assert [e.micro_batch for e in bubble.timelines(one_f_one_b)[0] if e.stage == 1] == [0, 0, 1, 1, 2, 2, 3, 3]


def test_the_library_schedules_give_the_full_batch_gradients_and_scale_by_m_themselves():
    result = launch.run("dtutor.pytorch.model_parallel.pipeline:library_gradients", 2, timeout=300, quiet=True,
                        micro_batches=4)[0]
    assert result["gradient_difference"]["gpipe"] < TOLERANCE and result["gradient_difference"]["1f1b"] < TOLERANCE
    assert result["pitfall_ratio"] == pytest.approx(4.0, rel=1e-4)  # dividing the loss by m again: m x too small
