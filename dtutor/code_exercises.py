"""The exercises where the learner writes distributed code, checked on real ranks.

The learner writes a plain function (or class) in a notebook cell; a check cell passes it to one of the
``check_...`` functions below, e.g. ``code_exercises.check_ring_all_reduce(my_ring_all_reduce)``. The checker:

1. writes the function's source, with the imports and helpers it uses, to a real file (``answer_file``) and
   prints its path and the torchrun command that runs the same check in a terminal;
2. launches ``dtutor.pytorch.exercise_ranks:check_answers`` on N gloo ranks with ``dtutor.launch.run``
   (torchrun and the course's supervisor, with a timeout). Every rank builds its inputs, computes the reference
   with torch's own API (``dist.all_reduce``, torch's DDP, one whole optimizer, the course's 1F1B pipeline),
   calls the learner's code and compares;
3. prints exactly one verdict line (``dtutor.exercises``' words) and returns a ``Verdict``:
   ``right: ...``; ``wrong: rank R, tensor NAME, max |difference| D (expected ..., got ...)`` (or the exception a
   rank raised); ``hung: no answer after T s; ranks still waiting: ...``. A collective or send/recv that waits
   longer than T seconds gives up (the process group's timeout), so the checker never hangs and the launch
   ends every process it started. A function left at its placeholder (its body ``...``, ``pass`` or
   ``raise NotImplementedError``) prints ``not attempted yet: ...``, the same text every time, without a launch.

``run_answers`` checks several answers, to exercises on the same number of ranks, in one launch (one process
group each, so a hung answer does not spoil the next): what the tests use. A rank that gloo aborts (collectives
of different sizes on different ranks) ends the whole launch: every answer of that launch is then reported wrong.
"""

from __future__ import annotations

import ast
import hashlib
import inspect
import linecache
import os
import sys
import textwrap
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from dtutor.exercises import Verdict, _say

ENTRY = "dtutor.pytorch.exercise_ranks:check_answers"
TIMEOUT = 10.0  # seconds a rank waits in a collective (or runs the learner's code) before the answer counts as hung
STARTUP = 120.0  # seconds a launch may take to start its ranks on a busy machine, on top of the answers' time
ANSWER_FOLDER = "dtutor-exercises"  # relative: beside the notebook, or wherever the check runs
RIGHT_BEFORE: dict[tuple[str, str], tuple[str, str]] = {}  # (exercise, answer file's name): a right verdict this
# process already saw; a file is named by its code, so the same name is the same answer and is not launched again
PLACE_WIDTH = 75  # characters of "where" a rank raised or waits, in a verdict line


@dataclass(frozen=True)
class Exercise:
    """One code-writing exercise: its name on the ranks (``exercise_ranks.EXERCISES``), its ranks, what a right
    answer does (``{worst}``: the largest difference measured) and what the learner writes."""

    name: str
    nprocs: int
    right: str
    writes: str


EXERCISES = {exercise.name: exercise for exercise in [
    Exercise("ring_all_reduce", 4, "every rank's tensor holds the sum over the 4 ranks, as with dist.all_reduce (max "
             "|difference| {worst:.2g}): reduce-scatter, then all-gather.", "my_ring_all_reduce(tensor)"),
    Exercise("average_gradients", 2, "every gradient equals torch DDP's on 2 ranks (max |difference| {worst:.2g}): "
             "one all-reduce per parameter, then divide by N.", "my_average_gradients(model)"),
    Exercise("sharded_optimizer", 2, "3 Adam steps on 2 ranks equal one Adam on the whole model and batch (max "
             "|difference| {worst:.2g}); no rank holds all of Adam's state.",
             "MyShardedOptimizer(params, optimizer_class, **defaults)"),
    Exercise("one_f_one_b", 3, "every stage of 3 ran the course's 1F1B order, and its gradients equal the course's "
             "pipeline's (max |difference| {worst:.2g}).", "my_one_f_one_b(stage, stages, micro_batches)"),
    Exercise("train_step_with_log", 2, "every rank joins the loss's all-reduce, so none waits for a collective the "
             "others skip; the step equals torch DDP's (max |difference| {worst:.2g}).",
             "my_train_step(model, optimizer, inputs, targets)"),
]}


def _source(answer: Any) -> str:
    """The source of a function or class, dedented; a class defined in a notebook cell is found in its cell."""
    try:
        return textwrap.dedent(inspect.getsource(answer))
    except (OSError, TypeError):
        if not inspect.isclass(answer):
            raise
    methods = [value for value in vars(answer).values() if inspect.isfunction(value)]
    if not methods:
        raise TypeError(f"cannot find the source of {answer.__name__}: give it at least one method")
    code = methods[0].__code__
    lines = linecache.getlines(code.co_filename)
    for node in ast.walk(ast.parse("".join(lines))):
        if isinstance(node, ast.ClassDef) and node.name == answer.__name__ and \
                node.lineno <= code.co_firstlineno <= (node.end_lineno or 0):
            start = min([node.lineno, *(d.lineno for d in node.decorator_list)])
            return textwrap.dedent("".join(lines[start - 1:node.end_lineno]))
    raise TypeError(f"cannot find the source of class {answer.__name__}")


def _namespace(answer: Any) -> dict[str, Any]:
    """The globals the answer's code sees."""
    if inspect.isclass(answer):
        methods = [value for value in vars(answer).values() if inspect.isfunction(value)]
        return methods[0].__globals__ if methods else vars(sys.modules.get(answer.__module__, sys))
    return getattr(answer, "__globals__", {})


def _importable(value: Any) -> bool:
    """Whether a fresh rank process can import ``value`` by name: a name in ``dtutor``, the standard library or an
    installed package (not a notebook's ``__main__``, a script or a test module: their source is copied)."""
    module = sys.modules.get(getattr(value, "__module__", None) or "")
    if module is None or getattr(module, getattr(value, "__qualname__", ""), None) is not value:
        return False
    top = module.__name__.partition(".")[0]
    return top == "dtutor" or top in sys.stdlib_module_names or "-packages" in (getattr(module, "__file__", "") or "")


def _import_line(name: str, value: Any) -> str | None:
    """How the answer's file gets ``name``: an import, a constant, or None (its source is copied instead)."""
    if inspect.ismodule(value):
        return f"import {value.__name__}" + ("" if value.__name__ == name else f" as {name}")
    if _importable(value):
        return f"from {value.__module__} import {value.__qualname__}" + (
            "" if value.__qualname__ == name else f" as {name}")
    if isinstance(value, int | float | str | bool | type(None)):
        return f"{name} = {value!r}"
    return None


def answer_code(answer: Any) -> str:
    """The file the ranks run: the imports and constants the answer uses, the helpers it calls that were defined
    beside it (their source), its own source, and ``ANSWER = <its name>``."""
    name = answer.__name__
    if _importable(answer):
        return f"from {answer.__module__} import {answer.__qualname__} as ANSWER\n"
    namespace, imports, bodies, seen, todo = _namespace(answer), [], [], {name}, [answer]
    while todo:
        source = _source(todo.pop())
        bodies.insert(0, source)
        for used in sorted({node.id for node in ast.walk(ast.parse(source)) if isinstance(node, ast.Name)}):
            if used in seen or used not in namespace:
                continue
            seen.add(used)
            line = _import_line(used, namespace[used])
            if line is not None:
                imports.append(line)
            elif inspect.isfunction(namespace[used]) or inspect.isclass(namespace[used]):
                todo.append(namespace[used])
    head = "# Written by dtutor.code_exercises: the ranks import this file and call ANSWER.\n"
    return head + "\n".join(sorted(imports)) + "\n\n\n" + "\n\n".join(bodies) + f"\n\nANSWER = {name}\n"


def answer_file(answer: Any) -> Path:
    """The answer's code (``answer_code``) in a file named by its content (the same code, the same path), in the
    folder ``dtutor-exercises`` beside the notebook (the current folder), where the learner can open it."""
    code = answer_code(answer)
    folder = Path(ANSWER_FOLDER)
    folder.mkdir(exist_ok=True)
    path = folder / f"{answer.__name__}-{hashlib.sha1(code.encode()).hexdigest()[:8]}.py"
    if not path.exists():
        partial = path.with_suffix(f".{os.getpid()}.tmp")
        partial.write_text(code)
        partial.replace(path)
    return path


def _is_placeholder_body(body: list[ast.stmt]) -> bool:
    if body and isinstance(body[0], ast.Expr) and isinstance(body[0].value, ast.Constant) and \
            isinstance(body[0].value.value, str):
        body = body[1:]  # the docstring
    if len(body) != 1:
        return not body
    statement = body[0]
    if isinstance(statement, ast.Pass) or (isinstance(statement, ast.Expr) and isinstance(statement.value,
                                                                                      ast.Constant)):
        return isinstance(statement, ast.Pass) or statement.value.value is Ellipsis
    if isinstance(statement, ast.Raise) and statement.exc is not None:
        raised = statement.exc.func if isinstance(statement.exc, ast.Call) else statement.exc
        return isinstance(raised, ast.Name) and raised.id == "NotImplementedError"
    return False


def is_placeholder(answer: Any) -> bool:
    """Whether ``answer`` is None or still its placeholder: every function body ``...``, ``pass`` or
    ``raise NotImplementedError``."""
    if answer is None:
        return True
    if _importable(answer):
        return False
    functions = [node for node in ast.walk(ast.parse(_source(answer)))
                 if isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef)]
    return bool(functions) and all(_is_placeholder_body(function.body) for function in functions)


def _short(text: str) -> str:
    return text if len(text) <= PLACE_WIDTH else text[:PLACE_WIDTH - 3] + "..."


def verdict_of(reports: list[dict[str, Any]], exercise: Exercise, timeout: float) -> tuple[str, str]:
    """One verdict (its word and text) from every rank's report on one answer (``exercise_ranks.run_answer``)."""
    by_outcome = {outcome: [r for r in reports if r["outcome"] == outcome] for outcome in ("raised", "waiting")}
    if by_outcome["raised"]:
        first = by_outcome["raised"][0]
        return "wrong", f"rank {first['rank']} raised {first['error']} ({_short(first['where'])})"
    if by_outcome["waiting"]:
        ranks = ", ".join(str(r["rank"]) for r in by_outcome["waiting"])
        first = by_outcome["waiting"][0]
        return "hung", (f"no answer after {timeout:g} s; ranks still waiting: {ranks} (rank {first['rank']} at "
                        f"{_short(first['where'])})")
    for report in reports:
        mismatch = report["mismatch"]
        if mismatch:
            size = f", max |difference| {mismatch['difference']:.3g}" if "difference" in mismatch else ""
            return "wrong", (f"rank {report['rank']}, {mismatch['what']}{size} (expected {mismatch['expected']}, "
                             f"got {mismatch['got']})")
    return "right", exercise.right.format(worst=max(r["worst"] for r in reports))


def _launch_failure(error: Exception) -> str:
    """Why a launch ended without reports, in one line (gloo aborts a rank whose collectives do not match)."""
    text = str(error)
    if "collective mismatch" in text or "doesn't match expected size" in text:
        return ("a rank aborted: gloo received a message of another size than its collective expected: the ranks "
                "called different collectives, or in another order")
    return f"the ranks could not run the check: {_short(text.strip().splitlines()[0])}"


def run_answers(answers: Sequence[tuple[str, Any]], *, timeout: float = TIMEOUT, quiet: bool = True,
                show: bool = False) -> list[tuple[str, str]]:
    """Check every ``(exercise, answer)`` of ``answers`` (exercises on the same number of ranks) in one launch;
    return each one's verdict (word, text). ``show`` prints the answer files and the equivalent torchrun command."""
    from dtutor.launch import LaunchError, run, shell_command

    specs = [EXERCISES[exercise] for exercise, _ in answers]
    if len({spec.nprocs for spec in specs}) != 1:
        raise ValueError("run_answers: the exercises must run on the same number of ranks")
    files = [str(answer_file(answer)) for _, answer in answers]
    arguments = {"answers": ",".join(f"{exercise}:{path}" for (exercise, _), path in zip(answers, files, strict=True)),
                 "wait": timeout}
    if show:
        print("your code, written out for the ranks:", ", ".join(files))
        words = [f"--nproc-per-node={specs[0].nprocs}", "-m", "dtutor.launch", ENTRY, f"answers={arguments['answers']}"]
        print("$", shell_command(["torchrun", "--standalone", *words, f"wait={timeout:g}"]))
    known = [(exercise, Path(path).name) for (exercise, _), path in zip(answers, files, strict=True)]
    verdicts = {index: RIGHT_BEFORE[key] for index, key in enumerate(known) if key in RIGHT_BEFORE}
    missing = [index for index in range(len(answers)) if index not in verdicts]
    if missing:
        arguments["answers"] = ",".join(f"{answers[index][0]}:{files[index]}" for index in missing)
        try:
            reports = run(ENTRY, specs[0].nprocs, timeout=STARTUP + len(missing) * (2 * timeout + 10), quiet=quiet,
                          **arguments)
        except LaunchError as error:
            return [verdicts.get(index, ("wrong", _launch_failure(error))) for index in range(len(answers))]
        for place, index in enumerate(missing):
            verdicts[index] = verdict_of([rank[place] for rank in reports], specs[index], timeout)
            if verdicts[index][0] == "right":
                RIGHT_BEFORE[known[index]] = verdicts[index]
    return [verdicts[index] for index in range(len(answers))]


def check(exercise: str, answer: Any, *, timeout: float = TIMEOUT) -> Verdict:
    """Check one answer to ``exercise`` on its ranks (module docs); prints the file, the command, then the verdict."""
    spec = EXERCISES[exercise]
    if is_placeholder(answer):
        return _say("not attempted yet", f"write {spec.writes} in the cell above, then run this cell again")
    (word, text), = run_answers([(exercise, answer)], timeout=timeout, show=True)
    return _say(word, text)


def check_ring_all_reduce(function: Any, *, timeout: float = TIMEOUT) -> Verdict:
    """Notebook 02: ``function(tensor)`` sums ``tensor`` over the ranks in place with send/recv (and returns it);
    checked on 4 ranks against ``dist.all_reduce``."""
    return check("ring_all_reduce", function, timeout=timeout)


def check_average_gradients(function: Any, *, timeout: float = TIMEOUT) -> Verdict:
    """Notebook 02: ``function(model)``, called after backward, averages every ``.grad`` over the ranks; checked on 2
    ranks against torch DDP's gradients."""
    return check("average_gradients", function, timeout=timeout)


def check_train_step_with_log(function: Any, *, timeout: float = TIMEOUT) -> Verdict:
    """Notebook 02's deadlock: ``function(model, optimizer, inputs, targets)`` trains one step (gradients averaged by
    hand) and returns the loss averaged over the ranks; checked on 2 ranks against torch's DDP."""
    return check("train_step_with_log", function, timeout=timeout)


def check_one_f_one_b(function: Any, *, timeout: float = TIMEOUT) -> Verdict:
    """Notebook 05: ``function(stage, stages, micro_batches)`` returns stage's 1F1B order of ``("F", i)`` and
    ``("B", i)``; run by the course's hand-written pipeline on 3 stages and compared with its own 1F1B."""
    return check("one_f_one_b", function, timeout=timeout)


def check_sharded_optimizer(optimizer_class: Any, *, timeout: float = TIMEOUT) -> Verdict:
    """Notebook 06: ``optimizer_class(params, torch.optim.Adam, lr=...)``, ZeRO-1; checked on 2 ranks against one Adam
    over the whole model fed the global batch, and for holding less than a whole copy of the optimizer state."""
    return check("sharded_optimizer", optimizer_class, timeout=timeout)
