"""PyTorch FSDP2 (fully_shard), as one plain script: each process keeps 1/N of every parameter, gradient and
optimizer state, and gathers a layer's parameters only while it computes with them. Started by torchrun.

fully_shard each layer that has parameters, then the whole model: the parameters become DTensor shards, and the
optimizer, built after sharding, steps only this process's shards. The checkpoint gathers the full state dict.

    torchrun --standalone --nproc-per-node=2 examples/fsdp2_train.py --epochs 1 --output cnn.pt
"""

import argparse
import os
import sys

import torch
import torch.distributed as dist
from torch import nn
from torch.distributed.checkpoint.state_dict import StateDictOptions, get_model_state_dict
from torch.distributed.device_mesh import init_device_mesh
from torch.distributed.fsdp import fully_shard
from torch.utils.data import DataLoader, DistributedSampler, Subset

from dtutor.data import load_mnist, torch_dataset  # MNIST, or scikit-learn's digits offline


def mnist_cnn() -> nn.Sequential:
    """The course's CNN: two convolutions with max-pooling, then two dense layers; logits for 10 digits."""
    return nn.Sequential(nn.Conv2d(1, 32, 3), nn.ReLU(), nn.MaxPool2d(2), nn.Conv2d(32, 64, 3), nn.ReLU(),
                         nn.MaxPool2d(2), nn.Flatten(), nn.Linear(64 * 5 * 5, 64), nn.ReLU(), nn.Linear(64, 10))


def main() -> None:
    parser = argparse.ArgumentParser(description="Train the MNIST CNN with FSDP2 (run it under torchrun)")
    parser.add_argument("--epochs", type=int, default=1)
    parser.add_argument("--batch", type=int, default=64, help="the global batch: all processes together")
    parser.add_argument("--samples", type=int, default=1024, help="training images per epoch (whole batches)")
    parser.add_argument("--lr", type=float, default=1e-3, help="Adam's learning rate")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--output", default="fsdp2_cnn.pt", help="the checkpoint rank 0 writes")
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
    torch.manual_seed(args.seed)  # the same initial weights everywhere, before they are cut into shards
    model = mnist_cnn().to(device)
    mesh = init_device_mesh(device.type, (world_size,))  # one dimension: every rank holds a shard
    for layer in model:
        if any(True for _ in layer.parameters()):
            fully_shard(layer, mesh=mesh)  # each layer gathered just before it runs, freed after
    fully_shard(model, mesh=mesh)
    optimizer = torch.optim.Adam(model.parameters(), lr=args.lr)  # over the shards: 1/N of Adam's state here

    for epoch in range(args.epochs):
        sampler.set_epoch(epoch)  # a new shuffle each epoch, the same on every rank
        for images, labels in loader:
            loss = nn.functional.cross_entropy(model(images.to(device)), labels.to(device))
            optimizer.zero_grad()
            loss.backward()  # gradients reduce-scattered: each rank gets the average of its shard's
            optimizer.step()  # each rank steps its own shards
        last = loss.detach().clone()
        dist.all_reduce(last)  # the last batch's loss, summed over the ranks
        if rank == 0:
            print(f"epoch {epoch}: loss {last.item() / world_size:.4f} on the last batch of {args.batch} images")
    options = StateDictOptions(full_state_dict=True, cpu_offload=True)  # every shard gathered, to rank 0's CPU
    state = get_model_state_dict(model, options=options)  # a collective: every rank calls it
    if rank == 0:
        torch.save(state, args.output)
    dist.barrier()  # nobody leaves before the file is written
    dist.destroy_process_group()
    # The gloo threads outlive destroy_process_group: FSDP's modules still hold the group. In torch 2.13, one of them
    # still letting go of a finished collective's tensors during Python's shutdown can abort this finished
    # process (SIGABRT, "terminate called without an active exception"; pytorch/pytorch#190489). Skip that shutdown:
    sys.stdout.flush()
    os._exit(0)


if __name__ == "__main__":
    main()
