"""Checkpoints that resume bitwise: model, optimizer, epoch and every random number generator's state.

Written atomically (a temporary file renamed into place), so an interruption never leaves half a file.
"""

from __future__ import annotations

import os
import random
from typing import Any

import numpy as np
import torch


def rng_state() -> dict[str, Any]:
    """The state of Python's, NumPy's and PyTorch's (CPU and CUDA) random generators."""
    state = {"python": random.getstate(), "numpy": np.random.get_state(), "torch": torch.get_rng_state()}
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def set_rng_state(state: dict[str, Any]) -> None:
    """Restore what ``rng_state`` returned."""
    random.setstate(state["python"])
    np.random.set_state(state["numpy"])
    torch.set_rng_state(state["torch"])
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


def save(path: str, model_state: dict[str, torch.Tensor], optimizer_state: dict[str, Any], epoch: int) -> None:
    """Write a checkpoint of the state after ``epoch`` to ``path``, atomically."""
    state = {"model": model_state, "optimizer": optimizer_state, "epoch": epoch, "rng": rng_state()}
    torch.save(state, path + ".tmp")
    os.replace(path + ".tmp", path)


def load(path: str) -> dict[str, Any]:
    """Read a checkpoint written by ``save`` (onto the CPU) and restore the random generators' state from it.

    ``load_state_dict`` then copies the tensors to wherever the model and optimizer live.
    """
    state = torch.load(path, map_location="cpu", weights_only=False)
    set_rng_state(state["rng"])
    return state
