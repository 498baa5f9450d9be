"""One device, no communication: the reference every other strategy is proven equal to.

It changes nothing: the driver's defaults (``dtutor.pytorch.strategy.Strategy``) are single-device training.
The first GPU when there is one, else the CPU.

Launch recipe (one process; the same as calling the driver)::

    dtutor.launch.train(1, strategy="single", global_batch=64)
    python -m dtutor.launch dtutor.pytorch.driver:train strategy=single global_batch=64
"""

from __future__ import annotations

from dtutor.pytorch.strategy import Strategy


class SingleDevice(Strategy):
    """Plain training on one device."""

    name = "single"
