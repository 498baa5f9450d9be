"""The cost model (``cost_model``) against every row of ``python -m dtutor.bench all``: predicted, measured, error.

``check_bench_all(result, link)`` takes bench all's result (a live one or the recorded JSON) and predicts each
row's step time at 1 and 2 workers from exact counts:

- FLOPs: the course CNN's forward and backward, counted per pipeline stage (one stage: the whole model) by
  ``cost_model.stage_flops``;
- the FLOP rate: **calibrated on the single-device row** (its FLOPs per step over its measured step time), so
  that row's error is 0 by construction and every other row is a prediction;
- bytes: what the row's proof run counted per step (``bench all``'s collective counter; a pipeline's and tensor
  parallelism's scale with the batch, so they are scaled to the timed batch), through the α-β ``link`` fitted
  to the all-reduce benchmark (the recorded one, ``recorded_link``, unless given);
- overlap per strategy (``cost_model.OVERLAP``), the bubble from the stages' counted FLOPs.

Measured step time: the samples in one step (batch per worker x workers) over the row's samples/s. A row that
misses by more than ``EXPLAIN_ABOVE`` gets one line computed from its own measurements (``explain``).
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import TYPE_CHECKING, Any

from dtutor.bench import cost_model as cm
from dtutor.bench.theory import BYTES_FP32

if TYPE_CHECKING:
    import pandas as pd

EXPLAIN_ABOVE = 0.25  # rows missing by more than this (relative) get an explanation
RECORDED_ALLREDUCE = Path(__file__).resolve().parents[2] / "results" / "cpu" / "allreduce_quick.json"
WORKER_COUNTS = (1, 2)


def recorded_link(path: Path = RECORDED_ALLREDUCE, ranks: int = 2) -> cm.Link:
    """The α-β link fitted to the recorded ``python -m dtutor.bench allreduce --json`` result on ``ranks`` ranks."""
    results = json.loads(path.read_text())
    result = next(r for r in (results if isinstance(results, list) else [results]) if r["ranks"] == ranks)
    return cm.link_from_allreduce(result, f"{path.parent.name}/{path.name}: all-reduce on {ranks} ranks "
                                          f"({result['backend']})")


def measured_step(row: dict[str, Any], workers: int, batch_per_worker: int) -> float | None:
    """Seconds per step of ``row``'s run at ``workers`` workers: its samples per step over its samples/s."""
    rate = row.get(f"samples_per_s_{workers}")
    return batch_per_worker * workers / rate if rate else None


def counted_collectives(row: dict[str, Any], batch: int) -> list[cm.Collective]:
    """The collectives ``row``'s proof run counted per step, hidden as its strategy hides them; a pipeline's and
    tensor parallelism's bytes scaled from the proof's batch to ``batch``."""
    scale = batch / row["batch_measured"] if row["parallelism"] != "data" and row.get("batch_measured") else 1.0
    calls = row.get("calls") or {}
    return [cm.Collective(op, size * scale, max(1, round(calls.get(op, 1))), cm.OVERLAP.get(row["key"], "none"))
            for op, size in (row.get("collectives") or {}).items() if op != "send"]


def predict(row: dict[str, Any], workers: int, batch_per_worker: int, micro_batches: int, rate: float,
            link: cm.Link, boundary: int = 0, model: str = "cnn") -> cm.StepTerms:
    """The model's terms for ``row`` at ``workers`` workers (``rate``: FLOP/s of one worker; ``boundary``: the
    values per sample a pipeline sends between its 2 stages, ``rows.model_facts``)."""
    batch = batch_per_worker * workers
    if row["parallelism"] == "pipeline":
        micro = batch // micro_batches
        stages = [flops / rate for flops in cm.stage_flops(model, workers, micro)]
        sent = boundary * micro * BYTES_FP32
        return cm.pipeline_terms(stages, micro_batches, cm.collective_seconds("send", sent, 2, link))
    if row["parallelism"] == "tensor":
        whole, split = sum(cm.stage_flops(model, 1, batch)), cm.stage_flops(model, 2, batch)[1]
        compute = (whole - split * (1 - 1 / workers)) / rate
    else:
        compute = sum(cm.stage_flops(model, 1, batch_per_worker)) / rate
    collectives = counted_collectives(row, batch) if workers > 1 else []
    return cm.data_parallel_terms(compute, collectives, workers, link)


def check_bench_all(result: dict[str, Any], link: cm.Link | None = None) -> dict[str, Any]:
    """Every row of ``result`` with, per worker count, the predicted terms, the measured step and the error; the
    rate and link used; rows missing by more than ``EXPLAIN_ABOVE`` explained (``explain``)."""
    from dtutor.bench.suite import MODES

    link = link or recorded_link()
    per_worker, micro_batches = result["batch_per_worker"], MODES[result["mode"]].micro_batches
    if not result.get("single_1"):
        return {"rate_flops_per_s": None, "flops_per_step": None, "link": vars(link), "rows": [],
                "calibration": "nothing: the single row did not run, so no FLOP rate was measured"}
    single = measured_step({"samples_per_s_1": result["single_1"]}, 1, per_worker)
    flops = sum(cm.stage_flops("cnn", 1, per_worker))
    rate = flops / single
    boundary = (result.get("model_facts") or {}).get("boundaries", [0])[0]
    rows = []
    for row in result["rows"]:
        checked: dict[str, Any] = {"key": row["key"], "label": row["label"], "runs": {}}
        for workers in WORKER_COUNTS:
            measured = measured_step(row, workers, per_worker)
            if measured is None:
                continue
            terms = predict(row, workers, per_worker, micro_batches, rate, link, boundary)
            checked["runs"][workers] = {**terms.as_dict(), "measured_s": measured,
                                        "error": terms.step_s / measured - 1}
        checked["explanation"] = explain(row, checked["runs"], result, rate, flops)
        rows.append(checked)
    return {"rate_flops_per_s": rate, "flops_per_step": flops, "link": vars(link), "rows": rows,
            "calibration": f"single at 1 worker: {flops / 1e9:.2f} GFLOP per step of {per_worker} samples in "
                           f"{single * 1e3:.0f} ms = {rate / 1e9:.1f} GFLOP/s"}


def _worst(runs: dict[int, dict[str, Any]]) -> tuple[int, dict[str, Any]] | None:
    missed = [(w, run) for w, run in runs.items() if abs(run["error"]) > EXPLAIN_ABOVE]
    return max(missed, key=lambda item: abs(item[1]["error"])) if missed else None


def explain(row: dict[str, Any], runs: dict[int, dict[str, Any]], result: dict[str, Any], rate: float,
            flops: float) -> str:
    """One line on why ``row`` misses by more than ``EXPLAIN_ABOVE`` ("" when it does not), computed from its
    measurements: TensorFlow's kernels, micro-batch sizes, background threads' CPU, CPU work beyond the FLOPs,
    waiting, or the machine's noise (the ceiling's spread over rounds)."""
    worst = _worst(runs)
    if worst is None:
        return ""
    workers, run = worst
    ms, single = run["measured_s"] * 1e3, flops / rate
    plural = "s" if workers > 1 else ""
    where = f"at {workers} worker{plural}, {ms:.0f} ms measured vs {run['step_s'] * 1e3:.0f} ms predicted: "
    one = runs.get(1, {}).get("measured_s")
    wall, main, others = (row.get(k) for k in ("wall_per_step", "main_thread_cpu_per_step",
                                                "other_threads_cpu_per_step"))
    if ms < 20 and run["compute_s"] < 0.5 * run["measured_s"]:
        return where + f"process start-up and Python overhead per step dominate a {ms:.1f} ms step"
    if row["framework"] == "tensorflow" and one:
        own = f"; its 2 workers took {run['measured_s'] / one:.2f}x its own 1-worker step" if workers > 1 else ""
        return where + (f"TensorFlow's kernels and loop, not torch's: its 1-worker step took {one * 1e3:.0f} ms, "
                        f"{one / single:.2f}x torch single's, on which the FLOP rate is calibrated{own}")
    if row["parallelism"] == "pipeline" and one and one < 0.9 * single:
        return where + (f"smaller batches run faster per FLOP on this CPU (caches): at 1 worker its micro-batches "
                        f"took {one * 1e3:.0f} ms per step, {one / single:.2f}x single's whole batches")
    if others and wall and others > 0.1 * wall:
        return where + (f"background threads took {others * 1e3:.0f} ms of CPU per step ({others / wall:.0%} of "
                        "the step) on a machine whose 2 cores both train")
    waited = wall - main if wall and main else 0.0
    if main and main > 1.1 * run["compute_s"]:
        return where + (f"the main thread worked {main * 1e3:.0f} ms per step, {main / run['compute_s']:.2f}x "
                        f"the counted FLOPs' time (per-step work of {row['label']}'s own code beyond the FLOPs), "
                        f"and waited {waited * 1e3:.0f} ms more")
    if waited > EXPLAIN_ABOVE * wall:
        return where + f"the process waited {waited * 1e3:.0f} ms per step beyond its CPU time"
    spread = result.get("ceilings") or []
    noise = f" (ceiling rounds {min(spread):.2f}-{max(spread):.2f} of 2x one run)" if spread else ""
    return where + f"within this machine's noise between processes{noise}"


def table_check(checked: dict[str, Any]) -> pd.DataFrame:
    """Per row: predicted and measured ms per step and the error at 1 and 2 workers, and the 2-worker terms
    (compute, exposed communication, bubble); the explanations and the calibration are the notes."""
    from dtutor.tables import milliseconds, titled

    def cell(row: dict[str, Any], workers: int, key: str, scale: float) -> float | None:
        run = row["runs"].get(workers)
        return None if run is None else round(run[key] * scale, 1 if scale == 1e3 else 0) + 0.0  # no -0.0

    table = []
    for row in checked["rows"]:
        terms = row["runs"].get(2) or row["runs"].get(1) or {}
        table.append({"strategy": row["label"], **{f"{name} {w} w": cell(row, w, key, scale)
                      for w in WORKER_COUNTS for name, key, scale in (("pred ms", "step_s", 1e3),
                      ("meas ms", "measured_s", 1e3), ("err %", "error", 100))},
                      "compute ms": milliseconds(terms.get("compute_s"), 1),
                      "exposed comm ms": milliseconds(terms.get("exposed_s"), 1),
                      "bubble ms": milliseconds(terms.get("bubble_s"), 1)})
    link = checked["link"]
    notes = [f"FLOP rate calibrated on {checked['calibration']} (so its error is 0 by construction); link: "
             f"α = {link['alpha_s'] * 1e6:.0f} µs per ring step, β = {link['beta_bytes_per_s'] / 1e9:.2f} GB/s "
             f"({link['source']}); terms: the 2-worker run where there is one",
             *(f"{row['label']}: {row['explanation']}" for row in checked["rows"] if row["explanation"])]
    return titled(table, "The cost model against bench all: predicted and measured time per step", notes)


