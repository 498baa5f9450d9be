"""The CSDN article's comparison table, and each of its claims beside the numbers of ``python -m dtutor.bench
all`` that confirm, correct or limit it (or a statement that it is unmeasured here, and why).

The CSDN article (the third source article) ends with a table of DataParallel, DDP, Horovod,
MirroredStrategy and DeepSpeed: framework, kind of parallelism, where each fits, strengths and weaknesses,
every claim asserted. ``ARTICLE_TABLE`` keeps its columns; the phrases in quotes are the article's.
``claims(result)`` computes every verdict and sentence from the benchmark's result, so the notebook's text
always says what the numbers say. A verdict that rests on a timing is judged round by round
(``judge``): it carries the spread of its figure over the rounds, and is **undecided** when the rounds fall
on both sides of its threshold, or when a single round gives no spread at all.
"""

from __future__ import annotations

import statistics
from typing import TYPE_CHECKING, Any

from dtutor.bench import rows as table_rows

if TYPE_CHECKING:
    import pandas as pd

ARTICLE_TABLE = [
    {"method": "DataParallel", "framework": "PyTorch", "parallelism": "data, one process, threads",
     "fits": "one machine, a few GPUs", "strength": "two lines of code",
     "weakness": '"the main GPU is a bottleneck"'},
    {"method": "DDP", "framework": "PyTorch", "parallelism": "data, one process per GPU",
     "fits": "many GPUs, many machines", "strength": '"reduces communication overhead"',
     "weakness": "more set-up: processes, a launcher"},
    {"method": "Horovod", "framework": "PyTorch, TensorFlow", "parallelism": "data, ring all-reduce",
     "fits": '"suits multi-node"', "strength": "one API for several frameworks",
     "weakness": "a separate install (MPI or gloo)"},
    {"method": "MirroredStrategy", "framework": "TensorFlow", "parallelism": "data, synchronous replicas",
     "fits": "one machine, several GPUs", "strength": "a scope around the model", "weakness": "one machine"},
    {"method": "DeepSpeed", "framework": "PyTorch", "parallelism": "hybrid: ZeRO partitioning (+ pipeline)",
     "fits": "large models", "strength": '"optimises large-model training"',
     "weakness": "complex to configure"},
]
DDP_OF_CEILING = 0.9  # DDP "reduces communication overhead" if it keeps this share of the ceiling
HOROVOD_OF_DDP = 0.95  # Horovod scales like DDP if its efficiency is at least this share of DDP's
UNDECIDED = "undecided"


def _rows(result: dict[str, Any]) -> dict[str, dict[str, Any]]:
    return {row["key"]: row for row in result["rows"]}


def _kb(value: float | None) -> str:
    return "-" if value is None else f"{value / 1000:,.0f} kB"


def _share(part: float | None, whole: float | None) -> str:
    return "-" if not (part and whole) else f"{part / whole:.0%}"


def judge(values: list[float], threshold: float, at_or_above: str, below: str) -> str:
    """``at_or_above`` when every round's value reaches ``threshold``, ``below`` when none does, and
    ``"undecided"`` when the rounds fall on both sides of it or there are fewer than two rounds."""
    if len(values) < 2 or min(values) < threshold <= max(values):
        return UNDECIDED
    return at_or_above if min(values) >= threshold else below


def spread(values: list[float]) -> str:
    """The values of the rounds in words: "0.81 to 0.93 over 3 rounds", "0.87, one round"."""
    if not values:
        return "no round"
    if len(values) == 1:
        return f"{values[0]:.2f}, one round: no spread"
    return f"{min(values):.2f} to {max(values):.2f} over {len(values)} rounds"


def _ratios(numerator: dict[int, float], denominator: dict[int, float]) -> list[float]:
    return [numerator[r] / denominator[r] for r in sorted(set(numerator) & set(denominator)) if denominator[r]]


def round_figures(result: dict[str, Any]) -> dict[str, list[float]]:
    """Per round, from the result's records: DDP's efficiency over the ceiling, Horovod's efficiency over
    DDP's, and ZeRO-3's samples/s at 2 workers over DDP's (the figures the timing verdicts rest on); and, to read
    them by, the ceiling and DDP's efficiency by CPU time (one worker's CPU per sample over two workers')."""
    runs = table_rows.index(result.get("records") or [])
    ddp, cpu = table_rows.efficiency_by_round(runs, "ddp"), cpu_per_sample_by_round(result.get("records") or [])
    ceilings = table_rows.ceiling_by_round(runs)
    return {"ddp_of_ceiling": _ratios(ddp, ceilings), "ceiling": [ceilings[r] for r in sorted(ceilings)],
            "ddp_by_cpu": _ratios(cpu.get("ddp@1", {}), cpu.get("ddp@2", {})),
            "horovod_of_ddp": _ratios(table_rows.efficiency_by_round(runs, "horovod"), ddp),
            "zero3_of_ddp": _ratios(table_rows.rate_by_round(runs, "deepspeed_zero3@2"),
                                    table_rows.rate_by_round(runs, "ddp@2"))}


def cpu_per_sample_by_round(records: list[dict[str, Any]]) -> dict[str, dict[int, float]]:
    """``found[run][round]``: CPU seconds per sample trained, all ranks' CPU per timed step over the samples the
    job trains per step (the ceiling's two ranks train a batch each); PyTorch runs only (they time their CPU).

    The work a run does, where the wall clock also holds the time a process waited for a core: on a shared
    machine the two differ (``python -m dtutor.bench ceiling``)."""
    found: dict[str, dict[int, float]] = {}
    for record in records:
        ranks, case = record["ranks"], record["case"]
        if ranks and all("cpu_per_step" in rank for rank in ranks) and not case["name"].startswith("proof:"):
            samples = case["global_batch"] * (len(ranks) if case["name"] == "ceiling" else 1)
            found.setdefault(case["name"], {})[record["round"]] = sum(r["cpu_per_step"] for r in ranks) / samples
    return found


def median_and_range(values: list[float], digits: int = 2) -> str:
    """"0.87 (0.81-0.93)": the median and, over 2 rounds or more, the range; "-" without values."""
    if not values:
        return "-"
    middle = f"{statistics.median(values):.{digits}f}"
    return middle if len(values) < 2 else f"{middle} ({min(values):.{digits}f}-{max(values):.{digits}f})"


def scaling_rounds(result: dict[str, Any]) -> list[dict[str, str]]:
    """Every row that ran at 1 and 2 workers (and the ceiling first): its scaling by the wall clock, T2 / (2 T1)
    and against the ceiling, beside the same by CPU time (CPU ms per sample at 1 and 2 workers, and their
    ratio), each as the median with its range over the rounds."""
    records = result.get("records") or []
    runs, cpu = table_rows.index(records), cpu_per_sample_by_round(records)
    ceilings = table_rows.ceiling_by_round(runs)

    def line(name: str, wall: dict[int, float], against: list[float], one: str, two: str) -> dict[str, str]:
        work = _ratios(cpu.get(one, {}), cpu.get(two, {}))
        return {"row": name, "T2/(2T1)": median_and_range(list(wall.values())), "/ceiling": median_and_range(against),
                "CPU ms/sample 1 w": median_and_range([1e3 * v for v in cpu.get(one, {}).values()], 3),
                "2 w": median_and_range([1e3 * v for v in cpu.get(two, {}).values()], 3),
                "by CPU: 1 w / 2 w": median_and_range(work)}

    found = [line("ceiling (2 single runs)", ceilings, [], "single@1", "ceiling")] if ceilings else []
    for row in result["rows"]:
        wall = table_rows.efficiency_by_round(runs, row["key"])
        if wall:
            found.append(line(row["label"], wall, _ratios(wall, ceilings), f"{row['key']}@1", f"{row['key']}@2"))
    return found


def table_scaling_rounds(result: dict[str, Any]) -> pd.DataFrame:
    """``scaling_rounds`` as a table, with its legend."""
    from dtutor.tables import titled

    return titled(scaling_rounds(result), f"Scaling over {result['repeats']} round(s): median (min-max)",
                  ["T2/(2T1), /ceiling: by the wall clock; CPU ms/sample: all workers' CPU time per sample trained; "
                   "by CPU: 1 w / 2 w, the same efficiency by CPU time (1.00: distributing cost no CPU)"])


def dataparallel_claim(rows: dict[str, Any], gpu_results: list[dict[str, Any]]) -> tuple[str, str]:
    """DataParallel's bottleneck: measurable only on GPUs (notebook 01's per-GPU memory, and its speed)."""
    dp, single = rows.get("dataparallel", {}), rows.get("single", {})
    here = (f"on this CPU it calls the model once in one process ({dp.get('samples_per_s_1') or 0:,.0f} "
            f"samples/s against single's {single.get('samples_per_s_1') or 0:,.0f}); proof "
            f"{'passed' if dp.get('proof', {}).get('passed') else 'not passed'}")
    measured = [r for r in gpu_results if r.get("dataparallel_memory")]
    if not measured:
        why = "no GPU result is recorded (results/gpu/ is empty)" if not gpu_results else \
            "no recorded GPU result has DataParallel's per-GPU memory (it needs 2 GPUs or more)"
        return "unmeasured", f"{why}: the first GPU's memory excess needs notebook 01's GPU run; " + here
    peaks = measured[-1]["dataparallel_memory"]
    others = sum(peaks[1:]) / len(peaks[1:])
    excess = peaks[0] / others - 1
    where = f"{measured[-1]['machine']['gpus'][0]}, {measured[-1]['machine']['date'][:10]}"
    return ("confirms" if excess > 0.1 else "corrects"), (
        f"recorded on {len(peaks)} x {where}: the first GPU peaks at {peaks[0] / 2**30:.2f} GiB, "
        f"{excess:+.0%} against the others' mean ({others / 2**30:.2f} GiB); " + here)


def ddp_claim(rows: dict[str, Any], rounds: dict[str, list[float]]) -> tuple[str, str]:
    """DDP: one ring all-reduce of the gradients per step, and how close to the ceiling that leaves it."""
    ddp = rows.get("ddp", {})
    if ddp.get("bytes_counted") is None or ddp.get("vs_ceiling") is None:
        return "unmeasured", "DDP did not run at 2 workers"
    values = rounds["ddp_of_ceiling"]
    verdict = judge(values, DDP_OF_CEILING, "confirms", "limits") if ddp.get("bytes_match") else "limits"
    return verdict, (f"sends {_kb(ddp['bytes_counted'])} per worker per step, theory {_kb(ddp['bytes_theory'])} "
                     f"(one ring all-reduce of the gradients, nothing more); scaling efficiency "
                     f"{ddp['efficiency']:.2f}, {ddp['vs_ceiling']:.2f} of what two processes that never "
                     f"communicate reach here (rounds: {spread(values)}; confirms from {DDP_OF_CEILING} on); the "
                     f"ceiling's own rounds: {spread(rounds['ceiling'])}; by CPU time, one worker's CPU per sample "
                     f"over two workers': {median_and_range(rounds['ddp_by_cpu'])} (1.00: communicating costs no CPU)")


def horovod_claim(rows: dict[str, Any], rounds: dict[str, list[float]]) -> tuple[str, str]:
    """Horovod: the same bytes as DDP; its efficiency against DDP's, on one machine."""
    hvd, ddp = rows.get("horovod", {}), rows.get("ddp", {})
    if not (hvd.get("efficiency") and ddp.get("efficiency")):
        return "unmeasured", "Horovod or DDP did not run at 2 workers"
    values = rounds["horovod_of_ddp"]
    cpu = ""
    if all(row.get(k) is not None for row in (hvd, ddp) for k in ("main_thread_cpu_per_step",
                                                                 "other_threads_cpu_per_step")):
        extra = sum(hvd[k] - ddp[k] for k in ("main_thread_cpu_per_step", "other_threads_cpu_per_step"))
        cpu = f"; its workers use {extra * 1e3:+.1f} ms of CPU per step against DDP's (section 5)"
    return judge(values, HOROVOD_OF_DDP, "confirms", "limits"), (
        f"multi-node is not measurable on one machine; here it sends what DDP sends "
        f"({_kb(hvd.get('bytes_counted'))} against {_kb(ddp.get('bytes_counted'))}) and scales "
        f"{hvd['efficiency']:.2f} against DDP's {ddp['efficiency']:.2f} (its share of DDP's, rounds: "
        f"{spread(values)}; limits below {HOROVOD_OF_DDP}){cpu}")


def mirrored_claim(rows: dict[str, Any]) -> tuple[str, str]:
    """MirroredStrategy: correct with a scope around the model; one process, so nothing is sent."""
    mirrored, worker = rows.get("mirrored", {}), rows.get("multiworker", {})
    if mirrored.get("proof", {}).get("passed") is None:
        return "unmeasured", "MirroredStrategy did not run"
    verdict = "confirms" if mirrored["proof"]["passed"] else "corrects"
    return verdict, (f"2 replicas equal one device (proof {'passed' if mirrored['proof']['passed'] else 'FAILED'}),"
                     f" in one process: nothing is sent; across processes MultiWorkerMirroredStrategy sends "
                     f"{_kb(worker.get('bytes_counted'))} per step, theory {_kb(worker.get('bytes_theory'))}")


def deepspeed_claim(rows: dict[str, Any], rounds: dict[str, list[float]]) -> tuple[str, str]:
    """DeepSpeed: the model state per worker it saves, and what it costs in bytes and speed on a small model."""
    ddp, z1, z3 = rows.get("ddp", {}), rows.get("deepspeed_zero1", {}), rows.get("deepspeed_zero3", {})
    if not (ddp.get("model_state_bytes") and z3.get("model_state_bytes")):
        return "unmeasured", "DDP or ZeRO-3 did not run at 2 workers"
    values = rounds["zero3_of_ddp"]
    saves = z3["model_state_bytes"] < ddp["model_state_bytes"]
    verdict = judge(values, 1.0, "confirms", "limits") if saves else "corrects"
    return verdict, (f"model state per worker: ZeRO-1 {_share(z1.get('model_state_bytes'), ddp['model_state_bytes'])}"
                     f", ZeRO-3 {_share(z3['model_state_bytes'], ddp['model_state_bytes'])} of DDP's "
                     f"({_kb(ddp['model_state_bytes'])}); it pays in bytes (ZeRO-1 x"
                     f"{(z1.get('bytes_counted') or 0) / (ddp.get('bytes_counted') or 1):.2f}, ZeRO-3 x"
                     f"{(z3.get('bytes_counted') or 0) / (ddp.get('bytes_counted') or 1):.2f} DDP's per step) and, "
                     f"on this small model, in speed ({_share(z3.get('samples_per_s_2'), ddp.get('samples_per_s_2'))}"
                     f" of DDP's samples/s at 2 workers; rounds: {spread(values)}): it pays off when the model "
                     "does not fit")


def claims(result: dict[str, Any], gpu_results: list[dict[str, Any]] | None = None) -> list[dict[str, str]]:
    """One entry per row of the article's table: its claim, the verdict (confirms, corrects, limits,
    undecided, unmeasured) and the numbers behind it."""
    rows, gpu_results, rounds = _rows(result), gpu_results or [], round_figures(result)
    found = {"DataParallel": dataparallel_claim(rows, gpu_results), "DDP": ddp_claim(rows, rounds),
             "Horovod": horovod_claim(rows, rounds), "MirroredStrategy": mirrored_claim(rows),
             "DeepSpeed": deepspeed_claim(rows, rounds)}
    claim_of = {"DataParallel": "weakness", "DDP": "strength", "Horovod": "fits", "MirroredStrategy": "strength",
                "DeepSpeed": "strength"}
    return [{"method": entry["method"], "claim": entry[claim_of[entry["method"]]],
             "verdict": found[entry["method"]][0], "measured": found[entry["method"]][1]}
            for entry in ARTICLE_TABLE]


def claims_markdown(result: dict[str, Any], gpu_results: list[dict[str, Any]] | None = None) -> str:
    """The article's table with two more columns: the verdict and the measurement behind it."""
    lines = ["| method | framework | parallelism | where it fits | the article's claim | verdict | measured here |",
             "|---|---|---|---|---|---|---|"]
    for entry, claim in zip(ARTICLE_TABLE, claims(result, gpu_results), strict=True):
        lines.append(f"| {entry['method']} | {entry['framework']} | {entry['parallelism']} | {entry['fits']} | "
                     f"{claim['claim']} | **{claim['verdict']}** | {claim['measured']} |")
    return "\n".join(lines)
