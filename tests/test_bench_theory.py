"""What communication should cost (dtutor.bench.theory): ring factors, bus bandwidth, bytes per strategy."""

import pytest

from dtutor.bench import theory

G = 487_720  # the course CNN's fp32 gradient bytes


@pytest.mark.parametrize(("n", "factor"), [(1, 0.0), (2, 1.0), (4, 1.5), (8, 1.75)])
def test_the_ring_all_reduce_sends_2_n_minus_1_over_n(n, factor):
    assert theory.wire_factor("all_reduce", n) == factor
    assert theory.wire_factor("all_gather", n) == theory.wire_factor("reduce_scatter", n) == factor / 2
    assert theory.bus_bandwidth(2.0, n) == 2.0 * factor


def test_bad_operations_and_counts_are_refused():
    with pytest.raises(ValueError, match="op: must be one of"):
        theory.wire_factor("gossip", 2)
    with pytest.raises(ValueError, match="n: must be >= 1"):
        theory.wire_factor("send", 0)
    with pytest.raises(ValueError, match="stage: must be 1, 2 or 3"):
        theory.sharded_bytes(G, 2, 0)


def test_strategies_bytes_per_step():
    assert theory.data_parallel_bytes(G, 2) == G and theory.data_parallel_bytes(G, 4) == 1.5 * G
    assert theory.sharded_bytes(G, 2, 1) == theory.sharded_bytes(G, 2, 2) == G  # ZeRO paper: as DDP
    assert theory.sharded_bytes(G, 2, 3) == 1.5 * G
    # the CNN cut in two: 1,600 activations per sample cross; batch 128: 819,200 bytes each way
    assert theory.pipeline_bytes([1600], 128) == 819_200
    assert theory.pipeline_bytes([10, 20], 1) == (10 + 20) * 4  # the middle stage sends both ways
    # one (1600 -> 64 -> 10) pair: the output (10) forward, the input's gradient (1600) backward
    assert theory.tensor_parallel_bytes([(1600, 10)], 128, 2) == 128 * 1610 * 4


def test_within_is_relative_and_says_when_it_cannot_tell():
    assert theory.within(1.04, 1.0) and not theory.within(1.06, 1.0)
    assert theory.within(0.0, 0.0) and not theory.within(1.0, 0.0)
    assert theory.within(None, 1.0) is None and theory.within(1.0, None) is None
