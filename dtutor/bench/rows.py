"""From the runs of ``python -m dtutor.bench all`` to its table: one dict per registry row.

Each row: from the timed runs, samples/s at 1 and 2 workers (medians over rounds), the scaling efficiency
T2 / (2 T1) (median of the rounds' pairs) and that efficiency against the **ceiling** measured in the same
run, and the CPU per step; from the proof run, the largest model state a worker held, the bytes the busiest
worker sent per step as counted against ``theory``, and the correctness proof: the parameters against the
reference the test suite uses, within its tolerance.
"""

from __future__ import annotations

import statistics
from typing import Any

from dtutor.bench import theory
from dtutor.result import max_difference
from dtutor.strategies import STRATEGIES

PROOF_RUNS = {"single": "proof:reference", "ddp": "proof:ddp", "tf_single": "proof:tf_reference"}


def proof_reference(strategy: str) -> tuple[str, float]:
    """The run ``strategy``'s proof is compared with, and the tolerance: its registry entry's (the tests' too).

    ``single`` is compared with the ceiling's runs, which repeat the 1-worker run bit for bit."""
    info = STRATEGIES[strategy]
    return ("ceiling" if strategy == "single" else PROOF_RUNS[info.reference]), info.tolerance


def model_facts(model: str = "cnn", stages: int = 2) -> dict[str, Any]:
    """What theory needs of a model: each pipeline boundary's activations per sample (cut into ``stages``
    as the pipeline strategies cut it) and the (input, output) widths of each column/row linear pair."""
    import torch
    from torch import nn

    from dtutor import models
    from dtutor.pytorch.model_parallel import stages as st

    net = models.by_name(model)()
    parts = st.stage_modules(net, st.even_cuts(len(models.pipeline_layers(net)), stages))
    shapes = st.boundary_shapes(parts[:-1], torch.zeros(1, 1, 28, 28))
    linears = [m for m in net.modules() if isinstance(m, nn.Linear)]
    pairs = [(a.in_features, b.out_features) for a, b in zip(linears[0::2], linears[1::2], strict=False)]
    return {"boundaries": [shape[1:].numel() for shape in shapes], "pairs": pairs}


def expected_bytes(strategy: str, parallelism: str, zero_stage: int, n: int, gradient_bytes: float,
                   facts: dict[str, Any], batch: int) -> float | None:
    """Theory's bytes per worker and step (None: nothing crosses a link, the replicas share a process)."""
    if strategy in ("single", "dataparallel"):
        return 0.0  # one process: on GPUs DataParallel copies between them, which is not modelled here
    if strategy == "mirrored":
        return None
    if parallelism == "pipeline":
        return theory.pipeline_bytes(facts["boundaries"], batch)
    if parallelism == "tensor":
        return theory.tensor_parallel_bytes([tuple(p) for p in facts["pairs"]], batch, n)
    if strategy in ("deepspeed", "fsdp"):
        return theory.sharded_bytes(gradient_bytes, n, zero_stage if strategy == "deepspeed" else 3)
    return theory.data_parallel_bytes(gradient_bytes, n)


def index(records: list[dict[str, Any]]) -> dict[str, dict[int, list[dict[str, Any]]]]:
    """``runs[name][round]``: every rank's measurements of one run."""
    runs: dict[str, dict[int, list[dict[str, Any]]]] = {}
    for record in records:
        runs.setdefault(record["case"]["name"], {})[record["round"]] = record["ranks"]
    return runs


def _ok(ranks: list[dict[str, Any]] | None) -> bool:
    return bool(ranks) and all("error" not in rank for rank in ranks)


def _rate(ranks: list[dict[str, Any]] | None) -> float | None:
    return ranks[0].get("samples_per_s") if _ok(ranks) else None


def ceiling_by_round(runs: dict[str, dict[int, list[dict[str, Any]]]]) -> dict[int, float]:
    """Per round: the two independent single runs' samples/s together, over 2x one alone the same round."""
    found = {}
    for round_, ranks in runs.get("ceiling", {}).items():
        alone = _rate(runs.get("single@1", {}).get(round_))
        if _ok(ranks) and alone:
            found[round_] = sum(rank["samples_per_s"] for rank in ranks) / (2 * alone)
    return found


def ceilings(runs: dict[str, dict[int, list[dict[str, Any]]]]) -> list[float]:
    """The ceiling of each round (``ceiling_by_round``), in round order."""
    return [value for _, value in sorted(ceiling_by_round(runs).items())]


def rate_by_round(runs: dict[str, dict[int, list[dict[str, Any]]]], name: str) -> dict[int, float]:
    """Per round: the samples/s of run ``name`` (e.g. ``ddp@2``), where it ran without error."""
    return {r: rate for r, ranks in runs.get(name, {}).items() if (rate := _rate(ranks))}


def efficiency_by_round(runs: dict[str, dict[int, list[dict[str, Any]]]], key: str) -> dict[int, float]:
    """Per round: row ``key``'s scaling efficiency T2 / (2 T1), from the two runs of the same round."""
    one, two = rate_by_round(runs, f"{key}@1"), rate_by_round(runs, f"{key}@2")
    return {r: two[r] / (2 * one[r]) for r in sorted(set(one) & set(two))}


def _median(values: list[float]) -> float | None:
    return statistics.median(values) if values else None


def proof(key: str, strategy: str, runs: dict) -> dict[str, Any]:
    """The row's proof run (first round) against its reference (``proof_reference``); ``single``: the ceiling's two
    runs against the 1-worker run, bit for bit."""
    reference_name, tolerance = proof_reference(strategy)
    if strategy == "single":
        ranks, reference = runs.get("ceiling", {}).get(0), runs.get("single@1", {}).get(0)
    else:
        ranks, reference = runs.get(f"proof:{key}", {}).get(0), runs.get(reference_name, {}).get(0)
    if not (_ok(ranks) and _ok(reference)):
        return {"reference": reference_name, "tolerance": tolerance, "difference": None, "passed": None}
    difference = max_difference(ranks[0]["parameters"], reference[0]["parameters"])
    return {"reference": reference_name, "tolerance": tolerance, "difference": difference,
            "passed": difference <= tolerance}


def gradient_bytes(runs: dict, framework: str) -> float | None:
    """The model's fp32 gradient bytes, from the reference proof run's parameters (the same size)."""
    ranks = runs.get("proof:reference" if framework == "torch" else "proof:tf_reference", {}).get(0)
    if not _ok(ranks):
        return None
    return float(sum(value.size for value in ranks[0]["parameters"].values()) * theory.BYTES_FP32)


def _timing(row: Any, runs: dict) -> dict[str, Any]:
    """Samples/s at 1 and 2 workers (medians over rounds), the efficiency (median of the rounds' pairs)."""
    one, two = runs.get(f"{row.key}@1", {}), runs.get(f"{row.key}@2", {})
    pairs = [(_rate(one.get(r)), _rate(two.get(r))) for r in sorted(set(one) | set(two))]
    timed = [ranks for ranks in two.values() if _ok(ranks)] or [ranks for ranks in one.values() if _ok(ranks)]
    cpu = [_cpu(ranks) for ranks in timed]
    return {"samples_per_s_1": _median([a for a, _ in pairs if a]), "samples_per_s_2": _median([b for _, b in pairs
            if b]), "efficiency": _median([b / (2 * a) for a, b in pairs if a and b]),
            **{k: _median([c[k] for c in cpu if k in c]) for k in ("wall_per_step", "main_thread_cpu_per_step",
                                                                   "other_threads_cpu_per_step")}}


def _counted(row: Any, runs: dict, cases: dict, facts: dict[str, Any]) -> dict[str, Any]:
    """From the row's proof run: the busiest worker's bytes per step against theory, the heaviest model state."""
    name = "proof:reference" if row.strategy == "single" else f"proof:{row.key}"
    measured = runs.get(name, {}).get(0)
    if not _ok(measured):
        return {}
    heaviest = max(measured, key=lambda rank: rank.get("model_state_bytes") or 0)
    busiest = max(measured, key=lambda rank: rank.get("bytes_per_step") or 0)
    workers, batch = cases[name]["workers"], cases[name]["global_batch"]
    grads = gradient_bytes(runs, row.framework)
    expected = None if grads is None else expected_bytes(row.strategy, row.parallelism, row.extra.get(
        "zero_stage", 0), workers, grads, facts, batch)
    counted = busiest.get("bytes_per_step")
    return {"workers_measured": workers, "batch_measured": batch, "model_state": heaviest.get("model_state"),
            "model_state_bytes": heaviest.get("model_state_bytes"), "bytes_counted": counted,
            "bytes_theory": expected, "bytes_ratio": counted / expected if counted is not None and expected else None,
            "bytes_match": theory.within(counted, expected), "collectives": busiest.get("collectives"),
            "calls": busiest.get("calls_per_step")}


def build_row(row: Any, runs: dict, cases: dict, skipped: dict[int, str], ceiling: float | None,
              facts: dict[str, Any]) -> dict[str, Any]:
    """One table row (see the module docstring) from the runs of every round."""
    out: dict[str, Any] = {"key": row.key, "label": row.label, "framework": row.framework,
                           "parallelism": row.parallelism, **_timing(row, runs), "skipped": skipped}
    out["vs_ceiling"] = out["efficiency"] / ceiling if out["efficiency"] and ceiling else None
    own = [name for name in runs if name in (f"{row.key}@1", f"{row.key}@2", f"proof:{row.key}")]
    out["errors"] = sorted({rank["error"] for name in own for ranks in runs[name].values() for rank in ranks
                            if "error" in rank})
    out.update(_counted(row, runs, cases, facts))
    out["proof"] = proof(row.key, row.strategy, runs)
    return out


def _cpu(ranks: list[dict[str, Any]]) -> dict[str, float]:
    """Per timed step, mean over ranks: wall time, the main thread's CPU and the other threads' (gloo's,
    Horovod's background thread) CPU seconds (PyTorch runs only)."""
    ranks = [r for r in ranks if "cpu_per_step" in r]
    if not ranks:
        return {}
    return {"wall_per_step": statistics.mean(r["wall_per_step"] for r in ranks),
            "main_thread_cpu_per_step": statistics.mean(r["main_thread_cpu_per_step"] for r in ranks),
            "other_threads_cpu_per_step": statistics.mean(r["cpu_per_step"] - r["main_thread_cpu_per_step"]
                                                          for r in ranks)}


def build_rows(planned: dict[str, Any], records: list[dict[str, Any]]) -> dict[str, Any]:
    """The whole table: every row, the ceiling of each round and its median."""
    runs = index(records)
    cases = {record["case"]["name"]: record["case"] for record in records}
    found = ceilings(runs)
    ceiling = _median(found)
    facts = model_facts("cnn", 2)
    rows = [build_row(row, runs, cases, planned["skipped"].get(row.key, {}), ceiling, facts)
            for row in planned["rows"]]
    return {"rows": rows, "ceiling": ceiling, "ceilings": found, "single_1": _median(
        [r for r in (_rate(ranks) for ranks in runs.get("single@1", {}).values()) if r]), "model_facts": facts}
