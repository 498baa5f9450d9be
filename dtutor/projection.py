"""Projections, not measurements: the cost model (``dtutor.bench.cost_model``) applied to GPU clusters.

For every strategy the course teaches (``dtutor.strategies``; DeepSpeed per ZeRO stage, and ZeRO-3 with the
optimizer offloaded), every model and cluster of ``dtutor.clusters``, ``project`` gives one step's terms and:

- **compute**: the step's FLOPs on the busiest GPU over ``peak x MFU`` (both stated in ``dtutor.clusters``);
- **communication** per step, what the course counts (``dtutor.bench.theory``): data parallelism (DDP, Horovod,
  TensorFlow's strategies, DataParallel) all-reduces the gradients once per step in fp32, 4N bytes (autocast keeps
  the parameters, so their gradients, in fp32); DeepSpeed's bf16 mode and FSDP's mixed precision hold and send
  16-bit copies (G = P = 2N bytes, activations 2 bytes a value): ZeRO-1 reduce-scatters G and
  all-gathers the parameters P = 2N once per step; ZeRO-2 reduce-scatters G every micro-batch (it keeps no whole
  gradient to accumulate in); ZeRO-3 and FSDP gather P for forward and again for backward and reduce-scatter G,
  every micro-batch, layer by layer; tensor parallelism all-reduces each layer's activations twice forward and
  twice backward; a pipeline sends one micro-batch's activations per boundary. Hidden as ``cost_model`` says;
- **memory per GPU**: model state from the ZeRO paper's formulas (``sharded.formulas``: 16 bytes per
  parameter with Adam in mixed precision, divided as each stage divides it) plus the activations of the
  micro-batches held (``activation_memory.transformer_activation_bytes``, Korthikanti et al. 2022, the
  Ultra-Scale Playbook's formula, without recomputation; GPipe holds all m micro-batches, 1F1B at most p);
- step time, tokens/s (images/s for the CNN), MFU (model FLOPs over step time x GPUs x peak), and whether the
  memory fits the GPU's 80 GB.

Gradient accumulation makes up the global batch: ``global_batch / (micro_batch x data-parallel GPUs)`` micro-
batches per step. Not modelled: attention's FLOPs beyond 6·N, kernel launch overheads, NCCL's hierarchical
algorithms, overlap of the pipeline's sends beyond the fill and drain, DataParallel's single-process threads.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from dtutor.bench import cost_model as cm
from dtutor.clusters import CLUSTERS, Cluster, Workload, workloads
from dtutor.pytorch.sharded import formulas
from dtutor.strategies import STRATEGIES

if TYPE_CHECKING:
    import pandas as pd

BYTES_16 = 2  # bytes per parameter, gradient and activation value in mixed precision
BYTES_32 = 4  # bytes per fp32 gradient (data parallelism under autocast)
ONE_MACHINE = ("dataparallel", "mirrored")  # one process drives every GPU: one machine only
DATA_TENSOR_WIDTH = 2  # the course's data x tensor grid: tensor-parallel pairs (dtutor.layout.DATA_X_TENSOR)


@dataclass
class Projection:
    """One (model, cluster, strategy): its terms (None: it cannot run there, ``note`` says why), GPUs used and
    memory per GPU in bytes."""

    model: Workload
    cluster: Cluster
    strategy: str
    gpus: int
    terms: cm.StepTerms | None = None
    memory_bytes: float | None = None
    note: str = ""
    extra: dict[str, Any] = field(default_factory=dict)

    @property
    def tokens_per_s(self) -> float | None:
        """Tokens (images for the CNN) per second: the step's tokens over its time."""
        return self.model.tokens_per_step / self.terms.step_s if self.terms else None

    @property
    def mfu(self) -> float | None:
        """Model FLOPs per second over the peak of every GPU used."""
        if not self.terms:
            return None
        flops = self.model.flops_per_sample * self.model.global_batch
        return flops / (self.terms.step_s * self.gpus * self.cluster.peak_flops)

    @property
    def fits(self) -> bool | None:
        """Whether the memory per GPU fits the GPU's memory."""
        return None if self.memory_bytes is None else self.memory_bytes <= self.cluster.memory_bytes


def variants() -> list[tuple[str, str, dict[str, Any]]]:
    """(label, registry name, extra fields) of every strategy projected: the registry, DeepSpeed per stage."""
    found = []
    for name in STRATEGIES:
        if name == "deepspeed":
            found += [(f"ZeRO-{s}", name, {"zero_stage": s}) for s in (1, 2, 3)]
            found.append(("ZeRO-3 + offload", name, {"zero_stage": 3, "offload": True}))
        else:
            found.append((name, name, {}))
    return found


def activation_bytes(model: Workload, micro_batches: int = 1, layers: int | None = None, tensor: int = 1) -> float:
    """Activations of ``micro_batches`` micro-batches through ``layers`` layers (all by default), split over
    ``tensor`` GPUs (a transformer's, as with sequence parallelism; the CNN's convolutions are not split)."""
    from dtutor.pytorch.activation_memory import cnn_terms, transformer_activation_bytes

    layers = model.layers if layers is None else layers
    if not model.transformer:  # what autograd saves, counted by hand and checked in test_pytorch_activation_memory
        return sum(cnn_terms(model.micro_batch).values()) * micro_batches * layers / model.layers

    return micro_batches * transformer_activation_bytes(model.sequence, model.micro_batch, model.hidden, model.heads,
                                                        layers) / tensor


def _compute_seconds(model: Workload, cluster: Cluster, samples: float, tensor: int = 1) -> float:
    """Seconds for one GPU's share of ``samples`` samples' FLOPs, ``tensor`` GPUs splitting the splittable share."""
    share = model.tensor_share / tensor + 1 - model.tensor_share
    return model.flops_per_sample * samples * share / (cluster.peak_flops * model.mfu)


def _data_parallel_plan(name: str, extra: dict[str, Any], model: Workload) -> tuple[list, list]:
    """(collectives once per micro-batch, once per step) of a data-parallel strategy (module docstring)."""
    gradients = parameters = BYTES_16 * model.parameters
    whole = BYTES_32 * model.parameters  # DDP and the like under autocast: fp32 parameters, fp32 gradients
    stage = extra.get("zero_stage", 0)
    if name == "fsdp" or stage == 3:
        overlap = cm.OVERLAP["fsdp" if name == "fsdp" else "deepspeed_zero3"]
        return [cm.Collective("all_gather", 2 * parameters, 2 * model.layers, overlap),
                cm.Collective("reduce_scatter", gradients, model.layers, overlap)], []
    if stage == 2:
        return [cm.Collective("reduce_scatter", gradients)], [cm.Collective("all_gather", parameters)]
    if stage == 1:
        return [], [cm.Collective("reduce_scatter", gradients), cm.Collective("all_gather", parameters)]
    if name == "dataparallel":  # every forward: the parameters copied out, the gradients summed back on GPU 0
        return [cm.Collective("broadcast", whole), cm.Collective("broadcast", whole)], []
    if name in ("ddp", "horovod"):
        capacity = cm.DDP_BUCKET_BYTES if name == "ddp" else cm.HOROVOD_FUSION_BYTES
        return [], [cm.Collective("all_reduce", whole, cm.buckets(whole, capacity), cm.OVERLAP[name])]
    return [], [cm.Collective("all_reduce", whole)]  # TensorFlow's strategies: after the whole backward


def _model_state(name: str, extra: dict[str, Any], parameters: float, ranks: int) -> float:
    """Model-state bytes per GPU (``sharded.formulas``; offload: what stays on the GPU)."""
    if name == "fsdp":
        return formulas.fsdp_model_state(parameters, ranks, precision="fp32").total
    if extra.get("offload"):
        return formulas.estimate(parameters, ranks, extra["zero_stage"], "bf16", offload=True).device
    return formulas.paper_model_state(parameters, ranks, extra.get("zero_stage", 0)).total


def _data_parallel(projection: Projection, name: str, extra: dict[str, Any]) -> Projection:
    model, cluster, n = projection.model, projection.cluster, projection.gpus
    per_gpu = model.global_batch / n
    if per_gpu < model.micro_batch:
        projection.note = f"{model.global_batch} samples per step cannot feed {n} GPUs"
        return projection
    accumulation = math.ceil(per_gpu / model.micro_batch)
    compute = _compute_seconds(model, cluster, per_gpu)
    per_micro, per_step = _data_parallel_plan(name, extra, model)
    link, micro_compute = cluster.link(n), compute / accumulation
    comm_micro, exposed_micro = cm.exposed_seconds(per_micro, n, link, micro_compute)
    comm_step, exposed_step = cm.exposed_seconds(per_step, n, link, micro_compute)
    other = 0.0
    if extra.get("offload"):  # 16-bit gradients to the host, parameters back; Adam on the CPU
        shard = model.parameters / n
        other = 2 * BYTES_16 * shard / cluster.host_bytes_per_s + shard / cluster.cpu_adam_per_s
    projection.terms = cm.StepTerms(compute, accumulation * comm_micro + comm_step,
                                    accumulation * exposed_micro + exposed_step, 0.0, other)
    projection.memory_bytes = _model_state(name, extra, model.parameters, n) + activation_bytes(model)
    return projection


def _pipeline(projection: Projection, schedule: str) -> Projection:
    model, cluster, p = projection.model, projection.cluster, projection.gpus
    if not model.transformer or p > model.layers:
        projection.note = f"{model.layers} layers cannot fill {p} stages" if model.transformer else \
            "the CNN's FLOPs are 96% in 2 convolutions: the course cuts it in 2 stages (bench all)"
        return projection
    micro_batches = model.global_batch // model.micro_batch
    counts = [round((s + 1) * model.layers / p) - round(s * model.layers / p) for s in range(p)]
    per_layer = _compute_seconds(model, cluster, model.micro_batch) / model.layers
    boundary = BYTES_16 * model.sequence * model.micro_batch * model.hidden
    send = cm.collective_seconds("send", boundary, 2, cluster.send)
    projection.terms = cm.pipeline_terms([count * per_layer for count in counts], micro_batches, send)
    held = micro_batches if schedule == "gpipe" else min(p, micro_batches)
    busiest = max(counts)
    projection.memory_bytes = (formulas.paper_model_state(model.parameters * busiest / model.layers, 1, 0).total
                               + activation_bytes(model, held, busiest))
    projection.extra["micro_batches_held"] = held
    return projection


def _tensor(projection: Projection, width: int) -> Projection:
    """Tensor parallelism over ``width`` GPUs (``width`` < GPUs: the data x tensor grid, DDP across the pairs)."""
    model, cluster, n = projection.model, projection.cluster, projection.gpus
    replicas = n // width
    per_replica = model.global_batch / replicas
    accumulation = max(1, math.ceil(per_replica / model.micro_batch))
    compute = _compute_seconds(model, cluster, per_replica, width)
    if model.transformer:  # per layer: 2 all-reduces of s·b·h values forward, 2 backward
        tensor_bytes = 4 * model.layers * BYTES_16 * model.sequence * model.micro_batch * model.hidden
        activations = [cm.Collective("all_reduce", tensor_bytes, 4 * model.layers)]
    else:  # the course's linear pair: the output forward, the input's gradient backward (fp32)
        activations = [cm.Collective("all_reduce", 4 * model.micro_batch * (1600 + 10), 2)]
    comm, exposed = cm.exposed_seconds(activations, width, cluster.link(width), compute / accumulation)
    comm, exposed = accumulation * comm, accumulation * exposed
    if replicas > 1:
        gradients = cm.Collective("all_reduce", BYTES_16 * model.parameters / width, 1, "backward")
        more, hidden = cm.exposed_seconds([gradients], replicas, cluster.link(n), compute / accumulation)
        comm, exposed = comm + more, exposed + hidden
    projection.terms = cm.StepTerms(compute, comm, exposed)
    projection.memory_bytes = (formulas.paper_model_state(model.parameters / width, 1, 0).total
                               + activation_bytes(model, tensor=width if model.transformer else 1))
    return projection


def project(model: Workload, cluster: Cluster, label: str, name: str, extra: dict[str, Any]) -> Projection:
    """One strategy (``label``: a ``variants`` label; ``name`` its registry entry) on ``cluster``."""
    gpus = 1 if name == "single" else cluster.gpus
    projection = Projection(model, cluster, label, gpus)
    kind = STRATEGIES[name].layout.kind
    if name in ONE_MACHINE and cluster.nodes > 1:
        projection.note = "one process drives every GPU: one machine only"
        return projection
    if kind == "pipeline":
        return _pipeline(projection, STRATEGIES[name].schedule)
    if kind == "tensor":
        return _tensor(projection, gpus)
    if kind == "data x tensor":
        return _tensor(projection, DATA_TENSOR_WIDTH)
    return _data_parallel(projection, name, extra)


def project_all(models: list[Workload] | None = None, clusters: list[Cluster] | None = None) -> list[Projection]:
    """Every strategy of ``variants`` for every model and cluster (all of ``dtutor.clusters`` by default)."""
    models = workloads() if models is None else models
    clusters = list(CLUSTERS.values()) if clusters is None else clusters
    return [project(model, cluster, *variant) for model in models for cluster in clusters for variant in variants()]


def _round(value: float | None, digits: int) -> float | None:
    return None if value is None else round(value, digits)


def table_projection(projections: list[Projection]) -> pd.DataFrame:
    """The projection table: per (model, cluster, strategy) step time, tokens/s, MFU, memory per GPU, whether
    it fits, and the terms; strategies that cannot run there are the notes."""
    from dtutor.tables import milliseconds, titled

    rows = []
    for item in projections:
        terms = item.terms.as_dict() if item.terms else {}
        rows.append({"model": item.model.name, "cluster": item.cluster.name, "strategy": item.strategy,
                     "GPUs": item.gpus, "step ms": milliseconds(terms.get("step_s"), 2),
                     "tokens/s": None if item.tokens_per_s is None else round(item.tokens_per_s),
                     "MFU %": _round(item.mfu and 100 * item.mfu, 1),
                     "GB/GPU": _round(item.memory_bytes and item.memory_bytes / 1e9, 1),
                     "fits": {None: None, True: "yes", False: "no"}[item.fits],
                     **{f"{name} ms": milliseconds(terms.get(f"{key}_s"), 2) for name, key in (
                         ("compute", "compute"), ("exposed comm", "exposed"), ("bubble", "bubble"),
                         ("offload", "other"))}})
    notes = [f"{item.model.name} on {item.cluster.name}, {item.strategy}: {item.note}"
             for item in projections if item.note]
    return titled(rows, "PROJECTION, not a measurement: the cost model with published peaks and link speeds "
                        "(sources: clusters.table_figures); MFU assumed while computing",
                  ["tokens/s: images/s for the CNN; GB/GPU: model state + activations of the micro-batches held, "
                   "against 80 GB", *_dedupe(notes)],
                  integers=["tokens/s"])



def _dedupe(notes: list[str]) -> list[str]:
    return list(dict.fromkeys(notes))


def ask(model: str, cluster: str, framework: str = "torch") -> pd.DataFrame:
    """"``model`` on ``cluster``, which strategy?": the guide's rules (``guide.recommend_strategy``) beside the
    projection's rows for that model and cluster, those that fit first, fastest first; the title gives both
    answers. ``model``: "CNN", "125M", "1.3B" or "7B"; ``cluster``: a name of ``dtutor.clusters.CLUSTERS``."""
    from dtutor.clusters import SHAPES, cnn, transformer
    from dtutor.guide import recommend_strategy

    if model not in (*SHAPES, "CNN") or cluster not in CLUSTERS:
        raise ValueError(f"model, cluster: must be one of {', '.join(['CNN', *SHAPES])} and one of "
                         f"{', '.join(CLUSTERS)}, got {model!r}, {cluster!r}")
    workload, machines = (cnn() if model == "CNN" else transformer(model)), CLUSTERS[cluster]
    ranked = sorted(project_all([workload], [machines]),
                    key=lambda item: (item.fits is not True, item.terms.step_s if item.terms else math.inf))
    choice = recommend_strategy(workload.parameters, machines.gpus_per_node, machines.nodes, framework,
                                machines.memory_bytes / 1e9)
    frame = table_projection(ranked)
    best = ranked[0]
    answer = (f"projected fastest that fits: {best.strategy}, {best.terms.step_s * 1e3:,.0f} ms per step, "
              f"{best.memory_bytes / 1e9:.1f} GB per GPU" if best.fits else "projected: nothing fits")
    fields = f" {choice.fields}" if choice.fields else ""
    frame.attrs["title"] = f"{model} on {cluster}: the guide's rules pick {choice.strategy}{fields}; {answer}. " \
                           f"{frame.attrs['title']}"
    return frame
