"""Ring all-reduce by hand, with ``isend``/``irecv``: a reduce-scatter phase, then an all-gather phase.

The N ranks stand in a ring: each sends only to the next rank and receives only from the previous one. The
tensor is cut into N chunks (``tensor_split``: sizes differ by at most one element, and some are empty when the
tensor has fewer elements than there are ranks).

- Reduce-scatter, N-1 steps: at step s rank r sends chunk (r - s) mod N and adds the chunk it receives,
  (r - s - 1) mod N, to its own. After the last step rank r holds the whole sum of chunk (r + 1) mod N.
- All-gather, N-1 steps: at step s rank r sends chunk (r + 1 - s) mod N, a finished sum, and stores the one it
  receives, (r - s) mod N, in place of its own. After the last step every rank holds every sum.

Each rank sends 2(N-1) chunks of S/N bytes: 2(N-1)/N x S in all, under 2S whatever N is. ``ring_schedule`` is
the order of the chunks; ``ring_all_reduce`` follows it, and its ``record`` says what each step sent, received
and left in every chunk (the notebook's figure is drawn from it). ``prove_and_record`` is the entry point that
checks it against ``dist.all_reduce`` on every rank::

    torchrun --standalone --nproc-per-node 4 -m dtutor.launch dtutor.pytorch.ring:prove_and_record
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Any

import torch
import torch.distributed as dist

REDUCE_SCATTER, ALL_GATHER = "reduce-scatter", "all-gather"
PROOF_SHAPES = [(1,), (3,), (4,), (10,), (4099,), (5, 7)]  # fewer elements than ranks, uneven chunks, 2-D


@dataclass(frozen=True)
class RingStep:
    """One step of one rank: the chunk it sends to the next rank and the one it receives from the previous."""

    phase: str  # REDUCE_SCATTER (add what arrives) or ALL_GATHER (keep what arrives)
    step: int  # 0 .. N-2 within the phase
    send: int  # index of the chunk sent to rank (r + 1) mod N
    receive: int  # index of the chunk received from rank (r - 1) mod N


def ring_schedule(rank: int, world: int) -> list[RingStep]:
    """The 2(N-1) steps of rank ``rank`` in a ring of ``world`` ranks, in order (none when alone)."""
    scatter = [RingStep(REDUCE_SCATTER, s, (rank - s) % world, (rank - s - 1) % world) for s in range(world - 1)]
    gather = [RingStep(ALL_GATHER, s, (rank + 1 - s) % world, (rank - s) % world) for s in range(world - 1)]
    return scatter + gather


def ring_all_reduce(tensor: torch.Tensor, record: list[dict[str, Any]] | None = None) -> torch.Tensor:
    """Sum ``tensor`` over every rank of the default group, in place, by a ring of sends and receives; return it.

    Like ``dist.all_reduce(tensor)``, the tensor must be contiguous. With a ``record`` list, each step appends
    what this rank sent and received and every chunk's values after the step."""
    rank, world = dist.get_rank(), dist.get_world_size()
    chunks = tensor.view(-1).tensor_split(world)  # views: writing a chunk writes the tensor
    following, previous = (rank + 1) % world, (rank - 1) % world
    for step in ring_schedule(rank, world):
        outgoing, mine = chunks[step.send], chunks[step.receive]
        incoming = torch.empty_like(mine) if step.phase == REDUCE_SCATTER else mine
        requests = []
        if outgoing.numel():  # the receiver's chunk has the same size: both skip an empty one
            requests.append(dist.isend(outgoing, following))
        if incoming.numel():
            requests.append(dist.irecv(incoming, previous))
        for request in requests:
            request.wait()
        if step.phase == REDUCE_SCATTER:
            mine += incoming
        if record is not None:
            record.append({**asdict(step), "rank": rank, "to": following, "from": previous,
                           "sent_elements": outgoing.numel(), "chunks": [chunk.tolist() for chunk in chunks]})
    return tensor


def _proof_input(shape: tuple[int, ...], rank: int, integers: bool) -> torch.Tensor:
    """Rank ``rank``'s input for a proof: seeded by the shape and rank, so a test can rebuild every rank's."""
    generator = torch.Generator().manual_seed(1000 * rank + sum(shape) * 7 + len(shape))
    if integers:  # sums of small integers are exact in float32, whatever order they are added in
        return torch.randint(-100, 100, shape, generator=generator).float()
    return torch.rand(shape, generator=generator) * 2 - 1


def _recorded_run(rank: int, device: torch.device) -> dict[str, Any]:
    """Rank r holds 10**r in each of N one-element chunks: a partial sum's digits say which ranks it adds up."""
    start = torch.full((dist.get_world_size(),), 10**rank, dtype=torch.int64, device=device)
    reference = start.clone()
    dist.all_reduce(reference)
    record: list[dict[str, Any]] = []
    result = ring_all_reduce(start.clone(), record)
    return {"start": start.tolist(), "record": record, "result": result.tolist(), "reference": reference.tolist()}


def prove_and_record(backend: str = "gloo", shapes: list[tuple[int, ...]] | None = None) -> dict[str, Any]:
    """Entry point (every rank): ``ring_all_reduce`` against ``dist.all_reduce`` on each shape (random floats and
    integer-valued floats), the elements each rank sent, and a recorded run for the ring's figure."""
    from dtutor.pytorch.process_group import join_process_group, leave_process_group

    rank, world, device = join_process_group(backend)
    try:
        proofs = []
        for shape in [tuple(shape) for shape in shapes or PROOF_SHAPES]:
            row: dict[str, Any] = {"shape": list(shape), "numel": int(torch.Size(shape).numel())}
            for integers in (False, True):
                data = _proof_input(shape, rank, integers).to(device)
                reference, record = data.clone(), []
                dist.all_reduce(reference)
                ringed = data.clone()
                returned = ring_all_reduce(ringed, record)
                key = "integers" if integers else "floats"
                row[f"{key}_max_difference"] = (ringed - reference).abs().max().item()
                row[f"{key}_result"] = ringed.cpu().flatten().tolist() if integers else None
                row["returned_its_input"] = row.get("returned_its_input", True) and returned is ringed
                row["sent_elements"] = sum(step["sent_elements"] for step in record)
            row["chunk_sizes"] = [len(chunk) for chunk in torch.arange(row["numel"]).tensor_split(world)]
            proofs.append(row)
        return {"rank": rank, "world": world, "proofs": proofs, **_recorded_run(rank, device)}
    finally:
        leave_process_group()
