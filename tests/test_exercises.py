"""The exercise checks say right, wrong or not attempted, with the course's proofs; every worked solution passes."""

import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from conftest import SMALL_RUN

from dtutor import exercises, launch
from dtutor.result import RunResult


def fake(world_size: int = 2, weight: float = 1.0, **config) -> RunResult:
    return RunResult(0, world_size, {"strategy": "ddp", "global_batch": 64, **config},
                     parameters={"w": np.full(3, weight)})


def test_a_blank_answer_is_not_attempted_yet_in_the_same_words_every_time(capsys):
    assert not exercises.check_answer(None, 0.2, what="the bubble", why="")
    assert not exercises.check_same_training(None, expect={"world_size": 4})
    assert capsys.readouterr().out == ("not attempted yet: the bubble: write your answer in the cell above, then "
                                       "run this cell again\nnot attempted yet: launch the run in the cell above, "
                                       "then run this cell again\n")


@pytest.mark.parametrize(("answer", "right"), [(0.111, True), (1 / 9, True), (0.2, False), ("a lot", False)])
def test_a_number_is_right_within_its_tolerance(answer, right, capsys):
    verdict = exercises.check_answer(answer, 1 / 9, what="the bubble", why="(p - 1) / (m + p - 1).", tolerance=0.005)
    assert bool(verdict) is right and repr(verdict) == f"Verdict(right={right})"
    assert capsys.readouterr().out.startswith("right: " if right else "not quite: the bubble is 0.1111")


def test_tuples_are_compared_item_by_item():
    assert exercises.check_answer(["simulated", 4, "gloo"], ("simulated", 4, "gloo"), what="plan", why="")
    assert not exercises.check_answer(("gpu", 8, "nccl"), ("simulated", 4, "gloo"), what="plan", why="")


def test_a_run_without_the_asked_change_is_not_yet_right(capsys):
    assert not exercises.check_same_training([fake(2)], expect={"world_size": 4, "accumulation": 2})
    assert capsys.readouterr().out == ("not yet: world_size is 2, the exercise asks for 4; accumulation is None, "
                                       "the exercise asks for 2.\n")


def test_ranks_that_disagree_or_a_twin_that_differs_are_wrong(capsys):
    assert not exercises.check_same_training([fake(), fake(weight=2.0)], expect={}, twin=fake())
    assert not exercises.check_same_training([fake(), fake()], expect={}, twin=fake(weight=1.5))
    assert exercises.check_same_training([fake(), fake()], expect={}, twin=fake(weight=1.0 + 1e-7))
    lines = capsys.readouterr().out.splitlines()
    assert [line.split(":")[0] for line in lines] == ["wrong", "wrong", "right"]


def test_a_slurm_recipe_is_checked_by_the_courses_own_reading_of_it(capsys):
    from dtutor.launch import recipes

    right = recipes.training_sbatch(2, gpus_per_node=2, strategy="ddp", backend="nccl")
    assert exercises.check_recipe(right, nodes=2, gpus_per_node=2, backend="nccl")
    assert not exercises.check_recipe(recipes.training_sbatch(2, gpus_per_node=1, strategy="ddp", backend="gloo"),
                                      nodes=2, gpus_per_node=2, backend="nccl")
    assert not exercises.check_recipe(None, nodes=2, gpus_per_node=2, backend="nccl")
    lines = capsys.readouterr().out.splitlines()
    assert [line.split(":")[0] for line in lines] == ["right", "not quite", "not attempted yet"]
    assert "--gpus-per-node should be 2" in lines[1] and "backend=nccl" in lines[1]


def test_a_real_run_is_checked_against_its_single_device_twin(capsys, shared_train, monkeypatch):
    """DDP's accumulation run and its twin are test_pytorch_ddp's (each launched once per session)."""
    monkeypatch.setattr(launch, "train", shared_train)  # the twin too
    runs = shared_train(2, strategy="ddp", accumulation=2, **SMALL_RUN)
    assert exercises.check_same_training(runs, expect={"world_size": 2, "accumulation": 2})
    assert capsys.readouterr().out.startswith("right: ddp on 2 rank(s), global batch 64 trained like one device")


ROOT = Path(__file__).resolve().parent.parent
NOTEBOOKS = sorted((ROOT / "notebooks").glob("[0-9][0-9]_*.ipynb"))
SOLUTIONS = sorted((ROOT / "notebooks" / "solutions").glob("[0-9][0-9]_*.py"))


@pytest.mark.parametrize("notebook", NOTEBOOKS, ids=[path.stem for path in NOTEBOOKS])
def test_the_notebook_ends_with_exercises_checked_by_dtutor_exercises_and_worked_solutions(notebook):
    assert exercises.check_cells(notebook), f"{notebook.name} has no check cell calling dtutor.exercises.check_..."
    solution = ROOT / "notebooks" / "solutions" / f"{notebook.stem}.py"
    assert solution.exists(), f"no worked solution for {notebook.name}"


@pytest.mark.parametrize("solution", SOLUTIONS, ids=[path.stem for path in SOLUTIONS])
def test_every_worked_solution_passes_its_notebooks_own_checks(solution, shared_train, monkeypatch, capsys):
    """In this process, each launch of a solution (and of a twin the checks train) through ``shared_train``: a run
    that another test or solution also makes is launched once per session."""
    monkeypatch.setattr(launch, "train", shared_train)
    right = exercises.check_solution(solution)
    printed = capsys.readouterr().out
    assert right, printed
    assert printed.startswith("right: ")


def test_a_worked_solution_runs_as_a_script_and_says_right():
    """As a learner runs one: ``python notebooks/solutions/08_laptop_to_cluster.py`` (the same last lines in each)."""
    solution = ROOT / "notebooks" / "solutions" / "08_laptop_to_cluster.py"
    env = {**os.environ, "DTUTOR_OFFLINE": "1", "TQDM_DISABLE": "1",
           "PYTHONPATH": os.pathsep.join([str(ROOT), os.environ.get("PYTHONPATH", "")])}
    done = subprocess.run([sys.executable, str(solution)], capture_output=True, text=True, timeout=300, env=env,
                          cwd=ROOT)
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    assert done.stdout.startswith("right: ")
    main = 'if __name__ == "__main__":\n    raise SystemExit(0 if exercises.check_solution(__file__) else 1)\n'
    assert [path.name for path in SOLUTIONS if not path.read_text().endswith(main)] == []
