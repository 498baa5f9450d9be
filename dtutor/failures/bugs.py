"""The bugs that hang a distributed job (notebook 09), each a small entry point for ``launch.run`` on 2 ranks, gloo.

Each is plain ``torch.distributed`` code, written as a practitioner would, with the bug marked ``# BUG``; its
keyword option (``fixed=True``, or ``join=True``) runs the fix, which finishes and returns what each rank saw.
Started buggy, a hang lasts until the launch's timeout, and the hang finder (``dtutor.launch.hang_finder``) then
names the collective each rank waits in::

    launch.run("dtutor.failures.bugs:skip_collective", nprocs=2, timeout=5)               # hangs: rank 1 skipped it
    launch.run("dtutor.failures.bugs:skip_collective", nprocs=2, timeout=60, fixed=True)  # finishes

In a terminal: ``torchrun --standalone --nproc-per-node 2 -m dtutor.launch dtutor.failures.bugs:wrong_order``.
``show(name, **options)`` launches one and prints what a learner gets; ``every_fix`` runs all the fixes in one launch.
Each joins the process group and leaves it joined (the next can use it; the worker's exit ends it).
"""

from __future__ import annotations

import re
from typing import Any

import torch
import torch.distributed as dist
from torch import nn
from torch.distributed.algorithms.join import Join
from torch.nn.parallel import DistributedDataParallel as DDP

from dtutor.pytorch.process_group import join_process_group, leave_process_group

NUM_CLASSES = 5


def skip_collective(fixed: bool = False) -> dict:
    """Only rank 0 averages the loss to log it; every rank then meets at a barrier. Rank 1 never joins the all-reduce,
    so rank 0 waits in ``all_reduce`` and rank 1 in ``barrier``. Fixed: every rank takes part in the all-reduce."""
    rank, world_size, _ = join_process_group("gloo")
    loss = torch.tensor(float(rank + 1))
    if rank == 0 or fixed:  # BUG (unless fixed): a collective inside rank-dependent control flow
        dist.all_reduce(loss)
        print(f"mean loss {loss.item() / world_size}")
    dist.barrier()  # e.g. before saving a checkpoint
    return {"rank": rank, "loss_sum": loss.item()}


def mismatched_shapes(fixed: bool = False) -> dict:
    """Each rank counts the labels in its shard with ``bincount``, whose length is the largest label it saw plus one:
    3 on rank 0, 5 on rank 1. The ranks all-reduce tensors of different shapes. Fixed: ``minlength=NUM_CLASSES``."""
    rank, _, _ = join_process_group("gloo")
    labels = torch.tensor([0, 1, 2, 2]) if rank == 0 else torch.tensor([0, 3, 4, 4])
    counts = torch.bincount(labels, minlength=NUM_CLASSES if fixed else 0)  # BUG (unless fixed): length varies
    dist.all_reduce(counts)
    return {"rank": rank, "counts": counts.tolist()}


def unmatched_send(fixed: bool = False) -> dict:
    """Two ranks swap a tensor, each receiving first, then sending: both wait in ``recv`` for a send that never comes.
    Fixed: start the send without waiting (``isend``), receive, then wait for the send."""
    rank, _, _ = join_process_group("gloo")
    peer = 1 - rank
    mine, theirs = torch.tensor([float(rank)]), torch.zeros(1)
    if fixed:
        request = dist.isend(mine, dst=peer)
        dist.recv(theirs, src=peer)
        request.wait()
    else:  # BUG: both ranks receive first, so no send is ever matched
        dist.recv(theirs, src=peer)
        dist.send(mine, dst=peer)
    return {"rank": rank, "received": theirs.item()}


def wrong_order(fixed: bool = False) -> dict:
    """Rank 0 broadcasts a seed, then all-reduces the loss; rank 1 calls them the other way round, so each waits in
    a different collective. Fixed: the same order on every rank."""
    rank, _, _ = join_process_group("gloo")
    seed, loss = torch.tensor([1234 if rank == 0 else 0]), torch.tensor(float(rank + 1))
    if rank == 0 or fixed:
        dist.broadcast(seed, src=0)
        dist.all_reduce(loss)
    else:  # BUG: this rank calls the two collectives in the other order
        dist.all_reduce(loss)
        dist.broadcast(seed, src=0)
    return {"rank": rank, "seed": int(seed.item()), "loss_sum": loss.item()}


class TwoHeads(nn.Module):
    """A model with a head that ``forward`` never uses (left over from an experiment)."""

    def __init__(self):
        super().__init__()
        self.used, self.unused = nn.Linear(4, 1), nn.Linear(4, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.used(x)


def _train(model: nn.Module, batches: int, rank: int) -> None:
    """``batches`` SGD steps on this rank's own random data."""
    optimizer = torch.optim.SGD(model.parameters(), lr=0.1)
    generator = torch.Generator().manual_seed(rank)
    for _ in range(batches):
        x, y = torch.randn(8, 4, generator=generator), torch.randn(8, 1, generator=generator)
        optimizer.zero_grad()
        nn.functional.mse_loss(model(x), y).backward()
        optimizer.step()


def unused_parameter(fixed: bool = False, steps: int = 3) -> dict:
    """DDP over ``TwoHeads``: the unused head's gradient never arrives, so DDP's reduction of the first step never
    finishes, and the second step's forward raises. Fixed: ``find_unused_parameters=True``."""
    rank, _, _ = join_process_group("gloo")
    torch.manual_seed(0)
    model = DDP(TwoHeads(), find_unused_parameters=fixed)  # BUG (unless fixed): DDP expects every gradient
    _train(model, steps, rank)
    weights = model.module.used.weight.detach().flatten().tolist()
    unused_grad = model.module.unused.weight.grad
    return {"rank": rank, "steps": steps, "weights": weights, "unused_grad_is_none": unused_grad is None}


def uneven_inputs(join: bool = False) -> dict:
    """DDP where rank 0 has 3 batches and rank 1 only 2: rank 1 leaves the loop and waits at a barrier while rank 0
    waits in its third backward for rank 1's gradients. Fixed (``join=True``): DDP's ``Join`` context manager,
    in which a rank that ran out of data shadows the others' all-reduces until every rank is done."""
    rank, _, _ = join_process_group("gloo")
    torch.manual_seed(0)
    model, batches = DDP(nn.Linear(4, 1)), 3 - rank  # rank 1's shard is shorter
    if join:
        with Join([model]):
            _train(model, batches, rank)
    else:  # BUG: the ranks run different numbers of steps
        _train(model, batches, rank)
    dist.barrier()  # e.g. before saving a checkpoint
    weights = model.module.weight.detach().flatten().tolist()
    return {"rank": rank, "batches": batches, "weights": weights}


FIXES = {"skip_collective": {"fixed": True}, "mismatched_shapes": {"fixed": True}, "unmatched_send": {"fixed": True},
         "wrong_order": {"fixed": True}, "unused_parameter": {"fixed": True}, "uneven_inputs": {"join": True}}


def every_fix() -> dict[str, dict]:
    """Each bug's fix in turn, in one launch and one process group: what it returned on this rank, by the bug's
    name."""
    results = {name: globals()[name](**options) for name, options in FIXES.items()}
    leave_process_group()
    return results


def show(bug: str, timeout: float = 10.0, **options: Any) -> dict[str, Any]:
    """Launch ``bug`` (a name above, with its ``options``) on 2 ranks and print what comes back: each rank's result;
    or for a hang the launch's error, where each rank waited; or for a crash the failed rank's last traceback line.
    Returns ``{"bug", "outcome": "finished" | "hung" | "crashed", ...}`` with ``results``, ``waiting`` (rank ->
    op and line) or ``rank`` and ``error``.

    The timeout counts from the moment both ranks started the entry point (``launch.run``), yet on a busy machine
    they may still be joining or building their model (waiting in a constructor, ``__init__``, for the other rank)
    when it runs out, before the bug. That hang is not the bug's, so the bug is launched once more with twice the
    time, saying so.
    """
    found = _launch_and_explain(bug, timeout, options)
    if found["outcome"] == "hung" and any(where["op"] in STARTING for where in found["waiting"].values()):
        print(f"(the ranks were still starting when the {timeout:g} s ran out: again, with {2 * timeout:g} s)")
        found = _launch_and_explain(bug, 2 * timeout, options)
    return found


STARTING = ("__init__", "init_process_group", "join_process_group")  # where a rank waits before its training starts


def _launch_and_explain(bug: str, timeout: float, options: dict[str, Any]) -> dict[str, Any]:
    from dtutor import launch

    try:
        results = launch.run(f"dtutor.failures.bugs:{bug}", nprocs=2, timeout=timeout, quiet=True, **options)
    except launch.LaunchError as error:
        if error.rank is None and not error.timed_out:  # a rank died before any could report (torchrun ended all)
            headline = str(error).splitlines()[0]
            print(headline[:150])
            return {"bug": bug, "outcome": "crashed", "rank": None, "error": headline}
        if error.rank is None:
            print(error)
            waiting = {rank: {"op": where["op"], "line": where["line"]} for rank, where in error.waiting.items()}
            return {"bug": bug, "outcome": "hung", "waiting": waiting}
        lines = error.remote_traceback.strip().splitlines()
        last = next((line for line in reversed(lines) if re.match(r"[\w.]+(Error|Exception): ", line)), lines[-1])
        last = re.sub(r"\[127\.0\.0\.1\]:\d+", "[127.0.0.1]:PORT", last)  # a port that changes every run
        print(f"rank {error.rank} failed: {last}"[:150])
        return {"bug": bug, "outcome": "crashed", "rank": error.rank, "error": last}
    for result in results:
        print(str(result)[:150])
    return {"bug": bug, "outcome": "finished", "results": results}
