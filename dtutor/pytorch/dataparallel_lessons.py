"""Inside ``nn.DataParallel`` (notebook 01): its four phases by hand, its equivalence, its memory imbalance.

Each forward of ``nn.DataParallel(model)`` on N GPUs:
1. **scatter** the batch along dimension 0 into N chunks, one per GPU;
2. **replicate** the module from the first GPU onto all N (every step: the weights are copied again);
3. **parallel_apply**: run the N replicas in N Python threads;
4. **gather** the N outputs onto the first GPU, where the loss is computed.
``backward`` runs the same path in reverse and sums the replicas' gradients onto the first GPU, where the
optimizer updates the one real copy of the weights. So the first GPU holds the whole batch's outputs,
the loss, every gradient and the optimizer state on top of its share of the work: its memory peaks
higher than the others', and a single process with Python threads feeds all GPUs. That is why PyTorch
recommends DistributedDataParallel (notebook 02) even on one machine.

Training under DataParallel is the ``dataparallel`` strategy (``dtutor.pytorch.dataparallel``).
"""

from __future__ import annotations

import torch
from torch import nn
from torch.nn.parallel import gather, parallel_apply, replicate, scatter

from dtutor import models
from dtutor.config import TrainConfig
from dtutor.pytorch.dataparallel import gpu_ids
from dtutor.pytorch.strategy import Strategy


def wrap(model: nn.Module, device_ids: list[int] | None = None) -> nn.DataParallel:
    """``nn.DataParallel(model)`` with the model first moved to the first GPU, as DataParallel requires."""
    ids = gpu_ids() if device_ids is None else device_ids
    if ids:
        model = model.to(f"cuda:{ids[0]}")
    return nn.DataParallel(model, device_ids=ids or None)


def describe(wrapped: nn.DataParallel) -> str:
    """One line saying what this DataParallel will do each step."""
    if not wrapped.device_ids:
        return "no GPUs: DataParallel calls the wrapped module directly (nothing is scattered or replicated)"
    if len(wrapped.device_ids) == 1:
        return f"one GPU (cuda:{wrapped.device_ids[0]}): DataParallel calls the module directly on it"
    return (f"{len(wrapped.device_ids)} GPUs {wrapped.device_ids}: scatter the batch, replicate the module, "
            f"run replicas in threads, gather outputs on cuda:{wrapped.output_device}")


def compare_with_plain_module(batch_size: int = 32, seed: int = 0,
                              device_ids: list[int] | None = None) -> dict[str, float]:
    """Outputs and gradients of DataParallel(model) against the same model called plainly; max abs differences."""
    plain = models.seeded(models.mnist_cnn, seed)
    wrapped = wrap(models.seeded(models.mnist_cnn, seed), device_ids)
    device = f"cuda:{wrapped.device_ids[0]}" if wrapped.device_ids else "cpu"
    plain = plain.to(device)
    generator = torch.Generator().manual_seed(seed)
    inputs = torch.randn(batch_size, 1, 28, 28, generator=generator).to(device)
    targets = torch.randint(0, 10, (batch_size,), generator=generator).to(device)
    differences = {}
    outputs = []
    for model in (plain, wrapped):
        out = model(inputs)
        nn.functional.cross_entropy(out, targets).backward()
        outputs.append(out.detach())
    differences["outputs"] = (outputs[0] - outputs[1]).abs().max().item()
    differences["gradients"] = max((p.grad - q.grad).abs().max().item()
                                   for p, q in zip(plain.parameters(), wrapped.module.parameters(), strict=True))
    return differences


def one_step_by_hand(model: nn.Module, inputs: torch.Tensor, device_ids: list[int]) -> tuple[torch.Tensor, list[str]]:
    """DataParallel's forward spelled out with the functions it uses; returns the output and a log of each phase."""
    if len(device_ids) < 2:
        raise ValueError(f"the four phases need at least 2 GPUs, got device_ids={device_ids}")
    model = model.to(f"cuda:{device_ids[0]}")
    log = []
    chunks = scatter(inputs, device_ids)
    log.append("scatter:   " + ", ".join(f"{tuple(c.shape)} on {c.device}" for c in chunks))
    replicas = replicate(model, device_ids[: len(chunks)])
    log.append(f"replicate: {len(replicas)} copies of {models.count_parameters(model):,} parameters")
    outputs = parallel_apply(replicas, [(c,) for c in chunks])
    log.append("apply:     " + ", ".join(f"{tuple(o.shape)} on {o.device}" for o in outputs))
    merged = gather(outputs, device_ids[0])
    log.append(f"gather:    {tuple(merged.shape)} on {merged.device}")
    return merged, log


def peak_memory_per_gpu(width: int = 4096, depth: int = 8, batch_size: int = 2048, steps: int = 3,
                        device_ids: list[int] | None = None) -> list[int]:
    """Train a wide MLP under DataParallel for a few steps; return ``torch.cuda.max_memory_allocated`` per GPU."""
    ids = gpu_ids() if device_ids is None else device_ids
    if not ids:
        raise RuntimeError("peak GPU memory needs CUDA GPUs; this machine has none")
    for i in ids:
        torch.cuda.reset_peak_memory_stats(i)
    model = wrap(models.seeded(models.wide_mlp, 0, width=width, depth=depth), ids)
    optimizer = torch.optim.Adam(model.parameters())
    generator = torch.Generator().manual_seed(0)
    batches = [(torch.randn(batch_size, 784, generator=generator), torch.randint(0, 10, (batch_size,)))
               for _ in range(steps)]
    step = Strategy(TrainConfig(strategy="dataparallel")).train_step  # forward, backward, optimizer step
    for inputs, targets in batches:
        step(model, optimizer, [(inputs.to(f"cuda:{ids[0]}"), targets.to(f"cuda:{ids[0]}"))],
             nn.functional.cross_entropy)
    for i in ids:
        torch.cuda.synchronize(i)
    peaks = [torch.cuda.max_memory_allocated(i) for i in ids]
    del model, optimizer
    torch.cuda.empty_cache()
    return peaks


def plot_peak_memory(peaks: list[int], title: str = "DataParallel: peak memory per GPU"):
    """Bar chart of peak memory per GPU (GiB), the first GPU's excess over the others' mean marked."""
    import matplotlib.pyplot as plt

    gib = [p / 2**30 for p in peaks]
    figure, axes = plt.subplots(figsize=(1.2 * len(gib) + 3, 3))
    bars = axes.bar([f"cuda:{i}" for i in range(len(gib))], gib, color=["tab:red"] + ["tab:blue"] * (len(gib) - 1))
    if len(gib) > 1:
        others = sum(gib[1:]) / (len(gib) - 1)
        axes.axhline(others, color="gray", linestyle="--", linewidth=1)
        axes.bar_label(bars, labels=[f"+{gib[0] - others:.2f} GiB"] + [""] * (len(gib) - 1))
    axes.set_ylabel("peak allocated (GiB)")
    axes.set_title(title)
    figure.tight_layout()
    return figure
