"""The six collectives on 4 ranks, run for real and drawn from the tensors they returned; and the ring's figure.

``every_collective`` is the entry point: each rank starts every collective from the same small tensor, rank r
holding [10r, 10r + 1, 10r + 2, 10r + 3], and returns what it held after each one::

    torchrun --standalone --nproc-per-node 4 -m dtutor.launch dtutor.pytorch.collectives:every_collective

``draw_collectives`` draws every rank's tensor before and after each collective from those returned values,
``draw_ring`` the steps of ``dtutor.pytorch.ring.ring_all_reduce`` from the partial sums a real run recorded.
"""

from __future__ import annotations

from typing import Any

import torch
import torch.distributed as dist

from dtutor.pytorch.ring import REDUCE_SCATTER

CALLS = {  # the call each figure's row shows, by the name the entry point returns
    "broadcast": "dist.broadcast(t, src=0)",
    "reduce": "dist.reduce(t, dst=0)",
    "all_reduce": "dist.all_reduce(t)",
    "all_gather": "dist.all_gather(pieces, t)",
    "reduce_scatter": "dist.reduce_scatter(piece, list(t.chunk(world)))",
    "all_to_all": "dist.all_to_all(pieces, list(t.chunk(world)))",
}
UNDEFINED = {"reduce": "every rank but dst=0"}  # whose tensor after the collective is not its result


def every_collective(backend: str = "gloo") -> dict[str, Any]:
    """Entry point (every rank): run the six collectives, each from rank r's [10r, .., 10r + 3] (sums: SUM);
    return the starting tensor and what each collective left."""
    from dtutor.pytorch.process_group import join_process_group, leave_process_group

    rank, world, device = join_process_group(backend)

    def start() -> torch.Tensor:
        return torch.arange(4, device=device) + 10 * rank

    try:
        after = {}
        t = start()
        dist.broadcast(t, src=0)  # every rank gets rank 0's tensor
        after["broadcast"] = t
        t = start()
        dist.reduce(t, dst=0)  # rank 0 gets the sum; what the others hold afterwards is not defined
        after["reduce"] = t
        t = start()
        dist.all_reduce(t)  # every rank gets the sum
        after["all_reduce"] = t
        pieces = [torch.empty_like(t) for _ in range(world)]
        dist.all_gather(pieces, start())  # every rank gets every rank's tensor, in rank order
        after["all_gather"] = torch.cat(pieces)
        piece = torch.empty_like(start().chunk(world)[0])
        dist.reduce_scatter(piece, list(start().chunk(world)))  # rank r gets the sum of every rank's chunk r
        after["reduce_scatter"] = piece
        pieces = [torch.empty_like(chunk) for chunk in start().chunk(world)]
        dist.all_to_all(pieces, list(start().chunk(world)))  # rank r gets chunk r of every rank, in rank order
        after["all_to_all"] = torch.cat(pieces)
        return {"rank": rank, "world": world, "before": start().tolist(),
                "after": {name: tensor.tolist() for name, tensor in after.items()}}
    finally:
        leave_process_group()


def _rank_colour(rank: int):
    import matplotlib.pyplot as plt

    return plt.get_cmap("Pastel1")(rank % 9)


def _cell(axes, x: float, y: float, value: Any, colour, *, edge: str = "white", width: float = 1.0,
          style: str = "-", faded: bool = False) -> None:
    """One element: a coloured box with its value written in it."""
    from matplotlib.patches import Rectangle

    axes.add_patch(Rectangle((x + 0.04, y + 0.06), 0.92, 0.88, facecolor=colour, edgecolor=edge, linewidth=width,
                             linestyle=style, hatch="//" if faded else None, alpha=0.45 if faded else 1.0))
    axes.text(x + 0.5, y + 0.5, str(value), ha="center", va="center", fontsize=8,
              color="dimgray" if faded else "black")


def _frame(axes, columns: int, ranks: int, title: str) -> None:
    axes.set_xlim(-0.9, columns + 0.1)
    axes.set_ylim(ranks + 0.1, -0.1)
    axes.set_aspect("equal")
    axes.axis("off")
    axes.set_title(title, fontsize=9, loc="left")
    for rank in range(ranks):
        axes.text(-0.15, rank + 0.5, f"rank {rank}", ha="right", va="center", fontsize=8)


def draw_collectives(ranks: list[dict[str, Any]]):
    """Every rank's tensor before and after each collective, one row per collective, from ``every_collective``'s
    results (one per rank). A value that one rank started with keeps that rank's colour; a sum is grey."""
    import matplotlib.pyplot as plt
    from matplotlib.patches import Patch

    world, names = len(ranks), list(ranks[0]["after"])
    owner = {value: r["rank"] for r in ranks for value in r["before"]}
    widest = max(len(r["after"][name]) for r in ranks for name in names)
    figure, grid = plt.subplots(len(names), 2, figsize=(12, 1.25 * world * len(names) / 2.4),
                                gridspec_kw={"width_ratios": [len(ranks[0]["before"]) + 1, widest + 1]})
    for row, name in enumerate(names):
        before, after = grid[row]
        _frame(before, len(ranks[0]["before"]), world, f"{name}: before")
        _frame(after, widest, world, f"after {CALLS[name]}")
        for r in ranks:
            faded = name in UNDEFINED and r["rank"] != 0
            for x, value in enumerate(r["before"]):
                _cell(before, x, r["rank"], value, _rank_colour(r["rank"]))
            for x, value in enumerate(r["after"][name]):
                colour = _rank_colour(owner[value]) if value in owner and not faded else "lightgrey"
                _cell(after, x, r["rank"], value, colour, faded=faded)
    legend = [Patch(facecolor=_rank_colour(rank), label=f"rank {rank}'s value") for rank in range(world)]
    legend += [Patch(facecolor="lightgrey", label="a sum"),
               Patch(facecolor="lightgrey", hatch="//", alpha=0.45, label=f"not defined ({UNDEFINED['reduce']})")]
    figure.legend(handles=legend, loc="lower center", ncol=len(legend), fontsize=8, frameon=False)
    figure.suptitle(f"Six collectives on {world} ranks: every rank's tensor before and after (a real run)")
    figure.tight_layout(rect=(0, 0.03, 1, 1))
    return figure


def _contributors(value: int) -> int:
    """How many ranks a partial sum of the recorded run adds up: rank r gave 10**r, so its decimal digits."""
    return sum(int(digit) for digit in str(abs(int(value))))


def _ring_panel(axes, chunks_by_rank: list[list[list[int]]], title: str, step: list[dict] | None = None) -> None:
    """One moment of the ring: ranks as rows, chunks as columns, coloured by how many ranks each sum holds;
    with ``step`` (every rank's record of it), the chunk each rank sent (dashed) and received (solid, red)."""
    import matplotlib.pyplot as plt

    world = len(chunks_by_rank)
    shades = plt.get_cmap("Blues")
    _frame(axes, len(chunks_by_rank[0]), world, title)
    for rank, chunks in enumerate(chunks_by_rank):
        sent = step and step[rank]["send"]
        received = step and step[rank]["receive"]
        for x, chunk in enumerate(chunks):
            value = chunk[0] if len(chunk) == 1 else chunk
            kind = "received" if step and x == received else "sent" if step and x == sent else ""
            _cell(axes, x, rank, value, shades(0.15 + 0.7 * _contributors(chunk[0]) / world),
                  edge={"received": "tab:red", "sent": "black"}.get(kind, "white"),
                  width=2.2 if kind else 1.0, style="--" if kind == "sent" else "-")
    if step:  # rank r's chunk goes down one row to rank r + 1; the last rank's leaves at the bottom, enters at the top
        axes.set_ylim(world + 0.45, -0.45)
        arrow = {"arrowstyle": "->", "color": "tab:red", "lw": 1.2}
        for rank in range(world):
            x = step[rank]["send"] + 0.8
            if rank + 1 < world:
                axes.annotate("", xy=(x, rank + 1.2), xytext=(x, rank + 0.8), arrowprops=arrow)
            else:
                axes.annotate("", xy=(x, world + 0.4), xytext=(x, world - 0.2), arrowprops=arrow)
                axes.annotate("", xy=(x, 0.2), xytext=(x, -0.4), arrowprops=arrow)


def draw_ring(ranks: list[dict[str, Any]]):
    """The ring all-reduce step by step, from ``dtutor.pytorch.ring.prove_and_record``'s recorded run (rank r
    starts with 10**r in every chunk): the start, each step of both phases, and ``dist.all_reduce``'s result."""
    import matplotlib.pyplot as plt

    world, steps = len(ranks), len(ranks[0]["record"])
    panels = 2 + steps
    columns = (panels + 1) // 2
    figure, grid = plt.subplots(2, columns, figsize=(3.0 * columns, 6.4))
    axes = list(grid.flat)
    _ring_panel(axes[0], [[[value] for value in r["start"]] for r in ranks], "start: rank r holds 10^r")
    for index in range(steps):
        step = [r["record"][index] for r in ranks]
        phase, number = step[0]["phase"], step[0]["step"]
        verb = "adds" if phase == REDUCE_SCATTER else "keeps"
        _ring_panel(axes[1 + index], [s["chunks"] for s in step], f"{phase} {number + 1}: the next rank {verb} it",
                    step)
    reference = [[[value] for value in r["reference"]] for r in ranks]
    _ring_panel(axes[panels - 1], reference, "dist.all_reduce, for comparison")
    for spare in axes[panels:]:
        spare.axis("off")
    figure.suptitle(f"Ring all-reduce by hand on {world} ranks (a real run), each step shown after it: "
                    "dashed, the chunk a rank sends; red, the one it receives\n"
                    "Rank r started with 10^r: a 1 in the k-th digit from the right means rank k's value is in the sum "
                    "(darker: more ranks)", fontsize=10)
    figure.tight_layout()
    return figure
