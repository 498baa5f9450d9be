"""PyTorch strategies and the one training driver (see ``dtutor.pytorch.strategy`` for the interface).

``fit``, ``train``, ``Strategy`` and ``StepTotals`` are imported from their modules (and torch with them) on
first use, so that this package's framework-free modules (``sharded.formulas``, ``sharded.widget``,
``sharded.deepspeed_config``) import without torch.
"""

from importlib import import_module
from typing import Any

HOMES = {"fit": "dtutor.pytorch.driver", "train": "dtutor.pytorch.driver",
         "StepTotals": "dtutor.pytorch.strategy", "Strategy": "dtutor.pytorch.strategy"}


def __getattr__(name: str) -> Any:
    """The driver's and the strategy interface's names, imported from their modules when first asked for."""
    if name not in HOMES:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    return getattr(import_module(HOMES[name]), name)


__all__ = ["StepTotals", "Strategy", "fit", "train"]
