"""A strategy's step time from exact counts: FLOPs over a FLOP rate, bytes through an α-β link, the bubble, overlap.

One optimizer step of the busiest worker costs::

    step = compute + exposed communication + bubble + other

- **compute**: the FLOPs the worker runs per step (``stage_flops``: ``torch.utils.flop_counter.FlopCounterMode``
  on the model's forward and backward, per pipeline stage) over a FLOP rate (checked here: fitted on the
  single-device row of ``bench all``, ``model_check``; projected: a peak x an assumed MFU);
- **communication**: each collective through the α-β model of ``ring``: ``steps x α + wire factor x S / β``
  (``theory.wire_factor``: 2(n-1)/n for an all-reduce; α, β fitted to the all-reduce benchmark by
  ``ring.fit_alpha_beta``);
- **exposed**: what of it no computation hides. Each collective says which phase may hide it (``HIDDEN_BY``):
  DDP's and Horovod's bucketed all-reduces run during the backward pass (the last bucket cannot: it is ready
  only when backward ends); ZeRO-3 and FSDP gather the next layer's parameters during forward and backward;
  DeepSpeed ZeRO-1/2 (``overlap_comm`` is off by default below stage 3), TensorFlow's strategies (gradients
  are reduced after ``tape.gradient``) and tensor parallelism (each all-reduce feeds the next layer) hide none;
- **bubble**: a pipeline's idle time. With per-micro-batch stage times t_s and m micro-batches, a GPipe or 1F1B
  step takes ``sum_s t_s + (m-1) max_s t_s``: m x the busiest stage's work plus ``sum - max`` idle, which is
  (p-1)/(m+p-1) of the step for p equal stages.

``StepTerms`` keeps each term so a table shows the breakdown. ``dtutor.bench.model_check`` checks the model
against every row of ``python -m dtutor.bench all``; ``dtutor.projection`` applies it to GPU clusters.
"""

from __future__ import annotations

import functools
import math
from dataclasses import asdict, dataclass
from typing import Any

from dtutor.bench.ring import fit_alpha_beta
from dtutor.bench.theory import wire_factor

BACKWARD_SHARE = 2 / 3  # of a step's FLOPs: backward is twice forward (2N forward, 4N backward per token)
HIDDEN_BY = ("none", "backward", "compute")  # the phase that may hide a collective
# how each strategy hides its collectives: DDP's and Horovod's buckets during backward; FSDP's and ZeRO-3's gathers
# and reduce-scatters, layer by layer, during forward and backward; every other strategy hides none
OVERLAP = {"ddp": "backward", "horovod": "backward", "fsdp": "compute", "deepspeed_zero3": "compute"}
DDP_BUCKET_BYTES = 25 * 1024 * 1024  # DistributedDataParallel(bucket_cap_mb=25)
HOROVOD_FUSION_BYTES = 64 * 1024 * 1024  # HOROVOD_FUSION_THRESHOLD's default


@dataclass(frozen=True)
class Link:
    """An α-β link: ``alpha_s`` seconds per ring step, ``beta_bytes_per_s`` bytes per second each rank sends
    (nccl-tests' bus bandwidth), and where the figures come from."""

    alpha_s: float
    beta_bytes_per_s: float
    source: str = ""


@dataclass(frozen=True)
class Collective:
    """One kind of collective per step: ``op`` on ``size`` bytes (all its calls together; an all-gather's size is
    its whole output, as ``theory`` counts it) in ``calls`` calls, hidden by ``hidden_by`` (see ``HIDDEN_BY``)."""

    op: str
    size: float
    calls: int = 1
    hidden_by: str = "none"


@dataclass(frozen=True)
class StepTerms:
    """One step's seconds, term by term: compute, communication (all, and the exposed part), bubble, other
    (offload's host transfers and CPU optimizer)."""

    compute_s: float
    comm_s: float = 0.0
    exposed_s: float = 0.0
    bubble_s: float = 0.0
    other_s: float = 0.0

    @property
    def step_s(self) -> float:
        """Seconds per step: compute + exposed communication + bubble + other."""
        return self.compute_s + self.exposed_s + self.bubble_s + self.other_s

    def as_dict(self) -> dict[str, float]:
        """Every term and the step, by name (JSON-friendly)."""
        return {**asdict(self), "step_s": self.step_s}


def ring_steps(op: str, n: int) -> int:
    """Latencies a ring ``op`` pays on ``n`` ranks: 2(n-1) for an all-reduce, n-1 for the halves, 1 for a send."""
    wire_factor(op, n)  # checks op and n
    return 1 if op == "send" else (2 if op == "all_reduce" else 1) * (n - 1)


def collective_seconds(op: str, size: float, n: int, link: Link, calls: int = 1) -> float:
    """α-β time of ``calls`` calls of ``op`` moving ``size`` bytes in all on ``n`` ranks (0 on one rank):
    ``calls x ring_steps x α + wire_factor x size / β`` (for one all-reduce: ``ring.model_seconds``)."""
    if n <= 1 and op != "send":
        return 0.0
    return calls * ring_steps(op, n) * link.alpha_s + wire_factor(op, n) * size / link.beta_bytes_per_s


def exposed_seconds(collectives: list[Collective], n: int, link: Link, compute_s: float) -> tuple[float, float]:
    """(all communication, its exposed part) for ``collectives`` beside ``compute_s`` of computation. Per phase,
    the hidden collectives share the phase's time (backward: ``BACKWARD_SHARE`` of compute; "compute": all of it);
    the exposed part is what exceeds it, and never less than the phase's longest single call (the last bucket)."""
    windows = {"backward": BACKWARD_SHARE * compute_s, "compute": compute_s}
    total = exposed = 0.0
    by_phase: dict[str, list[float]] = {}
    for collective in collectives:
        if collective.hidden_by not in HIDDEN_BY:
            raise ValueError(f"hidden_by: must be one of {', '.join(HIDDEN_BY)}, got {collective.hidden_by!r}")
        seconds = collective_seconds(collective.op, collective.size, n, link, collective.calls)
        total += seconds
        if collective.hidden_by == "none":
            exposed += seconds
        else:
            by_phase.setdefault(collective.hidden_by, []).extend([seconds / collective.calls, seconds])
    for phase, times in by_phase.items():
        longest_call, phase_total = max(times[0::2]), sum(times[1::2])
        exposed += max(longest_call, phase_total - windows[phase])
    return total, exposed


def data_parallel_terms(compute_s: float, collectives: list[Collective], n: int, link: Link,
                        other_s: float = 0.0) -> StepTerms:
    """A worker that computes ``compute_s`` and runs ``collectives`` on ``n`` ranks (no pipeline)."""
    comm, exposed = exposed_seconds(collectives, n, link, compute_s)
    return StepTerms(compute_s, comm, exposed, 0.0, other_s)


def pipeline_terms(stage_seconds: list[float], micro_batches: int, send_s: float = 0.0) -> StepTerms:
    """A GPipe/1F1B step of ``micro_batches`` through stages taking ``stage_seconds`` (forward + backward of one
    micro-batch each), each boundary crossed by one send of ``send_s`` per micro-batch and direction. Compute:
    m x the busiest stage; bubble: ``sum - max`` (the fill and drain; (p-1)/(m+p-1) of the step for equal
    stages); sends: all of them counted, those of the fill and drain (2 per boundary) exposed."""
    if micro_batches < 1 or not stage_seconds:
        raise ValueError(f"micro_batches: must be >= 1 with at least one stage, got {micro_batches}, {stage_seconds}")
    busiest, boundaries = max(stage_seconds), len(stage_seconds) - 1
    return StepTerms(compute_s=micro_batches * busiest, comm_s=2 * boundaries * micro_batches * send_s,
                     exposed_s=2 * boundaries * send_s, bubble_s=sum(stage_seconds) - busiest)


def buckets(size: float, capacity: float) -> int:
    """How many buckets of at most ``capacity`` bytes ``size`` bytes of gradients fill (at least 1)."""
    return max(1, math.ceil(size / capacity))


def link_from_allreduce(result: dict[str, Any], source: str = "") -> Link:
    """The α-β link fitted (``ring.fit_alpha_beta``) to one ``bench_allreduce`` result (its rows' bytes and
    seconds on ``result["ranks"]`` ranks)."""
    rows = result["rows"]
    fit = fit_alpha_beta([row["bytes"] for row in rows], [row["seconds"] for row in rows], result["ranks"])
    return Link(fit["alpha_s"], fit["beta_bytes_per_s"],
                source or f"all-reduce benchmark, {result['ranks']} ranks ({result.get('backend', '?')})")


def stage_flops(model_name: str, stages: int, batch: int) -> list[int]:
    """FLOPs per pipeline stage (forward and backward of ``batch`` samples), the model cut as the pipeline
    strategies cut it (``model_parallel.stages.even_cuts``); one stage: the whole model. Counted once per
    sample (``FlopCounterMode``) and scaled: a layer's FLOPs grow exactly with the batch."""
    return [flops * batch for flops in _stage_flops_per_sample(model_name, stages)]


@functools.lru_cache(maxsize=16)
def _stage_flops_per_sample(model_name: str, stages: int) -> tuple[int, ...]:
    import torch
    from torch.utils.flop_counter import FlopCounterMode

    from dtutor import models
    from dtutor.pytorch.model_parallel import stages as st

    net = models.by_name(model_name)()
    parts = st.stage_modules(net, st.even_cuts(len(models.pipeline_layers(net)), stages))
    inputs, counts = torch.zeros(1, 1, 28, 28), []
    for index, part in enumerate(parts):
        inputs = inputs.detach().requires_grad_(index > 0)  # a later stage computes its input's gradient
        with FlopCounterMode(display=False) as counter:
            outputs = part(inputs)
            outputs.sum().backward()
        counts.append(counter.get_total_flops())
        inputs = outputs
    return tuple(counts)
