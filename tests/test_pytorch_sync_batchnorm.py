import copy

import pytest
import torch
from torch import nn

from dtutor import launch, models
from dtutor.pytorch import sync_batchnorm
from dtutor.pytorch.sync_batchnorm import TOLERANCE, SyncedBatchNorm2d, convert_to_synced

STEPS = 16


@pytest.fixture(scope="module")
def runs():
    """One launch on 2 gloo ranks: DDP with plain and with synced BatchNorm, and (rank 0) one device."""
    return launch.run("dtutor.pytorch.sync_batchnorm:batchnorm_under_ddp", nprocs=2, backend="gloo", timeout=240,
                      quiet=True, steps=STEPS)


def largest(a: dict, b: dict, kind: str) -> float:
    """The largest absolute difference over the tensors named like ``kind`` ("running_" or parameters)."""
    names = [n for n in a if ("running_" in n) == (kind == "running_") and "num_batches" not in n]
    assert names
    return max((a[n] - b[n]).abs().max().item() for n in names)


def test_plain_batchnorm_leaves_the_ranks_and_one_device_apart(runs):
    rank0, rank1, one_device = runs[0]["plain"], runs[1]["plain"], runs[0]["one_device"]
    assert largest(rank0, rank1, "running_") > 1e-3  # each rank's running statistics saw its own micro-batches
    assert largest(rank0, one_device, "running_") > 1e3 * TOLERANCE
    assert largest(rank0, one_device, "parameters") > 1e3 * TOLERANCE  # the forward itself differs


def test_synced_batchnorm_ranks_agree_and_equal_one_device_with_the_whole_batch(runs):
    rank0, rank1, one_device = runs[0]["synced"], runs[1]["synced"], runs[0]["one_device"]
    assert all(torch.equal(rank0[n], rank1[n]) for n in rank0)
    assert largest(rank0, one_device, "running_") <= TOLERANCE
    assert largest(rank0, one_device, "parameters") <= TOLERANCE
    assert rank0["1.num_batches_tracked"].item() == one_device["1.num_batches_tracked"].item() == STEPS


def test_torch_sync_batchnorm_is_refused_on_cpu_modules_and_differences_measures_both(runs):
    assert "only work with GPU modules" in runs[0]["torch_sync_batchnorm"]
    measured = sync_batchnorm.differences(runs)
    assert measured["plain"]["running stats, rank 0 vs rank 1"] == largest(runs[0]["plain"], runs[1]["plain"],
                                                                           "running_")
    assert measured["synced"]["parameters vs one device"] == largest(runs[0]["synced"], runs[0]["one_device"],
                                                                     "parameters")


def test_conversion_keeps_the_weights_and_is_plain_batchnorm_without_a_process_group():
    plain = models.seeded(models.mnist_cnn_batchnorm)
    with torch.no_grad():
        plain[1].weight.uniform_(0.5, 1.5)
        plain[1].running_mean.fill_(0.25)
    before = {name: value.clone() for name, value in plain.state_dict().items()}
    synced = convert_to_synced(copy.deepcopy(plain))
    assert [type(m) for m in synced.modules() if isinstance(m, nn.BatchNorm2d)] == [SyncedBatchNorm2d] * 2
    assert synced.state_dict().keys() == before.keys()
    assert all(torch.equal(value, before[name]) for name, value in synced.state_dict().items())
    images = torch.rand(8, 1, 28, 28)
    assert torch.equal(synced(images), plain(images))  # training mode, no process group: plain BatchNorm
    assert torch.equal(synced[5].running_var, plain[5].running_var)
