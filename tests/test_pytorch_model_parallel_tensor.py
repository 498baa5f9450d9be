"""Tensor parallelism on an MLP block: local shards, equality with the unsplit block, what is communicated."""

import pytest

from dtutor import launch
from dtutor.pytorch.model_parallel.tensor_parallel import mlp_block, tensor_parallel_plan


def test_the_plan_pairs_linear_layers_columns_then_rows_and_leaves_an_odd_one_whole():
    from dtutor.models import wide_mlp

    plan = {name: type(style).__name__ for name, style in tensor_parallel_plan(wide_mlp(64, 4)).items()}
    assert plan == {"1": "ColwiseParallel", "3": "RowwiseParallel", "5": "ColwiseParallel", "7": "RowwiseParallel"}
    assert list(tensor_parallel_plan(mlp_block())) == ["0", "2"]


@pytest.fixture(scope="module")
def demo():
    entry = "dtutor.pytorch.model_parallel.tensor_parallel:tensor_parallel_demo"
    return launch.run(entry, 2, timeout=300, quiet=True, width=64, hidden=256, batch=8)[0]  # facts from both ranks


def test_output_and_gradients_equal_the_unsplit_block(demo):
    assert demo["ranks"] == 2
    assert demo["output_difference"] < 1e-6 and demo["gradient_difference"] < 1e-6  # measured 6e-8, 9e-10


def test_each_rank_holds_half_of_each_split_weight(demo):
    for shapes in demo["local_shapes"]:
        assert shapes == {"0.weight": ((128, 64), (256, 64)), "0.bias": ((128,), (256,)),
                          "2.weight": ((64, 128), (64, 256)), "2.bias": ((64,), (64,))}
    assert demo["parameter_bytes"] == (128 * 64 + 128 + 64 * 128 + 64) * 4
    assert demo["unsplit_parameter_bytes"] == (256 * 64 + 256 + 64 * 256 + 64) * 4


def test_one_all_reduce_forward_and_one_backward(demo):
    assert demo["forward_collectives"] == {"all_reduce": 1}
    assert demo["backward_collectives"] == {"all_reduce": 1}
    # counted at the collective (bench.probe's counter): the block's output, then its input's gradient, in fp32
    assert demo["forward_all_reduce_bytes"] == 8 * 64 * 4  # batch x width
    assert demo["backward_all_reduce_bytes"] == 8 * 64 * 4
