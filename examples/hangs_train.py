"""A DDP training script that hangs on 2 ranks: find why with notebook 09's tools, then fix it (notebook 09's
exercise; ``dtutor.failures.exercises.check_hang_fix`` checks a fixed copy).

It trains a small regression net on random data until the loss is below ``--target-loss`` (at most ``--steps``
steps), then rank 0 saves the weights and the number of steps taken to ``--output``.

    torchrun --standalone --nproc-per-node=2 examples/hangs_train.py --output hangs.pt
"""

import argparse
import os
import sys

import torch
import torch.distributed as dist
from torch import nn
from torch.nn.parallel import DistributedDataParallel

FEATURES, GLOBAL_BATCH = 8, 32


def make_model() -> nn.Module:
    """The same initial weights on every rank."""
    torch.manual_seed(0)
    return nn.Sequential(nn.Linear(FEATURES, 16), nn.Tanh(), nn.Linear(16, 1))


def batch(step: int, rank: int, world_size: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Rank ``rank``'s share of global batch ``step``: every ``world_size``-th sample of a noisy linear target."""
    teacher = torch.randn(FEATURES, 1, generator=torch.Generator().manual_seed(1234))
    generator = torch.Generator().manual_seed(step)
    inputs = torch.randn(GLOBAL_BATCH, FEATURES, generator=generator)
    targets = inputs @ teacher + 0.1 * torch.randn(GLOBAL_BATCH, 1, generator=generator)
    return inputs[rank::world_size], targets[rank::world_size]


def main() -> None:
    parser = argparse.ArgumentParser(description="Train until the loss is low enough (run it under torchrun)")
    parser.add_argument("--steps", type=int, default=40, help="at most this many steps")
    parser.add_argument("--target-loss", type=float, default=0.1, help="stop once the loss is below this")
    parser.add_argument("--lr", type=float, default=0.05)
    parser.add_argument("--output", default="hangs.pt", help="the weights and steps taken, written by rank 0")
    args = parser.parse_args()

    dist.init_process_group("gloo")
    rank, world_size = dist.get_rank(), dist.get_world_size()
    model = DistributedDataParallel(make_model())
    optimizer = torch.optim.SGD(model.parameters(), lr=args.lr)

    steps = 0
    for step in range(args.steps):
        inputs, targets = batch(step, rank, world_size)
        loss = nn.functional.mse_loss(model(inputs), targets)
        if loss.item() < args.target_loss:  # good enough: stop early
            break
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        steps += 1
    print(f"rank {rank}: stopped after {steps} steps")

    dist.barrier()  # nobody leaves before every rank is done
    if rank == 0:
        torch.save({"state": model.module.state_dict(), "steps": steps}, args.output)
    dist.destroy_process_group()
    # The gloo threads outlive destroy_process_group: DDP's hooks still hold the group. In torch 2.13, one of them
    # still letting go of a finished collective's tensors during Python's shutdown can abort this finished
    # process (SIGABRT, "terminate called without an active exception"; pytorch/pytorch#190489). Skip that shutdown:
    sys.stdout.flush()
    os._exit(0)


if __name__ == "__main__":
    main()
