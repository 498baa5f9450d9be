"""The rank side of the code-writing exercises (``dtutor.code_exercises``): the learner's code on every rank.

``check_answers`` is the entry point ``dtutor.launch.run`` starts on N gloo ranks. For each answer (its exercise,
and the learner's source written out by ``code_exercises.answer_file``) every rank joins a fresh process group
whose collectives and sends give up after ``wait`` seconds, builds the exercise's inputs (the same on every run),
computes the reference with torch's own API *before* the learner's code runs (``dist.all_reduce``, torch's DDP, a
whole optimizer on one device, the course's 1F1B pipeline), calls the learner's code and compares. Each rank
returns one report per answer:

- ``done``: the largest difference found, and the first comparison that failed (None: all held);
- ``waiting``: a collective or a send/recv timed out (or the code ran past the timeout), and where it waited;
- ``raised``: the exception the learner's code raised, and where.

Each answer ends with a barrier on the launch's key-value store, not a collective: a rank that finished waits
there, so a rank still stuck in a collective times out in it (a report) instead of failing on a closed connection.
A rank whose peer timed out first may still see that peer's connection close before its own timeout: that rank
was waiting too, and reports ``waiting``.
"""

from __future__ import annotations

import copy
import datetime
import gc
import linecache
import os
import runpy
import signal
import time
import traceback
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch
import torch.distributed as dist
from torch import nn

from dtutor import models
from dtutor.pytorch.model_parallel import stages as st
from dtutor.pytorch.model_parallel.gpipe import one_f_one_b_actions, run_stage, split_batch

MLP = {"width": 5, "depth": 1, "in_features": 6}  # wide_mlp: 95 parameters (odd: 2 shards need padding)
PIPELINE_MLP = {"width": 8, "depth": 2, "in_features": 6}  # wide_mlp: 3 layers, one per stage on 3 ranks
MICRO_BATCHES, LR, STEPS = 4, 0.01, 3
GRACE = 5.0  # seconds a finished rank waits, past the timeout, for the others to report
TOLERANCE = 1e-5  # float32 rounding of the same sums in another order
STARTUP = 120.0  # seconds the ranks wait for each other to start (importing torch on a busy machine)
# a collective or send/recv that gave up waiting: its own timeout, or its peer's (gloo then closes the connection)
WAITING_SIGNS = ("Timed out", "Connection closed by peer")
Comparison = tuple[str, Any, Any]  # what, expected, got (tensors; or plain values compared with ==)


class AnswerTimeout(Exception):
    """The learner's code ran past the timeout outside any collective (a Python loop that never ends)."""


def _generator(*keys: int) -> torch.Generator:
    return torch.Generator().manual_seed(sum(key * 1000 ** n for n, key in enumerate(keys)))


def _batch(rank: int, step: int, size: int = 4, features: int = 6) -> tuple[torch.Tensor, torch.Tensor]:
    """Rank ``rank``'s batch at ``step``: the same on every run."""
    generator = _generator(rank, step, 7)
    return torch.randn(size, features, generator=generator), torch.randint(0, 10, (size,), generator=generator)


def _ddp_reference(model: nn.Module, inputs: torch.Tensor, targets: torch.Tensor) -> nn.Module:
    """A copy of ``model`` after one backward under torch's DDP: its gradients are the reference."""
    reference = nn.parallel.DistributedDataParallel(copy.deepcopy(model))
    nn.functional.cross_entropy(reference(inputs), targets).backward()
    return reference.module


def ring_all_reduce(answer: Callable, rank: int, world: int) -> list[Comparison]:
    """``answer(tensor)`` against ``dist.all_reduce`` of a copy (whole numbers: sums exact in any order), for a
    size that the world divides and one that it does not (chunks of unequal length)."""
    generator = _generator(rank)
    checks: list[Comparison] = []
    for size in (6 * world, 6 * world + 1):
        tensor = torch.randint(-9, 10, (size,), generator=generator).float()
        expected = tensor.clone()
        dist.all_reduce(expected)
        returned = answer(tensor)
        checks.append((f"`tensor` of {size} elements (summed in place)", expected, tensor))
        if returned is not tensor:
            checks.append((f"returned, {size} elements", expected, returned))
    return checks


def average_gradients(answer: Callable, rank: int, world: int) -> list[Comparison]:
    """``answer(model)`` after backward on this rank's batch, against torch's DDP gradients on the same batch."""
    model = models.seeded(models.wide_mlp, 0, **MLP)
    inputs, targets = _batch(rank, 0)
    reference = _ddp_reference(model, inputs, targets)
    nn.functional.cross_entropy(model(inputs), targets).backward()
    answer(model)
    return [(f"{name}.grad", expected.grad, parameter.grad) for (name, parameter), expected
            in zip(model.named_parameters(), reference.parameters(), strict=True)]


def _state_elements(optimizer: Any) -> int | None:
    """Elements of optimizer state (tensors larger than one number) in ``optimizer`` or one of its attributes."""
    found = [optimizer] if isinstance(optimizer, torch.optim.Optimizer) else [
        value for value in vars(optimizer).values() if isinstance(value, torch.optim.Optimizer)]
    if not found:
        return None
    return sum(value.numel() for inner in found for state in inner.state.values() for value in state.values()
               if isinstance(value, torch.Tensor) and value.numel() > 1)


def sharded_optimizer(answer: Callable, rank: int, world: int) -> list[Comparison]:
    """``answer(params, torch.optim.Adam, lr=...)`` for ``STEPS`` steps on this rank's batches, against Adam over
    the whole model on one device fed every rank's batch; then its state must be less than a whole copy."""
    model = models.seeded(models.wide_mlp, 0, **MLP)
    whole = copy.deepcopy(model)
    full = torch.optim.Adam(whole.parameters(), lr=LR)
    optimizer = answer(model.parameters(), torch.optim.Adam, lr=LR)
    checks: list[Comparison] = []
    for step in range(STEPS):
        batches = [_batch(r, step) for r in range(world)]
        full.zero_grad()
        nn.functional.cross_entropy(whole(torch.cat([b[0] for b in batches])),
                                    torch.cat([b[1] for b in batches])).backward()
        full.step()
        optimizer.zero_grad()
        nn.functional.cross_entropy(model(batches[rank][0]), batches[rank][1]).backward()
        optimizer.step()
        checks += [(f"{name} after step {step + 1}", expected.detach().clone(), parameter.detach().clone())
                   for (name, parameter), expected in zip(model.named_parameters(), whole.parameters(), strict=True)]
    held, whole_state = _state_elements(optimizer), _state_elements(full)
    if held is not None and held >= whole_state:
        checks.append(("optimizer state held (elements)", f"less than the whole model's {whole_state}", held))
    return checks


def _validated(order: Any, micro_batches: int) -> list[tuple[str, int]]:
    """The learner's order as ``("F"|"B", i)`` pairs; ``ValueError`` for one no stage can carry out."""
    actions = [(str(kind), int(i)) for kind, i in order]
    done: set[tuple[str, int]] = set()
    for kind, i in actions:
        if kind not in ("F", "B") or not 0 <= i < micro_batches or (kind, i) in done:
            raise ValueError(f"({kind!r}, {i}): each of ('F', i) and ('B', i), i < {micro_batches}, comes once")
        if kind == "B" and ("F", i) not in done:
            raise ValueError(f"('B', {i}) comes before ('F', {i}): a backward needs its forward's activations")
        done.add((kind, i))
    return actions


def one_f_one_b(answer: Callable, rank: int, world: int) -> list[Comparison]:
    """Stage ``rank`` carries out ``answer(stage, stages, micro_batches)`` with the course's hand-written pipeline
    (``gpipe.run_stage``, overlapped sends); compared with the course's own 1F1B run: gradients, then the order."""
    model = models.seeded(models.wide_mlp, 0, **PIPELINE_MLP)
    parts = st.stage_modules(model, st.even_cuts(len(models.pipeline_layers(model)), world))
    inputs, targets = _batch(0, 0, size=2 * MICRO_BATCHES)
    pieces, labels = split_batch(inputs, MICRO_BATCHES), split_batch(targets, MICRO_BATCHES)
    setup = {"stage": rank, "stages": world, "shapes": st.boundary_shapes(parts, pieces[0]), "inputs": pieces,
             "targets": labels, "blocking": False}
    stage, course = parts[rank], one_f_one_b_actions(rank, world, MICRO_BATCHES)
    run_stage(stage, course, **setup)
    expected = {name: parameter.grad.clone() for name, parameter in stage.named_parameters()}
    stage.zero_grad()
    order = _validated(answer(rank, world, MICRO_BATCHES), MICRO_BATCHES)
    run_stage(stage, order, **setup)
    checks: list[Comparison] = [(f"{name}.grad", expected[name], parameter.grad)
                                for name, parameter in stage.named_parameters()]
    for index, (want, have) in enumerate(zip(course, order, strict=False)):
        checks.append((f"action {index + 1} of stage {rank}'s order", want, have))
    return checks + [(f"number of actions of stage {rank}", len(course), len(order))]


def train_step_with_log(answer: Callable, rank: int, world: int) -> list[Comparison]:
    """``answer(model, optimizer, inputs, targets)``: one SGD step synced by hand, returning the loss averaged
    over the ranks; against torch's DDP after the same step and ``dist.all_reduce`` of the losses."""
    model = models.seeded(models.wide_mlp, 0, **MLP)
    inputs, targets = _batch(rank, 0)
    reference = nn.parallel.DistributedDataParallel(copy.deepcopy(model))
    loss = nn.functional.cross_entropy(reference(inputs), targets)
    loss.backward()
    torch.optim.SGD(reference.parameters(), lr=0.1).step()
    mean_loss = loss.detach().clone()
    dist.all_reduce(mean_loss)
    returned = answer(model, torch.optim.SGD(model.parameters(), lr=0.1), inputs, targets)
    got = torch.as_tensor(returned).detach().float().reshape(()) if returned is not None else None
    return [("returned mean loss", mean_loss / world, got)] + [
        (f"{name} after the step", expected, parameter.detach())
        for (name, parameter), expected in zip(model.named_parameters(), reference.module.parameters(), strict=True)]


EXERCISES: dict[str, Callable[[Callable, int, int], list[Comparison]]] = {
    "ring_all_reduce": ring_all_reduce, "average_gradients": average_gradients,
    "sharded_optimizer": sharded_optimizer, "one_f_one_b": one_f_one_b, "train_step_with_log": train_step_with_log,
}


def compare(checks: list[Comparison], tolerance: float) -> tuple[float, dict[str, Any] | None]:
    """The largest tensor difference in ``checks`` and the first comparison that fails (None: none fails)."""
    worst, first = 0.0, None
    for what, expected, got in checks:
        failed = None
        if not isinstance(expected, torch.Tensor):
            text = expected if isinstance(expected, str) else repr(expected)
            failed = None if expected == got else {"what": what, "expected": text, "got": repr(got)}
        elif not isinstance(got, torch.Tensor) or got.shape != expected.shape:
            shape = tuple(got.shape) if isinstance(got, torch.Tensor) else type(got).__name__
            failed = {"what": f"tensor {what}", "expected": f"shape {tuple(expected.shape)}", "got": f"{shape}"}
        else:
            difference = (expected.detach().double() - got.detach().double()).abs()
            worst = max(worst, float(difference.max()) if difference.numel() else 0.0)
            if difference.numel() and float(difference.max()) > tolerance:
                at = int(difference.argmax())
                failed = {"what": f"tensor {what}", "difference": float(difference.max()),
                          "expected": f"{float(expected.reshape(-1)[at]):.6g}",
                          "got": f"{float(got.reshape(-1)[at]):.6g} at index {at}"}
        first = first or failed
    return worst, first


def _short(code: str, width: int = 45) -> str:
    return code if len(code) <= width else code[:width - 3] + "..."


def _where(error: BaseException, answer_file: str) -> str:
    """Where ``error`` happened: the last line of the learner's code in its traceback ("line 3 of my_function"),
    else the last line outside torch."""
    frames = list(traceback.walk_tb(error.__traceback__))
    own = [(frame, line) for frame, line in frames if frame.f_code.co_filename == answer_file]
    if own:
        frame, line = own[-1]
        code = _short(linecache.getline(answer_file, line).strip())
        return f"line {line - frame.f_code.co_firstlineno + 1} of {frame.f_code.co_name}: `{code}`"
    outside = [(frame, line) for frame, line in frames if f"{os.sep}torch{os.sep}" not in frame.f_code.co_filename]
    if not outside:
        return "torch"
    frame, line = outside[-1]
    code = _short(linecache.getline(frame.f_code.co_filename, line).strip())
    return f"{Path(frame.f_code.co_filename).name} line {line}: `{code}`"


def _alarm(signum: int, frame: Any) -> None:
    raise AnswerTimeout("the code ran past the timeout")


def run_answer(exercise: str, answer_file: str, tolerance: float, timeout: float) -> dict[str, Any]:
    """This rank's report on one answer (module docs); the process group is already joined."""
    rank, world = dist.get_rank(), dist.get_world_size()
    previous = signal.signal(signal.SIGALRM, _alarm)
    try:
        answer = runpy.run_path(answer_file, run_name="dtutor_answer")["ANSWER"]
        signal.setitimer(signal.ITIMER_REAL, timeout + 1.0)
        worst, mismatch = compare(EXERCISES[exercise](answer, rank, world), tolerance)
        return {"rank": rank, "outcome": "done", "worst": worst, "mismatch": mismatch}
    except Exception as error:  # noqa: BLE001 - the learner's code may raise anything: it is the report
        waiting = isinstance(error, AnswerTimeout) or any(sign in str(error) for sign in WAITING_SIGNS)
        return {"rank": rank, "outcome": "waiting" if waiting else "raised", "where": _where(error, answer_file),
                "error": f"{type(error).__name__}: {str(error).splitlines()[0] if str(error) else ''}"[:120]}
    finally:
        signal.setitimer(signal.ITIMER_REAL, 0)
        signal.signal(signal.SIGALRM, previous)


def _store_barrier(store: dist.Store, key: str, world: int, deadline: float) -> None:
    """Wait (on the store, no collective) until ``world`` ranks have added to ``key``, or ``deadline`` passes."""
    store.add(key, 1)
    while store.add(key, 0) < world and time.monotonic() < deadline:
        time.sleep(0.05)


def check_answers(answers: str, wait: float = 10.0, tolerance: float = TOLERANCE) -> list[dict]:
    """Entry point (every rank): this rank's report on each answer of ``answers`` ("exercise:file,exercise:file"),
    one process group per answer, whose collectives give up after ``wait`` seconds."""
    pairs = [answer.partition(":")[::2] for answer in answers.split(",")]
    unknown = sorted({exercise for exercise, _ in pairs} - set(EXERCISES))
    if unknown:
        raise ValueError(f"exercise: must be one of {', '.join(EXERCISES)}, got {', '.join(unknown)}")
    store, rank, world = next(dist.rendezvous("env://", timeout=datetime.timedelta(seconds=STARTUP)))
    reports = []
    for index, (exercise, answer_file) in enumerate(pairs):
        _store_barrier(store, f"dtutor-ready-{index}", world, time.monotonic() + STARTUP)  # start the group together
        group_store = dist.PrefixStore(f"dtutor-answer-{index}/", store)
        dist.init_process_group("gloo", store=group_store, rank=rank, world_size=world,
                                timeout=datetime.timedelta(seconds=wait))
        try:
            reports.append(run_answer(exercise, answer_file, tolerance, wait))
        finally:
            _store_barrier(store, f"dtutor-finished-{index}", world, time.monotonic() + wait + GRACE)
            gc.collect()  # what the reference and the answer left holding the group (DDP), before it goes
            dist.destroy_process_group()
    return reports
