"""DeepSpeed, as one plain script: deepspeed.initialize wraps the model and optimizer in an engine configured by a
JSON file (deepspeed_config.json beside this script: the micro-batch per process and the ZeRO stage).

DeepSpeed's launcher starts one process per GPU (on a CPU: per slot) and passes each --local_rank. The engine
replaces backward and step: at ZeRO stage 1 each process keeps 1/N of the optimizer state, at stage 2 also of the
gradients, at stage 3 also of the parameters. Every process writes its own partitions into the checkpoint folder.

    deepspeed --num_gpus=2 examples/deepspeed_train.py --deepspeed_config examples/deepspeed_config.json
"""

import argparse
import os
import sys
import warnings

import deepspeed
import torch
from torch import nn
from torch.utils.data import DataLoader, DistributedSampler, Subset

from dtutor.data import load_mnist, torch_dataset  # MNIST, or scikit-learn's digits offline


def mnist_cnn() -> nn.Sequential:
    """The course's CNN: two convolutions with max-pooling, then two dense layers; logits for 10 digits."""
    return nn.Sequential(nn.Conv2d(1, 32, 3), nn.ReLU(), nn.MaxPool2d(2), nn.Conv2d(32, 64, 3), nn.ReLU(),
                         nn.MaxPool2d(2), nn.Flatten(), nn.Linear(64 * 5 * 5, 64), nn.ReLU(), nn.Linear(64, 10))


def main() -> None:
    parser = argparse.ArgumentParser(description="Train the MNIST CNN with DeepSpeed (run it under deepspeed)")
    parser.add_argument("--epochs", type=int, default=1)
    parser.add_argument("--samples", type=int, default=1024, help="training images per epoch (whole batches)")
    parser.add_argument("--lr", type=float, default=1e-3, help="Adam's learning rate")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--output", default="deepspeed_checkpoint", help="the checkpoint folder")
    parser.add_argument("--local_rank", type=int, default=-1, help="set by DeepSpeed's launcher")
    parser = deepspeed.add_config_arguments(parser)  # --deepspeed_config FILE.json
    args = parser.parse_args()
    warnings.filterwarnings("ignore", category=FutureWarning)  # DeepSpeed 0.19 calls collectives torch deprecates

    deepspeed.init_distributed()  # the process group: nccl on GPUs, gloo on CPUs
    torch.manual_seed(args.seed)
    model = mnist_cnn()
    optimizer = torch.optim.Adam(model.parameters(), lr=args.lr)  # ZeRO partitions its state
    engine, _, _, _ = deepspeed.initialize(args=args, model=model, optimizer=optimizer)
    rank, world_size = engine.global_rank, engine.world_size

    batch = engine.train_batch_size()  # micro-batch x accumulation x processes, from the JSON file
    used = args.samples // batch * batch
    dataset = Subset(torch_dataset(load_mnist("train", verbose=rank == 0)), range(used))
    sampler = DistributedSampler(dataset, num_replicas=world_size, rank=rank, shuffle=True, seed=args.seed)
    loader = DataLoader(dataset, batch_size=engine.train_micro_batch_size_per_gpu(), sampler=sampler)
    for epoch in range(args.epochs):
        sampler.set_epoch(epoch)  # a new shuffle each epoch, the same on every rank
        for images, labels in loader:
            loss = nn.functional.cross_entropy(engine(images.to(engine.device)), labels.to(engine.device))
            engine.backward(loss)  # gradients reduced (stage 2: each rank keeps its partition's)
            engine.step()  # each rank steps its partition, then the new parameters are gathered
        if rank == 0:
            print(f"epoch {epoch}: loss {loss.item():.4f} on rank 0's last micro-batch")
    engine.save_checkpoint(args.output)  # every rank writes its partitions; zero_to_fp32 joins them
    engine.destroy()  # release the engine's hooks before the process group goes
    deepspeed.comm.destroy_process_group()
    # The gloo threads outlive destroy_process_group: the engine's parts hold the group. In torch 2.13, one of them
    # still letting go of a finished collective's tensors during Python's shutdown can abort this finished
    # process (SIGABRT, "terminate called without an active exception"; pytorch/pytorch#190489). Skip that shutdown:
    sys.stdout.flush()
    os._exit(0)


if __name__ == "__main__":
    main()
