"""What ``python -m dtutor.bench gpu`` runs inside its fresh processes: the device's facts, the in-process training
runs, and the models' time per step in fp32 and under bf16 autocast with their FLOPs and MFU.

MFU (model FLOPs utilization) = FLOPs of one training step / its measured time / the device's peak. The FLOPs are
counted, not estimated: ``torch.utils.flop_counter.FlopCounterMode`` adds up every matmul, convolution and
attention of one forward and backward (a causal mask's skipped half counts, as in most MFU figures; the optimizer's
element-wise work does not; on a CPU, attention's fused kernel has no FLOP formula and counts 0). The peak is the
device's dense bf16 tensor rate from ``PEAKS``, NVIDIA's datasheets (which print the 2:4-sparse rate, twice the
dense one: the dense one is used here).
Nothing here starts a process; every function runs on the CPU too (the tests call them on tiny sizes).
"""

from __future__ import annotations

import contextlib
import importlib.metadata
import platform
import re
import statistics
import time
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from dtutor.result import RunResult

# (pattern of torch.cuda.get_device_name, the GPU, dense bf16 TFLOP/s, source); the first match wins
PEAKS = [
    (r"H200 NVL", "H200 NVL", 835.0, "https://www.nvidia.com/en-us/data-center/h200/ (1,671 sparse)"),
    (r"GH200", "GH200", 989.4, "https://www.nvidia.com/en-us/data-center/grace-hopper-superchip/ (1,979 sparse)"),
    (r"H200", "H200 SXM", 989.4, "https://www.nvidia.com/en-us/data-center/h200/ (1,979 sparse)"),
    (r"H100 PCIe", "H100 PCIe", 756.0, "https://www.nvidia.com/en-us/data-center/h100/ (1,513 sparse)"),
    (r"H100 NVL", "H100 NVL", 835.0, "https://www.nvidia.com/en-us/data-center/h100/ (1,671 sparse)"),
    (r"H100", "H100 SXM", 989.4, "https://www.nvidia.com/en-us/data-center/h100/ (1,979 sparse)"),
    (r"A100", "A100", 312.0, "https://www.nvidia.com/en-us/data-center/a100/ (624 sparse)"),
    (r"L40S", "L40S", 362.0, "https://www.nvidia.com/en-us/data-center/l40s/ (733 sparse)"),
    (r"\bL4\b", "L4", 121.0, "https://www.nvidia.com/en-us/data-center/l4/ (242 sparse)"),
    (r"\bA10\b", "A10", 125.0, "https://www.nvidia.com/en-us/data-center/products/a10-gpu/ (250 sparse)"),
]
# the models of the MFU measurement: the course's CNN on MNIST-sized images, and the course's GPT-like transformer
# (activation_memory.TinyTransformer, its attention written out, no dropout) at a GPU's size
MODEL_SIZES: dict[str, dict[str, int]] = {
    "cnn": {"batch": 256},
    "transformer": {"batch": 16, "sequence": 512, "width": 1024, "layers": 8, "heads": 16, "vocab": 32000},
}
WARMUP_STEPS = 3  # untimed steps first (kernel choice, allocator, autocast's caches)


def peak_for(device_name: str | None) -> dict[str, Any] | None:
    """The dense bf16 peak of the GPU called ``device_name`` ({"gpu", "bf16_tflops", "source"}), None if unknown."""
    for pattern, gpu, tflops, source in PEAKS:
        if device_name and re.search(pattern, device_name):
            return {"gpu": gpu, "bf16_tflops": tflops, "source": source}
    return None


def _version(package: str) -> str | None:
    with contextlib.suppress(importlib.metadata.PackageNotFoundError):
        return importlib.metadata.version(package)
    return None


def device_facts() -> dict[str, Any]:
    """Entry point (a fresh process): every GPU's name, memory and capability, and the versions of the driver,
    CUDA, cuDNN, NCCL, torch, DeepSpeed and Python; on a machine without CUDA, the versions and no GPU."""
    import torch

    from dtutor.devices import inventory

    found = inventory(include_tf=False, include_deepspeed=False)
    cuda = torch.cuda.is_available()
    gpus = [{"index": i, "name": torch.cuda.get_device_name(i),
             "memory_bytes": torch.cuda.get_device_properties(i).total_memory,
             "capability": ".".join(map(str, torch.cuda.get_device_capability(i)))}
            for i in range(torch.cuda.device_count())] if cuda else []
    nccl = torch.cuda.nccl.version() if cuda else None  # (2, 27, 5); an int in older torch
    nccl = ".".join(map(str, nccl)) if isinstance(nccl, tuple) else nccl
    versions = {"driver": next((gpu.driver for gpu in found.gpus if gpu.driver), None), "cuda": torch.version.cuda,
                "cudnn": torch.backends.cudnn.version() if cuda else None, "nccl": nccl, "torch": torch.__version__,
                "deepspeed": _version("deepspeed"), "python": platform.python_version()}
    name = gpus[0]["name"] if gpus else None
    return {"gpus": gpus, "versions": versions, "peak": peak_for(name), "cpu_cores": found.cpu_cores}


def summarize(result: RunResult) -> dict[str, Any]:
    """One training run as a row: its strategy, fields, ranks, speed after the warm-up epoch, peak memory, loss."""
    per_second = result.samples_per_second()
    batch = result.config.get("global_batch") or 0
    return {"strategy": result.strategy, "fields": result.config, "ranks": result.world_size,
            "samples_per_s": per_second, "step_s": batch / per_second if per_second else None,
            "seconds": result.seconds, "peak_memory_bytes": result.peak_memory_bytes,
            "peak_memory_kind": result.peak_memory_kind, "final_loss": result.step_losses[-1] if result.step_losses
            else None, "details": {k: v for k, v in result.details.items() if isinstance(v, int | float | str)}}


def train_in_process(runs: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Entry point (a fresh process): the PyTorch driver trains each run (``TrainConfig`` fields: the in-process
    strategies, single and DataParallel) in turn; one ``summarize`` row per run."""
    from dtutor.pytorch.driver import train

    return [summarize(train(**fields)) for fields in runs]


def _model_and_batch(name: str, sizes: dict[str, int], device: Any) -> tuple[Any, Any, Any]:
    """The model ``name`` on ``device``, one batch of inputs and targets (seeded), for a training step."""
    import torch

    from dtutor.models import mnist_cnn
    from dtutor.pytorch.activation_memory import TinyTransformer

    torch.manual_seed(0)
    if name == "cnn":
        inputs = torch.randn(sizes["batch"], 1, 28, 28)
        return mnist_cnn().to(device), inputs.to(device), torch.randint(0, 10, (sizes["batch"],)).to(device)
    shape = {k: sizes[k] for k in ("vocab", "width", "layers", "heads", "sequence")}
    tokens = torch.randint(0, sizes["vocab"], (sizes["batch"], sizes["sequence"] + 1))
    model = TinyTransformer(vocab=shape["vocab"], seq=shape["sequence"], hidden=shape["width"], heads=shape["heads"],
                            layers=shape["layers"], dropout=0.0)
    return model.to(device), tokens[:, :-1].to(device), tokens[:, 1:].to(device)


def measure_model(name: str, precision: str, sizes: dict[str, int], device: str = "cuda",
                  seconds: float = 2.0) -> dict[str, Any]:
    """Train ``name`` with AdamW in ``precision`` ("fp32", or "bf16": ``torch.autocast``) on ``device``: the FLOPs
    of one step (counted), the median time per step over about ``seconds`` after ``WARMUP_STEPS``, the losses."""
    import torch
    from torch.utils.flop_counter import FlopCounterMode

    target = torch.device(device)
    model, inputs, targets = _model_and_batch(name, sizes, target)
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-4)
    autocast = torch.autocast(target.type, dtype=torch.bfloat16, enabled=precision == "bf16")

    def step() -> Any:
        optimizer.zero_grad(set_to_none=True)
        with autocast:
            logits = model(inputs)
            loss = torch.nn.functional.cross_entropy(logits.flatten(0, -2).float(), targets.flatten())
        loss.backward()
        optimizer.step()
        return loss

    def synchronize() -> None:
        if target.type == "cuda":
            torch.cuda.synchronize(target)

    with FlopCounterMode(display=False) as counter:
        losses = [step().item()]
    for _ in range(WARMUP_STEPS - 1):
        losses.append(step().item())
    times, started = [], time.perf_counter()
    while len(times) < 3 or (time.perf_counter() - started < seconds and len(times) < 1000):
        synchronize()
        begin = time.perf_counter()
        loss = step()
        synchronize()
        times.append(time.perf_counter() - begin)
        losses.append(loss.item())
    parameters = sum(p.numel() for p in model.parameters())
    tokens = inputs.numel() if name == "transformer" else None
    return {"model": name, "precision": precision, "sizes": sizes, "parameters": parameters,
            "flops_per_step": counter.get_total_flops(), "six_n_tokens": 6 * parameters * tokens if tokens else None,
            "step_s": statistics.median(times), "steps_timed": len(times), "losses": losses}


def measure_models(models: list[str], precisions: list[str], seconds: float = 2.0, device: str = "cuda",
                   sizes: dict[str, dict[str, int]] | None = None) -> dict[str, Any]:
    """Entry point (a fresh process): ``measure_model`` for each model and precision, each bf16 row with its MFU
    against the device's dense bf16 peak (None on an unknown GPU or a CPU); fp32 and TF32 settings recorded."""
    import torch

    name = torch.cuda.get_device_name(0) if device == "cuda" else None
    peak = peak_for(name)
    rows = []
    for model in models:
        for precision in precisions:
            row = measure_model(model, precision, (sizes or MODEL_SIZES)[model], device, seconds)
            row["tflops"] = row["flops_per_step"] / row["step_s"] / 1e12
            row["mfu"] = row["tflops"] / peak["bf16_tflops"] if peak and precision == "bf16" else None
            rows.append(row)
    return {"rows": rows, "peak": peak, "tf32_matmul": torch.backends.cuda.matmul.allow_tf32,
            "tf32_cudnn": torch.backends.cudnn.allow_tf32}
