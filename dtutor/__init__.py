"""dtutor: the tested implementations behind the distributed-training course notebooks.

The shape of the package (every notebook cell calls one of these):

- ``dtutor.config``: ``TrainConfig``, one validated configuration for every strategy;
- ``dtutor.strategies``: the registry of every strategy, its framework and launcher;
- ``dtutor.pytorch``: the PyTorch driver (``fit``) and one short file per strategy;
- ``dtutor.tf``: the Keras driver and TensorFlow's strategies;
- ``dtutor.launch``: every multi-process launch (torchrun, horovodrun, TF workers) and its supervisor;
- ``dtutor.result``: ``RunResult``, what every rank of every run returns, and ``max_difference``;
- ``dtutor.progress``: one live progress bar per run, relayed from a launched rank 0;
- ``dtutor.plots`` (learning curves), ``dtutor.exercises`` (the notebooks' exercise checks);
- ``dtutor.data``, ``dtutor.models``, ``dtutor.devices``, ``dtutor.bench``, ``dtutor.guide``, ``dtutor.notebook``.

Importing ``dtutor`` imports neither torch nor TensorFlow.
"""

from dtutor.config import ConfigError, TrainConfig, learning_setup
from dtutor.result import EpochStats, RunResult, max_difference

__version__ = "0.1.0"
__all__ = ["ConfigError", "EpochStats", "RunResult", "TrainConfig", "learning_setup", "max_difference"]
