"""Who holds what: shares from the by-hand ZeRO-1's shards and from measured rows, their spans, the figure."""

import pytest

from dtutor.bench import zero
from dtutor.pytorch.sharded import partitions

PSI = 1000


def fake_rank(rank: int, run: dict, **bytes_: int) -> dict:
    """One rank's ``model_state`` measurement: the given bytes, every other role 0."""
    roles = ("parameters", "gradients", "host_gradients", "master_weights", "optimizer_state", "buffers",
             "gathered_parameters", "reduce_bucket", "bucket_capacity", "bucket_resident")
    return {"run": run, "rank": rank, "ranks": 2, "parameter_count": PSI, "moment": "after backward",
            "bytes": {role: bytes_.get(role, 0) for role in roles}}


def row(run: dict, parameters: list[int], gradients: int, optimizer: int) -> dict:
    """A ``bench_zero`` row of two ranks: fp32 Adam with the fp32 master copy DeepSpeed keeps at stages 1-3."""
    return zero.memory_row([fake_rank(rank, run, parameters=parameters[rank], gradients=gradients,
                                      master_weights=optimizer // 3, optimizer_state=2 * optimizer // 3)
                            for rank in (0, 1)])


def test_a_measured_share_is_bytes_over_the_whole_part_drawn_in_rank_order():
    spans = partitions.measured_holdings(row({"strategy": "deepspeed", "zero_stage": 2}, [4 * PSI] * 2, 2 * PSI,
                                             6 * PSI))["spans"]
    assert [s["parameters"] for s in spans] == [(0.0, 1.0), (0.0, 1.0)]
    assert [s["gradients"] for s in spans] == [s["optimizer"] for s in spans] == [(0.0, 0.5), (0.5, 1.0)]


def test_shares_above_one_half_overlap_where_zero3_keeps_small_layers_whole():
    holding = partitions.measured_holdings(row({"strategy": "deepspeed", "zero_stage": 3}, [2040, 2040], 2 * PSI,
                                               6 * PSI))
    (start0, end0), (start1, end1) = (s["parameters"] for s in holding["spans"])
    assert start0 == 0.0 and end1 == 1.0 and end0 == pytest.approx(0.51) and start1 == pytest.approx(0.49)
    assert holding["name"] == "DeepSpeed ZeRO-3 fp32"


def test_the_by_hand_shards_tile_the_padded_vector():
    results = [{"rank": rank, "padded_size": 716, "parameter_count": 715, "shard_start": 358 * rank,
                "state_shapes": [(), (358,)]} for rank in (1, 0)]
    spans = partitions.by_hand_holdings(results)["spans"]
    assert [s["optimizer"] for s in spans] == [(0.0, 0.5), (0.5, 1.0)]
    assert all(s["parameters"] == s["gradients"] == (0.0, 715 / 716) for s in spans)  # every rank: the whole model


def test_the_figure_draws_zero_stages_1_to_3_and_fsdp_in_fp32_only():
    runs = [{"strategy": "deepspeed", "zero_stage": 0}, {"strategy": "deepspeed", "zero_stage": 1},
            {"strategy": "deepspeed", "zero_stage": 1, "precision": "bf16"},
            {"strategy": "deepspeed", "zero_stage": 2, "precision": "bf16", "offload": True}, {"strategy": "fsdp"}]
    kept = partitions.sharded_rows([row(run, [4 * PSI] * 2, 4 * PSI, 6 * PSI) for run in runs])
    assert [r["configuration"] for r in kept] == ["ZeRO-1 fp32", "FSDP fp32"]
    figure = partitions.plot_partitions([partitions.measured_holdings(r) for r in kept])
    assert [axes.get_title() for axes in figure.axes] == ["DeepSpeed ZeRO-1 fp32\n(spans: rank order)",
                                                         "FSDP fp32\n(spans: rank order)"]
