"""PyTorch strategies and the one training driver (see ``dtutor.pytorch.strategy`` for the interface)."""

from dtutor.pytorch.driver import fit, train
from dtutor.pytorch.strategy import StepTotals, Strategy

__all__ = ["StepTotals", "Strategy", "fit", "train"]
