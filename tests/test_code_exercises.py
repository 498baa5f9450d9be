"""The code-writing exercises' checker: for each exercise, the worked solution is right, a wrong answer is reported
wrong (naming the rank and the tensor), and a hanging answer is reported hung within the checker's timeout.

Three launches in all: the answers to the 2-rank exercises share one, the ring (4 ranks) and 1F1B (3 stages)
have one each; each answer gets its own process group there, so a hung answer does not spoil the next.
"""

import functools
import runpy
from pathlib import Path

import pytest
import torch.distributed as dist
from torch import nn

from dtutor import code_exercises, exercises
from dtutor.pytorch.ddp_by_hand import average_gradients
from dtutor.pytorch.model_parallel.gpipe import gpipe_actions
from dtutor.pytorch.ring import ring_all_reduce
from dtutor.pytorch.sharded.zero1_by_hand import ShardedOptimizer

WAIT = 3.0  # seconds a rank waits in a collective before its answer counts as hung
SOLUTIONS = Path(__file__).resolve().parent.parent / "notebooks" / "solutions"


@pytest.fixture(autouse=True, scope="module")
def answer_folder(tmp_path_factory):
    """The answer files go to a temporary folder, not ./dtutor-exercises wherever pytest was started."""
    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(code_exercises, "ANSWER_FOLDER", str(tmp_path_factory.mktemp("dtutor-exercises")))
        yield


def ring_without_all_gather(tensor):
    """Wrong: the reduce-scatter alone; each rank ends with one chunk of the sum."""
    rank, world = dist.get_rank(), dist.get_world_size()
    chunks = tensor.view(-1).chunk(world)
    for step in range(world - 1):
        incoming = chunks[(rank - step - 1) % world].clone()
        request = dist.isend(chunks[(rank - step) % world].contiguous(), (rank + 1) % world)
        dist.recv(incoming, (rank - 1) % world)
        request.wait()
        chunks[(rank - step - 1) % world].add_(incoming)
    return tensor


def ring_sending_first(tensor):
    """Hangs: every rank's blocking send waits for a receive that its neighbour has not started."""
    rank, world = dist.get_rank(), dist.get_world_size()
    incoming = torch_empty_like(tensor)
    dist.send(tensor, (rank + 1) % world)
    dist.recv(incoming, (rank - 1) % world)
    return tensor.add_(incoming)


def torch_empty_like(tensor):
    """A helper defined beside the answer: the checker copies its source too."""
    return tensor.new_empty(tensor.shape)


def summed_gradients(model):
    """Wrong: the sum over the ranks, not the average."""
    for parameter in model.parameters():
        dist.all_reduce(parameter.grad)


def gradients_on_rank_zero(model):
    """Hangs: rank 0 waits in an all-reduce that rank 1 never calls."""
    if dist.get_rank() == 0:
        average_gradients(model)


class WholeAdamOnEveryRank:
    """Wrong: DDP with a whole Adam on every rank: the right parameters, but not ZeRO-1's sharded state."""

    def __init__(self, params, optimizer_class, **defaults):
        self.params = list(params)
        self.optimizer = optimizer_class(self.params, **defaults)

    def step(self):
        for parameter in self.params:
            dist.all_reduce(parameter.grad)
            parameter.grad /= dist.get_world_size()
        self.optimizer.step()

    def zero_grad(self):
        self.optimizer.zero_grad()


class StepOnRankZeroOnly(ShardedOptimizer):
    """Hangs: only rank 0 steps, so its reduce-scatter waits for rank 1."""

    def step(self):
        if dist.get_rank() == 0:
            super().step()


def gpipe_order(stage, stages, micro_batches):
    """Wrong for 1F1B: GPipe's order (the same gradients, every activation held at once)."""
    return gpipe_actions(micro_batches)


def warm_up_by_stage_number(stage, stages, micro_batches):
    """Hangs: stage s warms up with s forwards instead of stages - s - 1, so neighbours wait for each other."""
    actions = [("F", i) for i in range(stage)]
    for i in range(micro_batches - stage):
        actions += [("F", stage + i), ("B", i)]
    return actions + [("B", i) for i in range(micro_batches - stage, micro_batches)]


def step_returning_own_loss(model, optimizer, inputs, targets):
    """Wrong: this rank's loss, not the mean over the ranks."""
    optimizer.zero_grad()
    loss = nn.functional.cross_entropy(model(inputs), targets)
    loss.backward()
    average_gradients(model)
    optimizer.step()
    return loss.detach()


def step_logging_on_rank_zero(model, optimizer, inputs, targets):
    """Hangs: notebook 02's deadlock, the loss all-reduced on rank 0 only."""
    optimizer.zero_grad()
    loss = nn.functional.cross_entropy(model(inputs), targets)
    loss.backward()
    average_gradients(model)
    optimizer.step()
    mean_loss = loss.detach().clone()
    if dist.get_rank() == 0:
        dist.all_reduce(mean_loss)
    return mean_loss / dist.get_world_size()


def _solution(notebook: str, name: str):
    return runpy.run_path(str(SOLUTIONS / f"{notebook}.py"), run_name="dtutor_solution")[name]


ANSWERS = {  # exercise: (the worked solution, a wrong answer, a hanging answer)
    "ring_all_reduce": lambda: (ring_all_reduce, ring_without_all_gather, ring_sending_first),
    "average_gradients": lambda: (average_gradients, summed_gradients, gradients_on_rank_zero),
    "sharded_optimizer": lambda: (ShardedOptimizer, WholeAdamOnEveryRank, StepOnRankZeroOnly),
    "one_f_one_b": lambda: (_solution("05_model_parallelism", "my_one_f_one_b"), gpipe_order,
                            warm_up_by_stage_number),
    "train_step_with_log": lambda: (_solution("02_distributed_data_parallel", "my_train_step"),
                                    step_returning_own_loss, step_logging_on_rank_zero),
}
WRONG = {  # how each wrong answer is reported: the rank and what differs
    "ring_all_reduce": "rank 0, tensor `tensor` of 24 elements (summed in place), max |difference| ",
    "average_gradients": "rank 0, tensor 1.weight.grad, max |difference| ",
    "sharded_optimizer": "rank 0, optimizer state held (elements) (expected less than the whole model's 190, got 190)",
    "one_f_one_b": "rank 0, action 4 of stage 0's order (expected ('B', 0), got ('F', 3))",
    "train_step_with_log": "rank 0, tensor returned mean loss, max |difference| ",
}
HUNG = {  # the ranks still waiting, and where the first one waits
    "ring_all_reduce": ("0, 1, 2, 3", "line 5 of ring_sending_first: `dist.send(tensor, (rank + 1) % world)`"),
    "average_gradients": ("0", "line 4 of gradients_on_rank_zero: `average_gradients(model)`"),
    "sharded_optimizer": ("0", "line 3 of step: `super().step()`"),
    "one_f_one_b": ("0, 1, 2", "gpipe.py"),
    "train_step_with_log": ("0", "line 10 of step_logging_on_rank_zero: `dist.all_reduce(mean_loss)`"),
}


@functools.cache
def verdicts(nprocs: int) -> dict[str, tuple]:
    """Every answer to the exercises on ``nprocs`` ranks, checked in one launch: exercise -> three verdicts."""
    names = [name for name, spec in code_exercises.EXERCISES.items() if spec.nprocs == nprocs]
    answers = [(name, answer) for name in names for answer in ANSWERS[name]()]
    found = code_exercises.run_answers(answers, timeout=WAIT)
    return {name: tuple(found[3 * i:3 * i + 3]) for i, name in enumerate(names)}


@pytest.mark.parametrize("exercise", list(code_exercises.EXERCISES))
def test_the_solution_is_right_a_wrong_answer_wrong_and_a_hanging_one_hung(exercise):
    right, wrong, hung = verdicts(code_exercises.EXERCISES[exercise].nprocs)[exercise]
    assert right[0] == "right", right
    assert right[1].endswith(".") and "(max |difference| " in right[1]
    assert wrong[0] == "wrong" and wrong[1].startswith(WRONG[exercise]), wrong
    ranks, where = HUNG[exercise]
    assert hung[0] == "hung" and hung[1].startswith(f"no answer after {WAIT:g} s; ranks still waiting: {ranks} ("), hung
    assert where in hung[1]


def test_every_exercise_has_its_three_answers_here_and_its_right_line_fits_150_characters():
    assert set(ANSWERS) == set(WRONG) == set(HUNG) == set(code_exercises.EXERCISES)
    for spec in code_exercises.EXERCISES.values():
        assert len("right: " + spec.right.format(worst=7.5e-9)) <= 150, spec.name
        assert len(f"not attempted yet: write {spec.writes} in the cell above, then run this cell again") <= 150


def placeholder_function(tensor):
    """Sum over the ranks."""
    raise NotImplementedError("your code here")


def placeholder_dots(model):
    ...


class PlaceholderOptimizer:
    def __init__(self, params, optimizer_class, **defaults):
        ...

    def step(self):
        pass


def test_a_placeholder_is_not_attempted_yet_in_the_same_words_every_time_without_a_launch(capsys, monkeypatch):
    monkeypatch.setattr(code_exercises, "run_answers", lambda *args, **kwargs: pytest.fail("launched"))
    for _ in range(2):
        assert not code_exercises.check_ring_all_reduce(placeholder_function)
    assert not code_exercises.check_average_gradients(placeholder_dots)
    assert not code_exercises.check_sharded_optimizer(PlaceholderOptimizer)
    assert not code_exercises.check_one_f_one_b(None)
    lines = capsys.readouterr().out.splitlines()
    assert lines[0] == lines[1] == ("not attempted yet: write my_ring_all_reduce(tensor) in the cell above, then run "
                                    "this cell again")
    assert [line.split(":")[0] for line in lines] == ["not attempted yet"] * 5
    assert all(not code_exercises.is_placeholder(answer) for answer in (ring_sending_first, ring_all_reduce,
                                                                        WholeAdamOnEveryRank))


def test_the_answer_file_holds_its_imports_helpers_and_source_or_imports_a_course_function():
    code = code_exercises.answer_code(ring_sending_first)
    assert "import torch.distributed as dist" in code and "def torch_empty_like(tensor):" in code
    assert code.index("def torch_empty_like") < code.index("def ring_sending_first") and \
        code.endswith("ANSWER = ring_sending_first\n")
    assert code_exercises.answer_code(ring_all_reduce) == "from dtutor.pytorch.ring import ring_all_reduce as ANSWER\n"
    subclass = code_exercises.answer_code(StepOnRankZeroOnly)
    assert "from dtutor.pytorch.sharded.zero1_by_hand import ShardedOptimizer" in subclass
    path = code_exercises.answer_file(ring_sending_first)
    assert path.read_text() == code and path == code_exercises.answer_file(ring_sending_first)


def looping_forever(model):
    while True:
        model.zero_grad()


def test_code_that_never_returns_is_stopped_by_the_alarm_and_reported_waiting():
    from dtutor.pytorch import exercise_ranks

    dist.init_process_group("gloo", store=dist.HashStore(), rank=0, world_size=1)  # in this process, no launch
    try:
        report = exercise_ranks.run_answer("average_gradients", str(code_exercises.answer_file(looping_forever)),
                                           exercise_ranks.TOLERANCE, 0.2)
    finally:
        dist.destroy_process_group()
    assert report["outcome"] == "waiting" and "of looping_forever: `" in report["where"], report


def test_a_rank_that_raised_is_named_and_a_gloo_abort_is_explained():
    spec = code_exercises.EXERCISES["average_gradients"]
    reports = [{"rank": 0, "outcome": "waiting", "where": "line 2 of f: `dist.all_reduce(x)`"},
               {"rank": 1, "outcome": "raised", "where": "line 3 of f: `x[9]`", "error": "IndexError: out of range"}]
    assert code_exercises.verdict_of(reports, spec, 3) == ("wrong", "rank 1 raised IndexError: out of range (line 3 "
                                                                    "of f: `x[9]`)")
    error = RuntimeError("failed; last output:\nwhat(): Received data size doesn't match expected size.")
    assert "different collectives" in code_exercises._launch_failure(error)
    assert "hung" in exercises.VERDICTS


def test_a_right_answer_seen_before_is_not_launched_again(monkeypatch):
    right = verdicts(2)["average_gradients"][0]
    monkeypatch.setattr("dtutor.launch.run", lambda *args, **kwargs: pytest.fail("launched again"))
    assert code_exercises.run_answers([("average_gradients", average_gradients)]) == [right]
    wrong_answer = ANSWERS["average_gradients"]()[1]
    with pytest.raises(pytest.fail.Exception, match="launched again"):  # only right verdicts are kept
        code_exercises.run_answers([("average_gradients", wrong_answer)])
