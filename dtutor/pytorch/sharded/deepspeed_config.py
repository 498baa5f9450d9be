"""The DeepSpeed configuration (the JSON file the CSDN article passes as ``config_params``), from a ``TrainConfig``.

``deepspeed_config(config, world_size, device)`` checks what DeepSpeed would otherwise refuse late, inside a
worker, or silently change, and raises ``ConfigError`` naming the field before any process starts:

- ``zero_stage`` is 0-3; ``offload`` needs a partitioned optimizer (stages 1-3);
- ``precision="fp16"`` needs GPUs (a CPU has no fp16 kernels for training): use ``bf16`` there;
- ``train_batch_size = micro-batch x gradient_accumulation_steps x world size`` holds (DeepSpeed checks it
  too, but only after the processes have started);
- gradient clipping is stated: DeepSpeed 0.19 clips to 1.0 unless told otherwise, which would make it
  differ from DDP; the course's runs do not clip (``gradient_clipping: 0.0``).

The optimizer is the driver's own (``torch.optim.SGD`` or ``Adam``), handed to ``deepspeed.initialize``;
``zero_allow_untested_optimizer`` lets ZeRO partition it and ``zero_force_ds_cpu_optimizer: false`` lets
offload step it on the CPU without building DeepSpeed's own CPU Adam. This module imports no framework.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from dtutor.config import ConfigError, TrainConfig, check_world

DEVICES = ("cpu", "cuda")


def deepspeed_config(config: TrainConfig, world_size: int, device: str = "cpu") -> dict[str, Any]:
    """DeepSpeed's configuration for ``config`` on ``world_size`` ranks of ``device`` ("cpu" or "cuda")."""
    if config.strategy != "deepspeed":
        raise ConfigError(f"strategy: a DeepSpeed configuration is for strategy='deepspeed', got {config.strategy!r}")
    if device not in DEVICES:
        raise ConfigError(f"device: must be one of {', '.join(DEVICES)}, got {device!r}")
    if config.precision == "fp16" and device == "cpu":
        raise ConfigError("precision: fp16 training needs GPUs (DeepSpeed's CPU accelerator has no fp16 "
                          "support); use precision='bf16' on a CPU, or 'fp32'")
    micro_batch = check_world(config, world_size)
    zero: dict[str, Any] = {"stage": config.zero_stage}
    if config.offload:
        zero["offload_optimizer"] = {"device": "cpu", "pin_memory": device == "cuda"}
    settings: dict[str, Any] = {
        "train_batch_size": config.global_batch,
        "train_micro_batch_size_per_gpu": micro_batch,
        "gradient_accumulation_steps": config.accumulation,
        "gradient_clipping": 0.0,  # DeepSpeed's default is 1.0: DDP does not clip, so neither do we
        "zero_optimization": zero,
        "zero_allow_untested_optimizer": True,  # the driver's torch.optim optimizer, partitioned by ZeRO
        "zero_force_ds_cpu_optimizer": False,  # offload steps that same optimizer on the CPU
        "steps_per_print": 1_000_000_000,  # the driver logs; DeepSpeed stays quiet
    }
    if config.precision != "fp32":
        settings[config.precision] = {"enabled": True}
    return settings


def check_batch_arithmetic(settings: dict[str, Any], world_size: int) -> None:
    """Refuse a hand-edited configuration whose batch sizes do not multiply out (DeepSpeed's own rule)."""
    batch = settings["train_batch_size"]
    product = settings["train_micro_batch_size_per_gpu"] * settings["gradient_accumulation_steps"] * world_size
    if batch != product:
        raise ConfigError(f"train_batch_size: {batch} must equal train_micro_batch_size_per_gpu x "
                          f"gradient_accumulation_steps x world size = {product}")


def write_deepspeed_config(path: str | Path, config: TrainConfig, world_size: int, device: str = "cpu") -> Path:
    """Write the configuration as the JSON file ``deepspeed.initialize(config=...)`` reads; return its path."""
    path = Path(path)
    path.write_text(json.dumps(deepspeed_config(config, world_size, device), indent=2) + "\n")
    return path
