"""The one PyTorch training driver: every strategy, the course's models and data or your own.

``fit(config)`` does, the same way for every strategy: join (the strategy), check the batch arithmetic,
seed, load and shard the data, build the model and optimizer, wrap them (the strategy), resume from a
checkpoint, train the epochs (each optimizer step is the strategy's ``train_step``), keep the metrics on
the device (one all-reduce per epoch, no host sync per step), time each epoch by the slowest rank, log and
show progress on rank 0 (one bar for the run, ``dtutor.progress``), save checkpoints, evaluate on the test
split, and return one ``RunResult``.

Launch recipes (``train`` is the entry point; its arguments are ``TrainConfig`` fields)::

    # from Python or a notebook: validated here, then started with the strategy's own launcher
    dtutor.launch.train(2, strategy="ddp", global_batch=64, epochs=1)
    # one machine, 2 processes (--nproc-per-node=<number of GPUs> on a GPU machine)
    torchrun --standalone --nproc-per-node=2 -m dtutor.launch dtutor.pytorch.driver:train strategy=ddp
    # two machines: run on both; HOST = the address of the one started first (127.0.0.1: two terminals here)
    torchrun --nnodes=2 --nproc-per-node=2 --rdzv-backend=c10d --rdzv-endpoint=HOST:29400 --rdzv-id=job1 \\
        --rdzv-conf=join_timeout=120,read_timeout=30 \\
        -m dtutor.launch dtutor.pytorch.driver:train strategy=ddp backend=gloo global_batch=64    # CPUs
    torchrun --nnodes=2 --nproc-per-node=4 --rdzv-backend=c10d --rdzv-endpoint=HOST:29400 --rdzv-id=job1 \\
        --rdzv-conf=join_timeout=120,read_timeout=30 \\
        -m dtutor.launch dtutor.pytorch.driver:train strategy=ddp backend=nccl global_batch=256   # 4 GPUs each
    # Horovod
    horovodrun -np 2 --gloo -H localhost:2 python -m dtutor.launch dtutor.pytorch.driver:train strategy=horovod

Your own model, data and loss, in your own entry point (``mypkg/train.py``)::

    from dtutor import TrainConfig
    from dtutor.pytorch import fit

    def main(strategy: str = "ddp", epochs: int = 2) -> RunResult:
        config = TrainConfig(strategy=strategy, epochs=epochs, global_batch=64, samples=len(my_dataset))
        return fit(config, model=MyNet, train_data=my_dataset, test_data=my_test_set, loss_fn=my_loss)

    # torchrun --standalone --nproc-per-node=2 -m dtutor.launch mypkg.train:main strategy=ddp
"""

from __future__ import annotations

import math
import random
import time
from collections.abc import Callable, Iterable, Iterator
from typing import Any

import numpy as np
import torch
from torch import nn
from torch.utils.data import DataLoader, Dataset, DistributedSampler, Subset

from dtutor import data, models, strategies
from dtutor.config import ConfigError, TrainConfig, check_world
from dtutor.progress import Progress, progress
from dtutor.pytorch.strategy import CountCorrect, LossFn, Strategy, judged_by
from dtutor.result import EpochStats, RunResult, process_peak_memory

ModelSpec = nn.Module | Callable[[], nn.Module] | None
TEST_BATCH = 256


def seed_everything(seed: int) -> None:
    """Seed Python, NumPy and PyTorch (CPU and every GPU) so runs repeat exactly."""
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)


def course_optimizer(parameters: Iterable[torch.nn.Parameter], config: TrainConfig) -> torch.optim.Optimizer:
    """The config's optimizer: SGD with its learning rate and momentum, or Adam with its learning rate."""
    if config.optimizer == "adam":
        return torch.optim.Adam(parameters, lr=config.lr)
    return torch.optim.SGD(parameters, lr=config.lr, momentum=config.momentum)


def build_model(model: ModelSpec, config: TrainConfig) -> nn.Module:
    """``model`` if it is a module, else built right after seeding: the course's model by name by default."""
    if isinstance(model, nn.Module):
        return model
    return models.seeded(model or models.by_name(config.model), config.seed)


def fit(
    config: TrainConfig,
    *,
    model: ModelSpec = None,
    train_data: Dataset | None = None,
    test_data: Dataset | None = None,
    loss_fn: LossFn = nn.functional.cross_entropy,
    optimizer: Callable[[Iterable[torch.nn.Parameter], TrainConfig], Any] = course_optimizer,
    strategy: Strategy | None = None,
    count_correct: CountCorrect | None = None,
) -> RunResult:
    """Train under ``config`` (or ``strategy``, an instance) on this rank; return this rank's ``RunResult``.

    ``model``: a module, or a factory called after seeding (default: ``config.model``). ``train_data`` and
    ``test_data``: datasets of ``(input, target)`` pairs, or of dicts ``{"inputs": ..., "targets": ...}``
    (other keys are ignored; the driver moves both to the device); default: MNIST; with your own
    ``train_data`` and no ``test_data`` nothing is evaluated. ``loss_fn(outputs, targets)`` returns the
    batch's mean loss (any task: cross-entropy, MSE, ...).

    Accuracy comes from the task: ``count_correct(outputs, targets)`` returns how many of the batch's
    predictions are right (a tensor or a number), e.g. ``lambda out, y: ((out.squeeze(1) - y).abs() < 0.1).sum()``
    for a regression. By default (``class_correct``) outputs that are class scores (2-D, several columns) for
    integer targets are right where their largest score is the target's; any other task has no accuracy, and
    the result's ``accuracy`` and ``test_accuracy`` are None.
    """
    strategy = strategy or strategies.load(config.strategy)(config)
    strategy.join()
    try:
        with judged_by(count_correct):
            return _run(config, strategy, model, train_data, test_data, loss_fn, optimizer)
    finally:
        strategy.teardown()


def _run(config: TrainConfig, strategy: Strategy, model: ModelSpec, train_data: Dataset | None,
         test_data: Dataset | None, loss_fn: LossFn, optimizer_factory: Callable) -> RunResult:
    micro_batch = check_world(config, strategy.world_size, strategy.layout)
    seed_everything(config.seed)
    if train_data is None:
        train_data = data.torch_dataset(data.load_mnist("train", verbose=strategy.is_logger))
        test_data = _mnist_test(config)
    loader, sampler = _training_loader(config, strategy, train_data, micro_batch)
    net = build_model(model, config).to(strategy.device)
    wrapped, optimizer = strategy.wrap(net, optimizer_factory(net.parameters(), config))
    first_epoch = 0
    if config.checkpoint:
        resumed = strategy.load_checkpoint(config.checkpoint, wrapped, optimizer)
        if resumed is not None:
            first_epoch = resumed + 1
            _log(strategy, f"resumed from {config.checkpoint.rsplit('/', 1)[-1]} after epoch {resumed}")
    result = RunResult(strategy.rank, strategy.world_size, config.as_dict(),
                       details={"micro_batch": micro_batch, "device": str(strategy.device),
                                "steps_per_epoch": config.steps_per_epoch()})
    last_epoch = min(config.epochs, config.stop_after_epochs or config.epochs)
    total = max(0, last_epoch - first_epoch) * config.steps_per_epoch()
    with progress(total, config.strategy, show=strategy.is_logger) as bar:
        for epoch in range(first_epoch, last_epoch):
            sampler.set_epoch(epoch)  # a new shuffle each epoch, the same on every rank
            bar.update(0, label=f"{config.strategy}, epoch {epoch}")
            stats, step_losses = _train_epoch(config, strategy, wrapped, optimizer, loader, loss_fn, epoch, bar)
            result.epochs.append(stats)
            result.step_losses += step_losses
            bar.update(0, loss=round(stats.loss, 4), **_rounded(accuracy=stats.accuracy))
            _log(strategy, f"{stats.summary()} over {strategy.world_size} rank(s)", bar)
            if config.checkpoint:
                strategy.save_checkpoint(config.checkpoint, wrapped, optimizer, epoch)
    result.seconds = sum(e.seconds for e in result.epochs)
    if test_data is not None and len(test_data):
        result.test_loss, result.test_accuracy = _evaluate(strategy, wrapped, test_data, loss_fn)
        _log(strategy, f"test {_measured(result.test_loss, result.test_accuracy, len(test_data))}")
    result.peak_memory_bytes, result.peak_memory_kind = peak_memory(strategy.device)
    state = strategy.full_state_dict(wrapped)  # every rank takes part: gathering may be collective
    if config.return_parameters:
        result.parameters = {k: _numpy(v) for k, v in state.items()}
    return result


def _log(strategy: Strategy, text: str, bar: Progress | None = None) -> None:
    """Print ``text`` on the logging rank only (through the live bar, if any)."""
    if strategy.is_logger:
        (bar.write if bar is not None else print)(text)


def _rounded(**values: float | None) -> dict[str, float]:
    """The values that exist, rounded for the progress bar."""
    return {name: round(value, 3) for name, value in values.items() if value is not None}


def _measured(loss: float, accuracy: float | None, count: int) -> str:
    """``accuracy 0.912 on 512 images`` where the task has one, else ``loss 0.0123 on 32 samples``."""
    return f"loss {loss:.4f} on {count} samples" if accuracy is None else f"accuracy {accuracy:.3f} on {count} images"


def _mnist_test(config: TrainConfig) -> Dataset | None:
    if config.test_samples == 0:
        return None
    test = data.load_mnist("test", verbose=False)
    return Subset(data.torch_dataset(test), range(min(config.test_samples, len(test))))


def _training_loader(config: TrainConfig, strategy: Strategy, dataset: Dataset,
                     micro_batch: int) -> tuple[DataLoader, DistributedSampler]:
    """This rank's shard of the first ``used_samples`` samples, reshuffled each epoch the same way everywhere.

    ``DistributedSampler`` shuffles the indices with ``seed + epoch`` and gives rank r every N-th one from
    r, so one step of all N ranks sees exactly the samples one device would see with the global batch.
    """
    if len(dataset) < config.samples:
        raise ConfigError(f"samples: {config.samples} asked for, but the training data has {len(dataset)}")
    used = Subset(dataset, range(config.used_samples()))
    sampler = DistributedSampler(used, num_replicas=strategy.data_ranks, rank=strategy.data_rank, shuffle=True,
                                 seed=config.seed)
    return DataLoader(used, batch_size=micro_batch, sampler=sampler), sampler


def _groups(batches: Iterable, size: int) -> Iterator[list]:
    group: list = []
    for batch in batches:
        group.append(batch)
        if len(group) == size:
            yield group
            group = []


def _on(device: torch.device, batch: tuple[torch.Tensor, ...] | list | dict) -> tuple[torch.Tensor, torch.Tensor]:
    """``(inputs, targets)`` on ``device``, from a pair or from a dict's "inputs" and "targets"."""
    if isinstance(batch, dict):
        missing = [key for key in ("inputs", "targets") if key not in batch]
        if missing:
            raise ValueError(f"a dict batch needs the keys 'inputs' and 'targets'; missing {missing}, "
                             f"found {sorted(batch)}")
        batch = (batch["inputs"], batch["targets"])
    inputs, targets = batch
    return inputs.to(device, non_blocking=True), targets.to(device, non_blocking=True)


def _train_epoch(config: TrainConfig, strategy: Strategy, model: nn.Module, optimizer: Any, loader: DataLoader,
                 loss_fn: LossFn, epoch: int, bar: Progress) -> tuple[EpochStats, list[float]]:
    """One epoch; the metrics stay on the device until one all-reduce at the end (no host sync per step)."""
    model.train()
    rows = []  # per step: loss sum, correct, judged, count on this rank
    start = time.perf_counter()
    for group in _groups(loader, config.accumulation):
        micro_batches = [_on(strategy.device, batch) for batch in group]
        rows.append(strategy.train_step(model, optimizer, micro_batches, loss_fn).stacked())
        bar.update(1)
    if strategy.device.type == "cuda":
        torch.cuda.synchronize(strategy.device)
    seconds = time.perf_counter() - start
    table = strategy.reduce(torch.stack(rows)).cpu()  # summed over ranks: one all-reduce per epoch
    slowest = strategy.reduce(torch.tensor([seconds], dtype=torch.float64, device=strategy.device), "max")
    loss_sum, correct, judged, count = table.sum(0).tolist()
    stats = EpochStats(epoch, len(rows), int(count), loss_sum / count, _fraction(correct, judged), slowest.item())
    return stats, (table[:, 0] / table[:, 3]).tolist()


def _fraction(correct: float, judged: float) -> float | None:
    """The accuracy: None where no prediction was judged (a task without one)."""
    return correct / judged if judged else None


def _evaluate(strategy: Strategy, model: nn.Module, test_data: Dataset,
              loss_fn: LossFn) -> tuple[float, float | None]:
    """Mean loss and accuracy on ``test_data``, each data rank evaluating its interleaved share."""
    share = Subset(test_data, data.shard_indices(len(test_data), strategy.data_ranks, strategy.data_rank).tolist())
    # the same number of batches on every rank: a sharded model's forward is collective (ZeRO-3, FSDP)
    largest_share = math.ceil(len(test_data) / strategy.data_ranks)
    batches = math.ceil(largest_share / TEST_BATCH)
    model.eval()
    totals = torch.zeros(4, dtype=torch.float64, device=strategy.device)
    for batch in DataLoader(share, batch_size=max(1, math.ceil(len(share) / batches))):
        totals += strategy.eval_step(model, _on(strategy.device, batch), loss_fn).stacked()
    model.train()
    loss_sum, correct, judged, count = strategy.reduce(totals).tolist()
    return loss_sum / count, _fraction(correct, judged)


def peak_memory(device: torch.device) -> tuple[int, str]:
    """Peak memory of this rank: CUDA's max allocated on a GPU, else the process's peak resident set."""
    if device.type == "cuda":
        return torch.cuda.max_memory_allocated(device), "cuda max allocated"
    return process_peak_memory()


def _numpy(tensor: torch.Tensor) -> np.ndarray:
    tensor = tensor.detach().cpu()
    return (tensor.float() if tensor.dtype == torch.bfloat16 else tensor).numpy().copy()


def train(**fields: Any) -> RunResult:
    """Launcher entry point: ``TrainConfig`` fields as keyword arguments (recipes in the module docstring)."""
    return fit(TrainConfig.from_kwargs(**fields))
