"""PyTorch DistributedDataParallel, as one plain script: one process per GPU (or per CPU slot), started by torchrun.

torchrun starts the processes and gives each its RANK, LOCAL_RANK and WORLD_SIZE. Each process joins the process
group, reads its own share of every global batch (DistributedSampler), and DDP all-reduces the gradients during
backward, so every process takes the same optimizer step. Rank 0 writes the checkpoint.

    torchrun --standalone --nproc-per-node=2 examples/ddp_train.py --epochs 1 --output cnn.pt
"""

import argparse
import os
import sys

import torch
import torch.distributed as dist
from torch import nn
from torch.nn.parallel import DistributedDataParallel
from torch.utils.data import DataLoader, DistributedSampler, Subset

from dtutor.data import load_mnist, torch_dataset  # MNIST, or scikit-learn's digits offline


def mnist_cnn() -> nn.Sequential:
    """The course's CNN: two convolutions with max-pooling, then two dense layers; logits for 10 digits."""
    return nn.Sequential(nn.Conv2d(1, 32, 3), nn.ReLU(), nn.MaxPool2d(2), nn.Conv2d(32, 64, 3), nn.ReLU(),
                         nn.MaxPool2d(2), nn.Flatten(), nn.Linear(64 * 5 * 5, 64), nn.ReLU(), nn.Linear(64, 10))


def main() -> None:
    parser = argparse.ArgumentParser(description="Train the MNIST CNN with DDP (run it under torchrun)")
    parser.add_argument("--epochs", type=int, default=1)
    parser.add_argument("--batch", type=int, default=64, help="the global batch: all processes together")
    parser.add_argument("--samples", type=int, default=1024, help="training images per epoch (whole batches)")
    parser.add_argument("--lr", type=float, default=0.05, help="the learning rate of the global batch")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--output", default="ddp_cnn.pt", help="the checkpoint rank 0 writes")
    args = parser.parse_args()

    gpus = torch.cuda.device_count() >= int(os.environ["LOCAL_WORLD_SIZE"])  # one GPU per process, or CPUs
    dist.init_process_group("nccl" if gpus else "gloo")  # reads RANK, WORLD_SIZE, MASTER_ADDR/PORT from torchrun
    rank, world_size = dist.get_rank(), dist.get_world_size()
    device = torch.device("cuda", int(os.environ["LOCAL_RANK"])) if gpus else torch.device("cpu")
    if gpus:
        torch.cuda.set_device(device)

    used = args.samples // args.batch * args.batch
    dataset = Subset(torch_dataset(load_mnist("train", verbose=rank == 0)), range(used))
    sampler = DistributedSampler(dataset, num_replicas=world_size, rank=rank, shuffle=True, seed=args.seed)
    loader = DataLoader(dataset, batch_size=args.batch // world_size, sampler=sampler)
    torch.manual_seed(args.seed)  # the same initial weights everywhere (DDP also broadcasts rank 0's)
    model = DistributedDataParallel(mnist_cnn().to(device), device_ids=[device.index] if gpus else None)
    optimizer = torch.optim.SGD(model.parameters(), lr=args.lr, momentum=0.9)

    for epoch in range(args.epochs):
        sampler.set_epoch(epoch)  # a new shuffle each epoch, the same on every rank
        for images, labels in loader:
            loss = nn.functional.cross_entropy(model(images.to(device)), labels.to(device))
            optimizer.zero_grad()
            loss.backward()  # DDP all-reduces the gradients, bucket by bucket, while backward runs
            optimizer.step()  # the same averaged gradients on every rank: the same step
        last = loss.detach().clone()
        dist.all_reduce(last)  # the last batch's loss, summed over the ranks
        if rank == 0:
            print(f"epoch {epoch}: loss {last.item() / world_size:.4f} on the last batch of {args.batch} images")
    if rank == 0:  # the weights are the same on every rank: one writes them
        torch.save(model.module.state_dict(), args.output)
    dist.barrier()  # nobody leaves before the file is written
    dist.destroy_process_group()
    # The gloo threads outlive destroy_process_group: DDP's hooks still hold the group. In torch 2.13, one of them
    # still letting go of a finished collective's tensors during Python's shutdown can abort this finished
    # process (SIGABRT, "terminate called without an active exception"; pytorch/pytorch#190489). Skip that shutdown:
    sys.stdout.flush()
    os._exit(0)


if __name__ == "__main__":
    main()
