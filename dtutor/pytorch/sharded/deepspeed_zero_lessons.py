"""Small launched experiments notebook 06 runs to explain what DeepSpeed does (entry points for ``dtutor.launch``).

``adam_step_counts``: why bf16 at ZeRO stage 0 ends one Adam step ahead of DDP.

    dtutor.launch.run("dtutor.pytorch.sharded.deepspeed_zero_lessons:adam_step_counts", 2, precision="bf16",
                      zero_stage=0)
"""

from __future__ import annotations

from typing import Any

import torch
from torch import nn

from dtutor.config import TrainConfig
from dtutor.pytorch.sharded.deepspeed_zero import DeepSpeedZeRO


def _adam_steps(optimizer: Any) -> list[int]:
    inner = getattr(optimizer, "optimizer", optimizer)  # DeepSpeed's wrapper holds the torch optimizer
    return sorted({int(state["step"]) for state in inner.state.values() if "step" in state})


def adam_step_counts(precision: str = "bf16", zero_stage: int = 0, steps: int = 3,
                     backend: str = "auto") -> dict[str, Any]:
    """Adam's step count right after ``deepspeed.initialize`` and after ``steps`` training steps.

    A small linear model on random data, ``global_batch`` 8; returns the wrapper DeepSpeed chose and the
    counts (an empty list: Adam has no state yet).
    """
    config = TrainConfig(strategy="deepspeed", zero_stage=zero_stage, precision=precision, optimizer="adam",
                         global_batch=8, samples=8, lr=1e-3, backend=backend)
    strategy = DeepSpeedZeRO(config)
    strategy.join()
    try:
        torch.manual_seed(0)
        model = nn.Sequential(nn.Linear(20, 32), nn.ReLU(), nn.Linear(32, 10))
        engine, optimizer = strategy.wrap(model, torch.optim.Adam(model.parameters(), lr=config.lr))
        after_init = _adam_steps(optimizer)
        for _ in range(steps):
            batch = [(torch.randn(8 // strategy.world_size, 20), torch.randint(0, 10, (8 // strategy.world_size,)))]
            strategy.train_step(engine, optimizer, batch, nn.functional.cross_entropy)
        return {"wrapper": type(optimizer).__name__, "after_initialize": after_init,
                f"after_{steps}_steps": _adam_steps(optimizer), "engine_steps": engine.global_steps}
    finally:
        strategy.teardown()
