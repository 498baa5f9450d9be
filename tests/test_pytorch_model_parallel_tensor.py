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
    return launch.run("dtutor.pytorch.model_parallel.tensor_parallel:tensor_parallel_demo", 2, timeout=240,
                      quiet=True, width=64, hidden=256, batch=8)


def test_output_and_gradients_equal_the_unsplit_block(demo):
    result = demo[0]
    assert result["output_difference"] < 1e-6 and result["gradient_difference"] < 1e-6  # measured 6e-8, 9e-10
    assert demo[1]["output_difference"] == result["output_difference"]


def test_each_rank_holds_half_of_each_split_weight(demo):
    for shapes in demo[0]["local_shapes"]:
        assert shapes == {"0.weight": ((128, 64), (256, 64)), "0.bias": ((128,), (256,)),
                          "2.weight": ((64, 128), (64, 256)), "2.bias": ((64,), (64,))}
    assert demo[0]["parameter_bytes"] == (128 * 64 + 128 + 64 * 128 + 64) * 4
    assert demo[0]["unsplit_parameter_bytes"] == (256 * 64 + 256 + 64 * 256 + 64) * 4


def test_one_all_reduce_forward_and_one_backward(demo):
    assert demo[0]["forward_collectives"] == {"all_reduce": 1}
    assert demo[0]["backward_collectives"] == {"all_reduce": 1}
    assert demo[0]["forward_all_reduce_bytes"] == 8 * 64 * 4
