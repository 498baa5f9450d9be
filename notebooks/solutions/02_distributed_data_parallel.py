"""Worked solutions of notebook 02's exercises: DDP on 4 ranks, and with 4 accumulated micro-batches; the course's
ring all-reduce and naive gradient sync (``dtutor.pytorch.ring``, ``dtutor.pytorch.ddp_by_hand``); the deadlock fixed.

Run them (CI does, through the notebook's own check cells):
``python notebooks/solutions/02_distributed_data_parallel.py``.
"""

import torch.distributed as dist
from torch import nn

from dtutor import code_exercises, exercises, launch  # noqa: F401 - the check cells use code_exercises
from dtutor.pytorch.ddp_by_hand import average_gradients
from dtutor.pytorch.ring import ring_all_reduce

setup = dict(global_batch=64, samples=256, epochs=1, test_samples=256)  # the notebook's proof runs


def my_train_step(model: nn.Module, optimizer, inputs, targets):
    """The deadlock fixed: every rank joins the loss's all-reduce (a collective needs them all); rank 0 prints."""
    optimizer.zero_grad()
    loss = nn.functional.cross_entropy(model(inputs), targets)
    loss.backward()
    for parameter in model.parameters():
        dist.all_reduce(parameter.grad)
        parameter.grad /= dist.get_world_size()
    optimizer.step()
    mean_loss = loss.detach().clone()
    dist.all_reduce(mean_loss)
    mean_loss /= dist.get_world_size()
    if dist.get_rank() == 0:
        print(f"loss averaged over the ranks: {mean_loss.item():.4f}")
    return mean_loss


def answers() -> dict:
    """``my_four_ranks``: 16 samples per rank; ``my_accumulation``: 2 ranks, 4 micro-batches of 8 per step."""
    return {
        "my_four_ranks": launch.train(4, strategy="ddp", timeout=300, quiet=True, **setup),
        "my_accumulation": launch.train(2, strategy="ddp", accumulation=4, timeout=300, quiet=True, **setup),
        "my_ring_all_reduce": ring_all_reduce,
        "my_average_gradients": average_gradients,
        "my_train_step": my_train_step,
    }


if __name__ == "__main__":
    raise SystemExit(0 if exercises.check_solution(__file__) else 1)
