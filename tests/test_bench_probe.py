"""Counting collectives and model state inside a worker (dtutor.bench.probe), on a one-rank gloo group here."""

import os

import pytest
import torch
import torch.distributed as dist
import torch.distributed._functional_collectives as funcol

from dtutor.bench import probe


@pytest.fixture
def one_rank_group(tmp_path):
    """A gloo process group of one rank in this process, destroyed afterwards."""
    os.environ.setdefault("MASTER_ADDR", "127.0.0.1")
    dist.init_process_group("gloo", store=dist.FileStore(str(tmp_path / "store"), 1), rank=0, world_size=1)
    try:
        yield
    finally:
        dist.destroy_process_group()


def test_every_kind_of_collective_is_counted_with_its_size(one_rank_group):
    counter = probe.CollectiveCounter(world_size=2)  # counted as if 2 ranks sent it: the ring's factors
    x = torch.ones(1000)
    with counter:
        dist.all_reduce(x)  # eager c10d, as DDP, DeepSpeed
        dist.all_gather_single(torch.empty(1000), x)  # as FSDP, ZeRO
        dist.reduce_scatter_single(torch.empty(1000), x)
        funcol.all_reduce(x, "sum", dist.group.WORLD).wait()  # functional, as DTensor
        (x * 2).sum()  # not a collective
    assert counter.calls == {"all_reduce": 2, "all_gather": 1, "reduce_scatter": 1}
    assert counter.bytes == {"all_reduce": 8000, "all_gather": 4000, "reduce_scatter": 4000}
    assert counter.wire_bytes() == 8000 * 1.0 + 4000 * 0.5 + 4000 * 0.5 and not counter.unknown
    with counter:  # nothing is counted outside the window
        pass
    dist.all_reduce(x)
    assert counter.calls["all_reduce"] == 2


def test_model_state_counts_parameters_gradients_and_optimizer_state_once():
    model = torch.nn.Linear(10, 5)  # 55 parameters, 220 bytes
    optimizer = torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9)
    assert probe.model_state_bytes(model, [optimizer]) == {"parameters": 220, "gradients": 0, "optimizer": 0}
    model(torch.ones(3, 10)).sum().backward()
    optimizer.step()
    assert probe.model_state_bytes(model, [optimizer]) == {"parameters": 220, "gradients": 220, "optimizer": 220}
    optimizer.zero_grad()
    assert probe.model_state_bytes(model, [optimizer])["gradients"] == 0


def test_views_and_meta_tensors_hold_nothing_extra():
    flat = torch.zeros(100)
    model = torch.nn.Module()
    model.a = torch.nn.Parameter(flat[:60])  # two views of one buffer, as DeepSpeed's flat groups
    model.b = torch.nn.Parameter(flat[60:])
    model.c = torch.nn.Parameter(torch.empty(1000, device="meta"))  # another stage's layer: not here
    assert probe.model_state_bytes(model, []) == {"parameters": 400, "gradients": 0, "optimizer": 0}


def test_the_optimizer_chain_follows_wrappers():
    inner = torch.optim.SGD([torch.nn.Parameter(torch.ones(2))], lr=0.1)

    class Wrapper:  # DeepSpeed's ZeRO optimizer holds torch's as .optimizer
        optimizer = inner

    outer = Wrapper()
    assert probe.optimizer_chain(outer) == [outer, inner] and probe.optimizer_chain(inner) == [inner]


def test_zero3_partitions_count_and_so_do_parameters_kept_whole():
    model = torch.nn.Module()
    model.partitioned = torch.nn.Parameter(torch.empty(0))  # ZeRO-3 between layers: an empty placeholder...
    model.partitioned.ds_tensor = torch.zeros(50)  # ...and this rank's partition
    model.persistent = torch.nn.Parameter(torch.zeros(10))  # a small parameter DeepSpeed keeps whole
    model.persistent.ds_tensor = torch.zeros(5)
    assert probe.model_state_bytes(model, [])["parameters"] == 4 * (50 + 10 + 5)
