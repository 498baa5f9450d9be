"""``python -m dtutor.bench zero``: model-state memory per rank, measured against the ZeRO formulas.

Each configuration (ZeRO stages 0-3 in fp32 and bf16, ZeRO-2 with offload, FSDP; Adam, a 14.2 M-parameter MLP, 2
ranks) is measured tensor by tensor (``dtutor.pytorch.sharded.model_state``) and set beside its formula
(``dtutor.pytorch.sharded.formulas``) under DeepSpeed's convention, split into the paper's three parts: parameters,
gradients (device and host) and optimizer (fp32 master copy + state); "device" is the part a GPU would hold
(offload moves the rest to host memory). The benchmark's target: every measured part within 10% of its formula.
"Other" is what a rank holds beyond the model state (partition buffers' slack, offload transfer buffers).
The rows are JSON-friendly; ``plot_memory`` draws them. Nothing here imports torch: the measurement runs in
the launched processes.

    python -m dtutor.bench zero                  # all configurations, about 2 minutes on 2 cores
    python -m dtutor.bench zero --mode quick --json out.json   # 2 configurations of a 1.2 M-parameter model
    bench_zero(width=QUICK_WIDTH)                # notebook 06: all configurations of the 1.2 M-parameter model
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from dtutor.pytorch.sharded import formulas

if TYPE_CHECKING:
    import pandas as pd

TARGET = 0.10  # every measured part within 10% of its formula
MB = 1e6
LEGEND = {"parameters": "parameters", "gradients": "gradients", "optimizer": "optimizer state + fp32 master"}
QUICK_RUNS = ({"strategy": "deepspeed", "zero_stage": 3, "precision": "bf16"}, {"strategy": "fsdp"})
QUICK_WIDTH = 512  # wide_mlp(512, 4): 1,195,018 parameters (ZeRO-3 keeps layers of <= 1e5 whole)


def label(run: dict[str, Any]) -> str:
    """A configuration's name, e.g. ``ZeRO-2 bf16 + offload`` or ``FSDP fp32``."""
    precision = run.get("precision", "fp32")
    name = "FSDP" if run["strategy"] == "fsdp" else f"ZeRO-{run.get('zero_stage', 0)}"
    extras = [run["optimizer"]] if run.get("optimizer", "adam") != "adam" else []
    return " ".join([name, precision, *extras]) + (" + offload" if run.get("offload") else "")


def formula(run: dict[str, Any], parameters: int, ranks: int) -> formulas.ModelState:
    """The estimator's bytes per rank for one measured configuration (Adam unless it names an optimizer)."""
    return formulas.estimate(parameters, ranks, run.get("zero_stage", 0), run.get("precision", "fp32"),
                         run.get("offload", False), run.get("optimizer", "adam"), run["strategy"])


def measured_parts(measured: dict[str, int]) -> dict[str, int]:
    """One rank's measured bytes as the formula's parts (``formulas.COMPONENTS``) and the rest it holds."""
    return {"parameters": measured["parameters"],
            "gradients": measured["gradients"] + measured["host_gradients"],
            "optimizer": measured["master_weights"] + measured["optimizer_state"],
            "other": measured["buffers"] + measured["gathered_parameters"] + measured["reduce_bucket"]}


def host_bytes(measured: dict[str, int], offload: bool) -> int:
    """The model state DeepSpeed keeps in host memory: with offload the master copy, the optimizer state and the
    fp32 gradient partition the CPU optimizer reads; without, none."""
    return measured["master_weights"] + measured["optimizer_state"] + measured["host_gradients"] if offload else 0


def _ratio(measured: float, expected: float) -> float:
    if expected == 0:
        return 1.0 if measured == 0 else float("inf")
    return measured / expected


def memory_row(per_rank: list[dict[str, Any]]) -> dict[str, Any]:
    """One configuration's row: per part, every rank's bytes, the formula and the ratio farthest from 1."""
    first = per_rank[0]
    expected = formula(first["run"], first["parameter_count"], first["ranks"])
    parts = [measured_parts(rank["bytes"]) for rank in per_rank]
    row: dict[str, Any] = {"configuration": label(first["run"]), "run": first["run"],
                           "parameter_count": first["parameter_count"], "ranks": first["ranks"],
                           "moment": first["moment"], "formula": {**expected.components(), "total": expected.total,
                                                                  "device": expected.device, "host": expected.host}}
    for name in (*formulas.COMPONENTS, "other"):
        row[name] = [part[name] for part in parts]
    row["total"] = [sum(part[name] for name in formulas.COMPONENTS) for part in parts]
    row["host"] = [host_bytes(rank["bytes"], bool(first["run"].get("offload"))) for rank in per_rank]
    row["device"] = [total - host for total, host in zip(row["total"], row["host"], strict=True)]
    row["ratio"] = {name: max((_ratio(value, row["formula"][name]) for value in row[name]),
                              key=lambda r: abs(r - 1)) for name in (*formulas.COMPONENTS, "total")}
    row["bucket_capacity"] = max(rank["bytes"]["bucket_capacity"] for rank in per_rank)
    row["bucket_resident"] = max(rank["bytes"]["bucket_resident"] for rank in per_rank)
    row["bucket_in_use"] = max(moment["reduce_bucket"] for rank in per_rank
                               for moment in rank.get("moments", {"": rank["bytes"]}).values())
    row["within_target"] = all(abs(r - 1) <= TARGET for r in row["ratio"].values())
    return row


def bench_zero(quick: bool = False, nprocs: int = 2, timeout: float = 900.0,
               width: int | None = None) -> list[dict[str, Any]]:
    """Measure every configuration (``quick``: two, on a 1.2 M-parameter model) and return the table's rows.

    ``width``: the MLP's width, whatever the mode (the notebook measures every configuration at ``QUICK_WIDTH``).
    """
    from dtutor.pytorch.sharded import model_state

    runs, width = (QUICK_RUNS, width or QUICK_WIDTH) if quick else (model_state.RUNS, width or model_state.WIDTH)
    return [memory_row(per_rank) for per_rank in model_state.measure(list(runs), nprocs, width=width, timeout=timeout)]


def _cell(values: list[float]) -> str:
    low, high = min(values), max(values)
    return f"{high / MB:.1f}" if high - low <= 0.005 * max(high, 1) else f"{low / MB:.1f}-{high / MB:.1f}"


def offload_notes(rows: list[dict[str, Any]]) -> list[str]:
    """What each offload row means: where its bytes would live on a GPU machine, and why its gradients and total
    look as they do on a CPU, where host and device memory are one memory (numbers from the rows)."""
    notes = []
    for row in (row for row in rows if row["run"].get("offload")):
        run, psi, ranks = row["run"], row["parameter_count"], row["ranks"]
        plain = formulas.estimate(psi, ranks, run.get("zero_stage", 0), run.get("precision", "fp32"), False,
                              run.get("optimizer", "adam"), run["strategy"])
        notes.append(
            f"{row['configuration']}: its gradients are the fp32 partition the CPU optimizer reads (4Ψ/N = "
            f"{max(row['gradients']) / MB:.1f} MB), not the {plain.gradients / MB:.1f} MB 16-bit partition "
            f"without offload. On a GPU machine each GPU would hold {max(row['device']) / MB:.1f} MB of model state "
            f"(the 16-bit parameters and any gradients not yet sent to the host); host memory would hold "
            f"{max(row['host']) / MB:.1f} MB (fp32 master copy, optimizer state, fp32 gradients). Here host and "
            f"device are the same memory, so offload frees nothing.")
        same = [other["configuration"] for other in rows if other is not row and other["run"].get("zero_stage") == 1
                and other["run"].get("precision") == run.get("precision") and not other["run"].get("offload")
                and abs(other["formula"]["total"] - row["formula"]["total"]) < 1]
        if same:
            notes.append(f"Its total equals {same[0]}'s by coincidence: the same 16-bit parameters and "
                         f"optimizer partition, and its fp32 gradient partition, 4Ψ/N, equals ZeRO-1's whole "
                         f"16-bit gradient, 2Ψ, when N = {ranks}.")
    return notes


def _table_row(row: dict[str, Any]) -> dict[tuple[str, str], Any]:
    """One configuration's cells, under two header rows: each part's measured and formula MB, and the rest."""
    cells: dict[tuple[str, str], Any] = {("configuration", ""): row["configuration"]}
    for name in (*formulas.COMPONENTS, "total"):
        cells[(f"{name} MB", "measured")] = _cell(row[name])
        cells[(f"{name} MB", "formula")] = round(row["formula"][name] / MB, 1)
    return cells | {("total", "ratio"): round(row["ratio"]["total"], 3), ("device", "MB"): _cell(row["device"]),
                    ("other MB", "per rank"): " | ".join(f"{value / MB:.1f}" for value in row["other"])}


def table_zero(rows: list[dict[str, Any]], verdict: bool = False) -> pd.DataFrame:
    """The table: per part measured MB (largest rank; a range where ranks differ) and formula MB, the total's
    ratio, the device's share; its notes: the spread of every part's ratio, and (``verdict``, for the
    benchmark) whether every part is within ``TARGET`` of its formula, then what the numbers mean."""
    from dtutor.tables import titled

    table = [_table_row(row) for row in rows]
    ratios = [r for row in rows for r in row["ratio"].values()]
    spread = f"measured / formula, every part of every row: {min(ratios):.3f} to {max(ratios):.3f}"
    if verdict:
        spread += (f"; every cell within {TARGET:.0%} of its formula: "
                   f"{'met' if all(row['within_target'] for row in rows) else 'missed'}")
    first = rows[0]
    notes = [spread, f"Ψ = {first['parameter_count']:,} parameters, N = {first['ranks']} ranks, Adam; MB = 1e6 "
             "bytes; device: the model state a GPU would hold (the rest is in host memory)", *offload_notes(rows)]
    moments: dict[str, list[str]] = {}
    for row in rows:
        moments.setdefault(row["moment"], []).append(row["configuration"])
    notes += [f"measured {moment}: {', '.join(names)}" for moment, names in moments.items()]
    notes.append("other: held beyond the model state (partition buffers' slack, offload transfer buffers, "
                 "gathered layers)")
    waiting = [f"{row['configuration']} {row['bucket_in_use'] / MB:.1f} MB" for row in rows if row["bucket_in_use"]]
    if waiting:
        notes.append("gradients in the reduce bucket at the end of backward (not counted): " + ", ".join(waiting))
    bucket = max(rows, key=lambda row: (row["bucket_resident"], row["bucket_capacity"]))
    if bucket["bucket_capacity"] > 0 and bucket["bucket_resident"] >= 0:
        notes.append(f"reduce bucket ({bucket['configuration']}): {bucket['bucket_capacity'] / MB:,.0f} MB "
                     f"allocated, {bucket['bucket_resident'] / MB:,.1f} MB resident (not counted: a communication "
                     "buffer)")
    return titled(table, notes=notes)


def plot_memory(rows: list[dict[str, Any]]):
    """Bars per configuration: measured (largest rank, left) beside formula (hatched, right), each split into
    parameters, gradients and optimizer state; the title states the measured ratio range."""
    import matplotlib.pyplot as plt

    colors = dict(zip(formulas.COMPONENTS, ("tab:blue", "tab:orange", "tab:green"), strict=True))
    figure, axes = plt.subplots(figsize=(max(6.0, 0.9 * len(rows) + 2), 3.8))
    for index, row in enumerate(rows):
        measured_bottom = formula_bottom = 0.0
        for name in formulas.COMPONENTS:
            measured, expected = max(row[name]) / MB, row["formula"][name] / MB
            axes.bar(index - 0.2, measured, 0.38, bottom=measured_bottom, color=colors[name],
                     label=LEGEND[name] if index == 0 else None)
            axes.bar(index + 0.2, expected, 0.38, bottom=formula_bottom, color=colors[name], alpha=0.45,
                     hatch="//", edgecolor="white")
            measured_bottom, formula_bottom = measured_bottom + measured, formula_bottom + expected
    axes.bar(0, 0, color="white", edgecolor="grey", hatch="//", label="formula (right bar)")
    axes.set_xticks(range(len(rows)), [row["configuration"] for row in rows], rotation=35, ha="right")
    axes.set_ylabel("MB per rank")
    totals = [row["ratio"]["total"] for row in rows]
    axes.set_title(f"Model state per rank, Ψ = {rows[0]['parameter_count'] / 1e6:.1f} M, N = {rows[0]['ranks']}: "
                   f"measured / formula {min(totals):.3f} to {max(totals):.3f}", fontsize=10)
    axes.legend(fontsize=8)
    figure.tight_layout()
    return figure
