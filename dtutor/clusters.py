"""The hardware and the models ``dtutor.projection`` projects onto: published figures, each with its source.

Clusters: one node of 8 H100 SXM joined by NVLink/NVSwitch, 2 and 4 such nodes over InfiniBand NDR, and a
workstation of 4 H100 PCIe cards. A link is an α-β ``cost_model.Link``: β is the bus bandwidth nccl-tests
reports for a large all-reduce (an achievable figure, not the line rate), α a per-hop latency (an assumption:
it matters only for small messages). Models: the course CNN (its FLOPs counted by ``cost_model.stage_flops``)
and transformers of 125M, 1.3B and 7B parameters with published shapes, trained on ``6·N`` FLOPs per token.

Every figure that is not a published one says "assumption". Nothing here is measured on this machine.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING

from dtutor.bench.cost_model import Link
from dtutor.bench.gpu_parts import peak_for

if TYPE_CHECKING:
    import pandas as pd

GB = 1e9
H100_PAGE = "NVIDIA H100 datasheet, nvidia.com/en-us/data-center/h100"
NCCL_SINGLE_NODE = "nccl-tests, docs.alayanew.com/en/docs/tech-blog/2026-05-06-nccl-tests"
NCCL_MULTI_NODE = "nccl-tests, saturncloud.io/blog/crusoe-nccl-cluster-validation"
DGX_GUIDE = "DGX H100 user guide, docs.nvidia.com/dgx/dgxh100-user-guide"
LATENCY = "assumption: a small all-reduce takes 2(n-1) x α, tens of µs as in nccl-tests"
HOST = "assumption: DDR5-4800, 8 channels/socket, half achieved; Adam: 28 B/parameter"
ADAM_BYTES_PER_PARAMETER = 28  # a CPU Adam step reads fp32 weight, gradient, m, v and writes weight, m, v: 7 x 4


@dataclass(frozen=True)
class Cluster:
    """GPUs and links: ``intra`` for collectives inside a node, ``inter`` for those spanning nodes (None: one
    node), ``send`` for one point-to-point hop between pipeline stages (the slowest hop), ``host_bytes_per_s``
    between a GPU and host memory, ``cpu_adam_per_s`` parameters per second a GPU's share of the CPUs steps."""

    name: str
    nodes: int
    gpus_per_node: int
    peak_flops: float  # dense BF16, per GPU
    memory_bytes: float
    intra: Link
    inter: Link | None
    send: Link
    host_bytes_per_s: float
    cpu_adam_per_s: float
    sources: tuple[tuple[str, str, str], ...]  # (figure, value, source)

    @property
    def gpus(self) -> int:
        """GPUs in the whole cluster."""
        return self.nodes * self.gpus_per_node

    def link(self, ranks: int) -> Link:
        """The link a collective over ``ranks`` consecutive GPUs runs on: inside a node, or across nodes."""
        return self.intra if ranks <= self.gpus_per_node or self.inter is None else self.inter


def _cpu_adam_per_s(sockets: int, gpus: int) -> float:
    host_memory = sockets * 8 * 38.4 * GB * 0.5  # bytes/s
    return host_memory / gpus / ADAM_BYTES_PER_PARAMETER


SXM_PEAK, PCIE_PEAK = peak_for("H100 SXM"), peak_for("H100 PCIe")  # dense BF16, with their sources


def _sxm(nodes: int) -> Cluster:
    nvlink = Link(1e-6, 460 * GB, NCCL_SINGLE_NODE)
    infiniband = Link(1e-6, 400 * GB, NCCL_MULTI_NODE) if nodes > 1 else None
    send = Link(1e-6, 50 * GB, DGX_GUIDE) if nodes > 1 else Link(1e-6, 450 * GB, H100_PAGE)
    sources = [("peak BF16 dense per GPU", f"{SXM_PEAK['bf16_tflops']:g} TFLOP/s", SXM_PEAK["source"]),
               ("memory per GPU", "80 GB", H100_PAGE),
               ("all-reduce busbw, NVLink, 8 GPUs", "460 GB/s (460-480)", NCCL_SINGLE_NODE)]
    if nodes > 1:
        sources += [("all-reduce busbw, NVLink + IB NDR", "400 GB/s (400-450)", NCCL_MULTI_NODE),
                    ("send between nodes: 1 NDR port", "50 GB/s (400 Gb/s)", DGX_GUIDE)]
    else:
        sources.append(("send, NVLink one way", "450 GB/s (900 both)", H100_PAGE))
    sources += [("latency α per hop", "1 µs", LATENCY),
                ("host link (offload), PCIe 5 x16", "64 GB/s one way", H100_PAGE),
                ("CPU Adam per GPU, 2 sockets/8 GPUs", f"{_cpu_adam_per_s(2, 8) / 1e9:.2f} G param/s", HOST)]
    name = "8x H100 SXM" if nodes == 1 else f"{nodes}x8 H100 SXM, IB"
    return Cluster(name, nodes, 8, SXM_PEAK["bf16_tflops"] * 1e12, 80 * GB, nvlink, infiniband, send, 64 * GB,
                   _cpu_adam_per_s(2, 8), tuple(sources))


def _workstation() -> Cluster:
    pcie = Link(2e-6, 35 * GB, NCCL_SINGLE_NODE)
    sources = (("peak BF16 dense (PCIe card)", f"{PCIE_PEAK['bf16_tflops']:g} TFLOP/s", PCIE_PEAK["source"]),
               ("memory per GPU", "80 GB", H100_PAGE),
               ("all-reduce busbw, PCIe, no NVLink", "35 GB/s (35-45)", NCCL_SINGLE_NODE),
               ("latency α per hop", "2 µs", LATENCY),
               ("host link (offload), PCIe 5 x16", "64 GB/s one way", H100_PAGE),
               ("CPU Adam per GPU, 1 socket/4 GPUs", f"{_cpu_adam_per_s(1, 4) / 1e9:.2f} G param/s", HOST))
    return Cluster("4x H100 PCIe", 1, 4, PCIE_PEAK["bf16_tflops"] * 1e12, 80 * GB, pcie, None, pcie, 64 * GB,
                   _cpu_adam_per_s(1, 4), sources)


CLUSTERS = {cluster.name: cluster for cluster in (_sxm(1), _sxm(2), _sxm(4), _workstation())}


@dataclass(frozen=True)
class Workload:
    """A model and its batch: ``parameters`` N; ``layers``, ``hidden``, ``heads`` (a transformer's shape);
    ``sequence`` tokens per sample (1 for an image); ``global_batch`` samples per optimizer step, ``micro_batch``
    per GPU and forward; ``flops_per_sample`` of training; ``mfu`` the share of peak its compute reaches
    (an assumption); ``tensor_share`` the share of its FLOPs tensor parallelism splits."""

    name: str
    parameters: float
    layers: int
    hidden: int
    heads: int
    sequence: int
    global_batch: int
    micro_batch: int
    flops_per_sample: float
    mfu: float
    source: str
    tensor_share: float = 1.0
    transformer: bool = True

    @property
    def tokens_per_step(self) -> int:
        """Tokens (images for the CNN) per optimizer step."""
        return self.global_batch * self.sequence


SEQUENCE, GLOBAL_BATCH = 2048, 256  # 256 sequences of 2,048 tokens: 524,288 tokens per step (GPT-3 Small's 0.5M)
TRANSFORMER_MFU = 0.40  # assumption: share of dense BF16 peak a well-tuned dense transformer reaches on H100
CNN_MFU = 0.05  # assumption: small convolutions at 256 images per GPU leave an H100 mostly idle
SHAPES = {  # N, layers, hidden, heads, where the shape is published
    "125M": (125e6, 12, 768, 12, "GPT-3 Small, Brown et al. 2020, Table 2.1"),
    "1.3B": (1.3e9, 24, 2048, 24, "GPT-3 XL, Brown et al. 2020, Table 2.1"),
    "7B": (7e9, 32, 4096, 32, "LLaMA 7B, Touvron et al. 2023, Table 2"),
}


def transformer(name: str) -> Workload:
    """A transformer of ``SHAPES``: 6·N FLOPs per token (2N forward, 4N backward; attention's own FLOPs left out)."""
    parameters, layers, hidden, heads, source = SHAPES[name]
    return Workload(name, parameters, layers, hidden, heads, SEQUENCE, GLOBAL_BATCH, 1, 6 * parameters * SEQUENCE,
                    TRANSFORMER_MFU, source)


def cnn() -> Workload:
    """The course CNN: FLOPs per image counted (``cost_model.stage_flops``, imports torch); 8,192 images per step,
    256 per GPU and forward; tensor parallelism splits only its linear pair (the course's ``tensor_parallel``)."""
    from dtutor.bench.cost_model import stage_flops
    from dtutor.models import MNIST_CNN_PARAMETERS

    convolutions, linears = stage_flops("cnn", 2, 1)
    return Workload("CNN", MNIST_CNN_PARAMETERS, 4, 64, 1, 1, 8192, 256, convolutions + linears, CNN_MFU,
                    "the course's MNIST CNN, FLOPs counted", tensor_share=linears / (convolutions + linears),
                    transformer=False)


def workloads() -> list[Workload]:
    """The course CNN and the three transformers."""
    return [cnn(), *(transformer(name) for name in SHAPES)]


def _which(names: list[str], everywhere: list[str]) -> str:
    """The clusters a figure is for, in few words: all, every SXM cluster, several nodes, or their names."""
    if names == everywhere:
        return "all"
    sxm = [name for name in everywhere if "SXM" in name]
    if names == sxm:
        return "SXM clusters"
    return "2 and 4 nodes" if names == [name for name in sxm if "IB" in name] else ", ".join(names)


def table_figures(clusters: list[Cluster] | None = None) -> pd.DataFrame:
    """Every figure the projection rests on, its value and its source (URL or title): per cluster, then the
    models' shapes and the assumed MFU."""
    from dtutor.tables import titled

    found: dict[tuple[str, str, str], list[str]] = {}
    for cluster in clusters or CLUSTERS.values():
        for figure in cluster.sources:
            found.setdefault(figure, []).append(cluster.name)
    everywhere = [cluster.name for cluster in clusters or CLUSTERS.values()]
    rows = [{"for": _which(names, everywhere), "figure": figure, "value": value, "source": source}
            for (figure, value, source), names in found.items()]
    rows += [{"for": name, "figure": "shape (N, layers, hidden, heads)", "value":
              f"{n / 1e9:g}B, {layers}, {hidden}, {heads}", "source": source}
             for name, (n, layers, hidden, heads, source) in SHAPES.items()]
    rows += [{"for": "transformers", "figure": "MFU while computing", "value": f"{TRANSFORMER_MFU:.0%}",
              "source": "assumption: a well-tuned dense transformer on H100"},
             {"for": "CNN", "figure": "MFU while computing", "value": f"{CNN_MFU:.0%}",
              "source": "assumption: small convolutions (python -m dtutor.bench gpu measures it)"}]
    return titled(rows, "Where the projection's figures come from")
