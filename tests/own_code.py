"""A learner's own code, outside ``dtutor``: a model, a dataset and an entry point that uses the driver.

The tests launch ``own_code:main`` on 2 ranks exactly as a learner would launch ``mypkg.train:main``.
"""

import torch
from torch import nn
from torch.utils.data import TensorDataset

from dtutor import TrainConfig
from dtutor.pytorch import fit


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
