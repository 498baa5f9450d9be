"""Horovod for PyTorch, as one plain script: the source article's Horovod code, made to work.

The article calls hvd.init, wraps the optimizer and broadcasts the parameters. What it left out, added here:
the model, loss and data; a CPU when there is no GPU; each worker's own shard of the data (DistributedSampler
by hvd.rank() and hvd.size(), reshuffled each epoch); the optimizer's state broadcast too; one checkpoint.

    horovodrun -np 2 --gloo -H localhost:2 python examples/horovod_train.py --epochs 1 --output cnn.pt
"""

import argparse

import horovod.torch as hvd
import torch
from torch import nn
from torch.utils.data import DataLoader, DistributedSampler, Subset

from dtutor.data import load_mnist, torch_dataset  # MNIST, or scikit-learn's digits offline


def mnist_cnn() -> nn.Sequential:
    """The article's CNN: two convolutions with max-pooling, then two dense layers; logits for 10 digits."""
    return nn.Sequential(nn.Conv2d(1, 32, 3), nn.ReLU(), nn.MaxPool2d(2), nn.Conv2d(32, 64, 3), nn.ReLU(),
                         nn.MaxPool2d(2), nn.Flatten(), nn.Linear(64 * 5 * 5, 64), nn.ReLU(), nn.Linear(64, 10))


def main() -> None:
    parser = argparse.ArgumentParser(description="Train the MNIST CNN with Horovod (run it under horovodrun)")
    parser.add_argument("--epochs", type=int, default=1)
    parser.add_argument("--batch", type=int, default=64, help="the global batch: all workers together")
    parser.add_argument("--samples", type=int, default=1024, help="training images per epoch (whole batches)")
    parser.add_argument("--lr", type=float, default=0.05, help="the learning rate of the global batch")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--output", default="horovod_cnn.pt", help="the checkpoint worker 0 writes")
    args = parser.parse_args()

    hvd.init()  # one process per GPU (or CPU slot); rank, size and local_rank come from horovodrun
    device = torch.device("cuda", hvd.local_rank()) if torch.cuda.is_available() else torch.device("cpu")
    if device.type == "cuda":
        torch.cuda.set_device(device)
    torch.manual_seed(args.seed)
    model = mnist_cnn().to(device)
    optimizer = torch.optim.SGD(model.parameters(), lr=args.lr, momentum=0.9)
    hvd.broadcast_parameters(model.state_dict(), root_rank=0)  # every worker starts from worker 0's weights
    hvd.broadcast_optimizer_state(optimizer, root_rank=0)
    optimizer = hvd.DistributedOptimizer(optimizer, named_parameters=model.named_parameters(), op=hvd.Average)

    used = args.samples // args.batch * args.batch
    dataset = Subset(torch_dataset(load_mnist("train", verbose=hvd.rank() == 0)), range(used))
    sampler = DistributedSampler(dataset, num_replicas=hvd.size(), rank=hvd.rank(), shuffle=True, seed=args.seed)
    loader = DataLoader(dataset, batch_size=args.batch // hvd.size(), sampler=sampler)
    for epoch in range(args.epochs):
        sampler.set_epoch(epoch)  # a new shuffle each epoch, the same on every worker
        for images, labels in loader:
            optimizer.zero_grad()
            loss = nn.functional.cross_entropy(model(images.to(device)), labels.to(device))
            loss.backward()  # Horovod starts averaging each gradient as soon as backward produces it
            optimizer.step()  # waits for the averages, then steps: every worker takes the same step
        last = hvd.allreduce(loss.detach(), name="loss")  # the last batch's loss, averaged over the workers
        if hvd.rank() == 0:
            print(f"epoch {epoch}: loss {last.item():.4f} on the last batch of {args.batch} images")
    if hvd.rank() == 0:  # the weights are the same everywhere: one worker writes them
        torch.save(model.state_dict(), args.output)
    hvd.shutdown()


if __name__ == "__main__":
    main()
