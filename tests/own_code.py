"""A learner's own code, outside ``dtutor``: a model, a dataset and an entry point that uses the driver.

The tests call ``own_code:main`` (the learner's entry point) and launch ``own_code:every_strategy`` exactly as a
learner would launch ``mypkg.train:main``: it trains a regression and a classifier fed dict batches under every
strategy (torchrun's in one launch, Horovod's through horovodrun).
"""

import torch
from torch import nn
from torch.utils.data import Dataset, TensorDataset

from dtutor import TrainConfig, strategies
from dtutor.pytorch import fit
from dtutor.strategies import STRATEGIES


class TinyNet(nn.Module):
    """Two linear layers: not one of the course's models."""

    def __init__(self):
        super().__init__()
        self.layers = nn.Sequential(nn.Linear(8, 16), nn.Tanh(), nn.Linear(16, 3))

    def forward(self, inputs):
        return self.layers(inputs)


def blobs(count: int = 192) -> TensorDataset:
    """Three noisy clusters in 8 dimensions: a dataset that is not MNIST."""
    generator = torch.Generator().manual_seed(7)
    labels = torch.arange(count) % 3
    centres = torch.randn(3, 8, generator=generator) * 2
    return TensorDataset(centres[labels] + torch.randn(count, 8, generator=generator), labels)


def smoothed_loss(outputs, targets):
    """A loss that is not the default one."""
    return nn.functional.cross_entropy(outputs, targets, label_smoothing=0.1)


def main(strategy: str = "ddp", epochs: int = 2, backend: str = "auto"):
    """The learner's entry point: ``torchrun ... -m dtutor.launch own_code:main strategy=ddp``."""
    config = TrainConfig(strategy=strategy, epochs=epochs, global_batch=32, samples=192, lr=0.2, backend=backend)
    return fit(config, model=TinyNet, train_data=blobs(), test_data=blobs(60), loss_fn=smoothed_loss)


def own_strategy(backend: str = "auto"):
    """A learner's own strategy class under a new name: ``own_code:own_strategy`` on 2 ranks (one stage each).

    ``MyPipeline`` is not in the registry; it inherits the pipeline's layout (``PIPELINE``), so both stages
    read the whole batch, as ``pipeline_gpipe`` does.
    """
    from dtutor.pytorch.model_parallel.pipeline import PipelineGPipe

    class MyPipeline(PipelineGPipe):
        name = "my_pipeline"

    config = TrainConfig(strategy="pipeline_gpipe", micro_batches=2, global_batch=32, samples=128,
                         test_samples=64, backend=backend)
    return fit(config, strategy=MyPipeline(config))


def regressor() -> nn.Sequential:
    """A regression MLP (one output) that a pipeline can cut into 4 stages and tensor parallelism into 2 pairs."""
    return nn.Sequential(nn.Linear(8, 16), nn.Tanh(), nn.Linear(16, 16), nn.Tanh(), nn.Linear(16, 8), nn.Tanh(),
                         nn.Linear(8, 1))


def curve(count: int = 64, seed: int = 11) -> TensorDataset:
    """Float targets: a smooth function of 8 inputs, plus a little noise."""
    generator = torch.Generator().manual_seed(seed)
    inputs = torch.randn(count, 8, generator=generator)
    targets = torch.sin(inputs[:, :4].sum(1)) + 0.5 * inputs[:, 4] + 0.05 * torch.randn(count, generator=generator)
    return TensorDataset(inputs, targets)


def squared_error(outputs, targets):
    """MSE between the one output and the float target."""
    return nn.functional.mse_loss(outputs.squeeze(1), targets)


def classifier() -> nn.Sequential:
    """A classifier of the three blobs, as a ``Sequential`` every strategy can split (4 linear layers)."""
    return nn.Sequential(nn.Linear(8, 16), nn.Tanh(), nn.Linear(16, 16), nn.Tanh(), nn.Linear(16, 8), nn.Tanh(),
                         nn.Linear(8, 3))


class DictBlobs(Dataset):
    """The blobs as dict samples, as many datasets give them: ``{"inputs", "targets", "index"}``."""

    def __init__(self, count: int):
        self.pairs = blobs(count)

    def __len__(self) -> int:
        return len(self.pairs)

    def __getitem__(self, index: int) -> dict:
        inputs, targets = self.pairs[index]
        return {"inputs": inputs, "targets": targets, "index": index}


def tasks() -> dict:
    """Two tasks beyond image classes: a regression (MSE, float targets) and a classifier fed dict batches."""
    return {"regression": {"model": regressor, "train_data": curve(), "test_data": curve(32, seed=12),
                           "loss_fn": squared_error},
            "dict_batches": {"model": classifier, "train_data": DictBlobs(64), "test_data": DictBlobs(32)}}


def every_strategy(names, backend: str = "auto"):
    """Each task trained under each strategy in ``names``, in turn, in these same processes (one launch for
    all: the process group is joined here first, so each strategy leaves it in place);
    ``{"task/strategy": RunResult}``."""
    from dtutor.pytorch.process_group import join_process_group, leave_process_group

    distributed = any(STRATEGIES[name].launcher == "torchrun" for name in names)
    if distributed:
        join_process_group(backend)
    results = {}
    try:
        for name in names:
            config = TrainConfig(strategy=name, global_batch=16, samples=64, epochs=2, lr=0.1, backend=backend,
                                 micro_batches=4 if STRATEGIES[name].layout.splits("pipeline") else 1)
            for task, parts in tasks().items():
                results[f"{task}/{name}"] = fit(config, strategy=strategies.load(name)(config), **parts)
    finally:
        if distributed:
            leave_process_group()
    return results
