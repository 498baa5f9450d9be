"""Who holds what under ZeRO-1, 2, 3 and FSDP: each rank's share of the parameters, gradients and optimizer state,
drawn from what real runs held (notebook 06).

Two sources, both measured, none typed in:

- ``by_hand_holdings``: ``zero1_by_hand.prove_zero1``'s results. Every rank holds the whole model and its whole
  gradient (as in DDP); its inner optimizer's state tensors have the shape of its shard, which starts at
  ``shard_start`` in the flat (padded) parameter vector: so the drawing shows where each rank's shard lies.
- ``measured_holdings``: the rows of ``dtutor.bench.zero.bench_zero`` (DeepSpeed's stages and FSDP, every tensor
  the engine holds, counted by ``storage.Ledger``): a rank's share of a part is its measured bytes over the bytes
  of the whole part (``formulas.estimate`` on one rank, the same convention). These say how much each rank holds,
  not where its elements lie (ZeRO-1/2 cut one flat vector, ZeRO-3 and FSDP cut every tensor), so the shares are
  drawn in rank order: rank 0 from the left, the last rank ending at the right; where shares add to more than
  the whole (ZeRO-3 keeps small layers whole on every rank) they overlap.

``plot_partitions`` draws the holdings. This module imports no framework.
"""

from __future__ import annotations

import math
from typing import Any

from dtutor.pytorch.sharded import formulas

PARTS = formulas.COMPONENTS  # parameters, gradients, optimizer (state + any fp32 master copy)
COLORS = {"parameters": "tab:blue", "gradients": "tab:orange", "optimizer": "tab:green"}
NAMES = {"parameters": "parameters", "gradients": "gradients", "optimizer": "optimizer state"}
Span = tuple[float, float]  # [start, end) as fractions of the whole part, in flat order


def by_hand_holdings(results: list[dict[str, Any]]) -> dict[str, Any]:
    """``ShardedOptimizer``'s holdings from every rank's ``prove_zero1`` result: per rank, per part, the span of
    the flat padded vector it holds (the optimizer state: its shard, from the state tensors' real shape)."""
    spans = []
    for result in sorted(results, key=lambda r: r["rank"]):
        whole = result["padded_size"]
        shard = max(math.prod(shape) for shape in result["state_shapes"])  # Adam's moments: one value per element
        start = result["shard_start"]
        spans.append({"parameters": (0.0, result["parameter_count"] / whole),
                      "gradients": (0.0, result["parameter_count"] / whole),
                      "optimizer": (start / whole, (start + shard) / whole)})
    return {"name": "ZeRO-1 by hand", "spans": spans, "where": "measured"}


def placed(share: float, rank: int, ranks: int) -> Span:
    """Where a rank's measured ``share`` of a part is drawn: rank 0 from the left, the last rank ending at 1."""
    share = min(share, 1.0)
    start = 0.0 if ranks == 1 else rank / (ranks - 1) * (1.0 - share)
    return start, start + share


def measured_holdings(row: dict[str, Any]) -> dict[str, Any]:
    """One ``bench_zero`` row's holdings: per rank, per part, its measured share of the whole part, in rank order."""
    run, psi, ranks = row["run"], row["parameter_count"], row["ranks"]
    whole = formulas.estimate(psi, 1, run.get("zero_stage", 0), run.get("precision", "fp32"), False,
                              run.get("optimizer", "adam"), run["strategy"]).components()
    spans = [{part: placed(row[part][rank] / whole[part], rank, ranks) for part in PARTS} for rank in range(ranks)]
    name = ("DeepSpeed " if run["strategy"] == "deepspeed" else "") + row["configuration"]
    return {"name": name, "spans": spans, "where": "rank order"}


def sharded_rows(rows: list[dict[str, Any]], precision: str = "fp32") -> list[dict[str, Any]]:
    """The rows a partition figure draws: ZeRO stages 1-3 and FSDP in ``precision``, without offload."""
    return [row for row in rows if row["run"].get("precision", "fp32") == precision and not row["run"].get("offload")
            and (row["run"]["strategy"] == "fsdp" or row["run"].get("zero_stage", 0) >= 1)]


def plot_partitions(holdings: list[dict[str, Any]]):
    """One panel per configuration, side by side: for every rank, three bars (parameters, gradients, optimizer
    state) over the whole of each part, the span that rank holds filled, its share printed."""
    import matplotlib.pyplot as plt

    ranks = max(len(holding["spans"]) for holding in holdings)
    figure, axes = plt.subplots(1, len(holdings), figsize=(2.7 * len(holdings) + 1.0, 0.75 * ranks + 1.8),
                                sharey=True, squeeze=False)
    labels = {}
    for panel, holding in zip(axes[0], holdings, strict=True):
        for rank, spans in enumerate(holding["spans"]):
            for index, part in enumerate(PARTS):
                y = -(rank * (len(PARTS) + 1) + index)
                start, end = spans[part]
                panel.barh(y, 1.0, color="white", edgecolor="lightgrey")
                panel.barh(y, end - start, left=start, color=COLORS[part], label=NAMES[part] if rank == 0 else None)
                panel.text(1.02, y, f"{end - start:.0%}", va="center", fontsize=7)
                labels[y] = f"rank {rank} {NAMES[part]}"
        panel.set_xlim(0, 1.25)
        panel.set_xticks([])
        panel.set_title(f"{holding['name']}\n(spans: {holding['where']})", fontsize=9)
    axes[0, 0].set_yticks(list(labels), list(labels.values()), fontsize=7)
    figure.legend(*axes[0, 0].get_legend_handles_labels(), loc="lower left", ncol=len(PARTS), fontsize=7)
    figure.supxlabel("each bar: the whole part, in flat order; filled: what the rank holds", fontsize=8)
    figure.tight_layout()
    return figure
