"""DDP from scratch (naive, bucketed, overlapped) proven equal to torch's DistributedDataParallel after 4 SGD steps of
the course's CNN on 2 gloo ranks, from ONE launch; each version's all-reduce calls per step against counts derived
here from the CNN's parameter sizes. An unsynced control (each rank trains on its own half) shows the proof can fail."""

import pytest

from dtutor import launch, max_difference, models
from dtutor.pytorch.ddp_by_hand import plan_buckets
from dtutor.result import identical

STEPS = 4
BUCKET_BYTES = 64 * 1024
TOLERANCE = 1e-6  # fp32; with 2 ranks the sums are the same on every version, measured 0.0

# The CNN's parameters, last first (the order backward produces them and the buckets take them), in fp32 bytes:
# 9 (Dense 10): 4 * (10 + 640) and 7 (Dense 64): 4 * (64 + 102400) -> 412,456 B, over 64 KiB: bucket 1 closes;
# 3 (Conv 64): 4 * (64 + 18432) = 73,984 B, over 64 KiB: bucket 2 closes; 0 (Conv 32): 4 * (32 + 288): bucket 3.
EXPECTED_BUCKETS = [["9.bias", "9.weight", "7.bias", "7.weight"], ["3.bias", "3.weight"], ["0.bias", "0.weight"]]
PARAMETER_TENSORS = 8  # 4 layers, a weight and a bias each


@pytest.fixture(scope="module")
def ranks():
    return launch.run("dtutor.pytorch.ddp_by_hand:compare", 2, timeout=240, quiet=True, steps=STEPS,
                      bucket_bytes=BUCKET_BYTES)


@pytest.mark.parametrize("version", ["naive", "bucketed", "overlapped"])
def test_each_version_equals_torch_ddp_after_k_steps_on_every_rank(ranks, version):
    first, second = (r["parameters"] for r in ranks)
    assert max_difference(first[version], first["torch_ddp"]) < TOLERANCE
    assert identical(first[version], second[version])


def test_the_proof_can_fail_an_unsynced_run_differs_and_ddp_trained(ranks):
    first, second = (r["parameters"] for r in ranks)
    assert max_difference(first["unsynced"], first["torch_ddp"]) > 1e-3
    assert max_difference(first["unsynced"], second["unsynced"]) > 1e-3  # each rank saw only its half
    assert max_difference(first["torch_ddp"], models.seeded(models.mnist_cnn, 0).state_dict()) > 1e-3


def test_all_reduce_calls_per_step(ranks):
    assert len(list(models.mnist_cnn().parameters())) == PARAMETER_TENSORS
    for rank in ranks:
        assert rank["buckets"] == EXPECTED_BUCKETS
        calls = rank["all_reduce_calls"]
        assert calls["naive"] == [PARAMETER_TENSORS] * STEPS
        assert calls["bucketed"] == calls["overlapped"] == [len(EXPECTED_BUCKETS)] * STEPS
        # torch's DDP (find_unused_parameters=False) puts every parameter in one bucket for its first step, then
        # rebuilds its buckets in the order the gradients came, with the same cap: the same 3 buckets after that
        assert calls["torch_ddp"] == [1] + [len(EXPECTED_BUCKETS)] * (STEPS - 1)
        assert calls["unsynced"] == [0] * STEPS
        assert rank["started_before_wait"] == [len(EXPECTED_BUCKETS)] * STEPS  # all started during backward


def test_plan_buckets_at_the_extremes():
    model = models.mnist_cnn()
    parameters = list(model.parameters())
    one_each = plan_buckets(model, 1)
    assert all(bucket[0] is p for bucket, p in zip(one_each, reversed(parameters), strict=True))
    assert all(len(bucket) == 1 for bucket in one_each) and len(one_each) == PARAMETER_TENSORS
    total = 4 * models.MNIST_CNN_PARAMETERS
    assert [len(bucket) for bucket in plan_buckets(model, total)] == [PARAMETER_TENSORS]
    assert len(plan_buckets(model, total + 1)) == 1
