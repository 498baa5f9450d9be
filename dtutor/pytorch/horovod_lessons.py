"""Two small Horovod (PyTorch) entry points for notebook 03: what an all-reduce and a broadcast do.

    horovodrun -np 2 --gloo -H localhost:2 python -m dtutor.launch dtutor.pytorch.horovod_lessons:allreduce_demo
    horovodrun -np 2 --gloo -H localhost:2 python -m dtutor.launch dtutor.pytorch.horovod_lessons:broadcast_demo
"""

from __future__ import annotations

from typing import Any

import torch

from dtutor import models


def allreduce_demo() -> dict[str, Any]:
    """Each rank contributes ``[rank + 1, 10 * (rank + 1)]``; returns Horovod's average and sum of them."""
    import horovod.torch as hvd

    hvd.init()
    mine = torch.tensor([hvd.rank() + 1.0, 10.0 * (hvd.rank() + 1)])
    return {"rank": hvd.rank(), "mine": mine.tolist(),
            "average": hvd.allreduce(mine, op=hvd.Average, name="avg").tolist(),
            "sum": hvd.allreduce(mine, op=hvd.Sum, name="sum").tolist()}


def broadcast_demo() -> dict[str, Any]:
    """Each rank builds the CNN from its own seed; ``broadcast_parameters`` then gives all of them rank 0's.

    Returns whether this rank's weights differed from rank 0's before the broadcast and equal them after.
    """
    import horovod.torch as hvd

    hvd.init()
    model = models.seeded(models.mnist_cnn, seed=hvd.rank())  # deliberately different on every rank
    first = next(model.parameters())
    before = hvd.allgather(first.detach().flatten()[None])  # every rank's first weights, side by side
    hvd.broadcast_parameters(model.state_dict(), root_rank=0)
    after = hvd.allgather(first.detach().flatten()[None])
    return {"rank": hvd.rank(), "different_before": not torch.equal(before[0], before[hvd.rank()]) or hvd.rank() == 0,
            "equal_after": all(torch.equal(after[0], row) for row in after)}
