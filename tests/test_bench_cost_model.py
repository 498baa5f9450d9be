"""The cost model's terms on cases worked out by hand (no process starts, nothing timed)."""

import math

import pytest

from dtutor.bench import cost_model as cm


def test_collective_seconds_is_latencies_plus_wire_bytes_over_bandwidth():
    link = cm.Link(alpha_s=1e-5, beta_bytes_per_s=1e9)
    # all-reduce of 1 GB on 4 ranks: 2(4-1) = 6 latencies, 2(4-1)/4 = 1.5 GB sent per rank
    assert cm.collective_seconds("all_reduce", 1e9, 4, link) == pytest.approx(6e-5 + 1.5)
    # all-gather of a 1 GB output on 4 ranks, in 3 calls: 3 x 3 latencies, 0.75 GB sent
    assert cm.collective_seconds("all_gather", 1e9, 4, link, calls=3) == pytest.approx(9e-5 + 0.75)
    # one send of 1 MB: one latency, 1 MB
    assert cm.collective_seconds("send", 1e6, 2, link) == pytest.approx(1e-5 + 1e-3)
    assert cm.collective_seconds("all_reduce", 1e9, 1, link) == 0.0  # alone: nothing to reduce


def test_ddp_hides_all_but_the_last_bucket_behind_backward():
    link = cm.Link(alpha_s=0.0, beta_bytes_per_s=1e9)
    # 100 MB in 4 buckets on 2 ranks: 0.1 s in all, 0.025 s per bucket; backward = 2/3 of 0.3 s = 0.2 s hides
    # everything but the last bucket, which is ready only when backward ends
    ddp = [cm.Collective("all_reduce", 1e8, calls=4, hidden_by="backward")]
    terms = cm.data_parallel_terms(0.3, ddp, 2, link)
    assert (terms.comm_s, terms.exposed_s) == pytest.approx((0.1, 0.025))
    assert terms.step_s == pytest.approx(0.325)
    # the same bytes with a backward of 2/3 x 0.06 = 0.04 s: 0.1 - 0.04 = 0.06 s stays exposed
    assert cm.data_parallel_terms(0.06, ddp, 2, link).exposed_s == pytest.approx(0.06)


def test_collectives_nothing_hides_are_all_exposed():
    link = cm.Link(alpha_s=0.0, beta_bytes_per_s=1e9)
    # ZeRO-1 on 4 ranks: reduce-scatter 1 GB of gradients, all-gather 1 GB of parameters, 0.75 s each
    zero1 = [cm.Collective("reduce_scatter", 1e9), cm.Collective("all_gather", 1e9)]
    terms = cm.data_parallel_terms(10.0, zero1, 4, link)
    assert terms.exposed_s == pytest.approx(1.5) and terms.step_s == pytest.approx(11.5)


def test_pipeline_bubble_is_p_minus_1_over_m_plus_p_minus_1_for_equal_stages():
    terms = cm.pipeline_terms([1.0, 1.0], micro_batches=4)  # p = 2, m = 4: 4 + 1 = 5 stage-times
    assert (terms.compute_s, terms.bubble_s, terms.step_s) == (4.0, 1.0, 5.0)
    assert terms.bubble_s / terms.step_s == 1 / 5  # (p-1)/(m+p-1) at p = 2, m = 4
    four = cm.pipeline_terms([0.5] * 4, micro_batches=8)  # p = 4, m = 8: 3 / 11 idle
    assert four.bubble_s / four.step_s == pytest.approx(3 / 11)


def test_uneven_stages_wait_for_the_busiest():
    # stages of 3 s and 1 s, 4 micro-batches: 3 + 1 + (4 - 1) x 3 = 13 s; the busiest works 12, idles 1
    terms = cm.pipeline_terms([3.0, 1.0], micro_batches=4, send_s=0.1)
    assert terms.compute_s == 12.0 and terms.bubble_s == 1.0
    assert terms.comm_s == pytest.approx(2 * 1 * 4 * 0.1)  # 1 boundary, 2 directions, 4 micro-batches
    assert terms.exposed_s == pytest.approx(0.2)  # the fill's and the drain's sends
    assert terms.step_s == pytest.approx(13.2)


def test_the_cnn_flops_counted_match_the_layers_by_hand():
    # multiply-adds of one sample's forward: conv1 26x26 outputs x 32 channels x 3x3 = 194,688;
    # conv2 11x11 x 64 x (32 x 3x3) = 2,230,272; Linear 1600 -> 64 and 64 -> 10: 103,040. 2 FLOPs each.
    conv1, conv2, linears = 26 * 26 * 32 * 9, 11 * 11 * 64 * 32 * 9, 1600 * 64 + 64 * 10
    forward = 2 * (conv1 + conv2 + linears)
    # backward: weight and input gradients (2x forward each) except conv1's input gradient (the image needs none)
    backward = 2 * (conv1 + 2 * conv2 + 2 * linears)
    assert cm.stage_flops("cnn", 1, 1) == [forward + backward] == [14_778_624]
    # cut in 2 stages as the pipelines cut it: the linears (with their input's gradient) form stage 2
    assert cm.stage_flops("cnn", 2, 64) == [64 * (forward + backward - 6 * linears), 64 * 6 * linears]


def test_the_link_fitted_to_an_allreduce_sweep_recovers_alpha_and_beta():
    alpha, beta = 2e-4, 1.5e9  # 2 ranks: t = 2(2-1) alpha + S / beta
    rows = [{"bytes": size, "seconds": 2 * alpha + size / beta} for size in (4096, 65536, 1 << 20, 1 << 24)]
    link = cm.link_from_allreduce({"rows": rows, "ranks": 2, "backend": "gloo"})
    assert math.isclose(link.alpha_s, alpha, rel_tol=1e-6) and math.isclose(link.beta_bytes_per_s, beta, rel_tol=1e-6)


def test_buckets_and_bad_phases():
    assert cm.buckets(100, 25) == 4 and cm.buckets(101, 25) == 5 and cm.buckets(1, 25) == 1
    with pytest.raises(ValueError, match="hidden_by"):
        cm.exposed_seconds([cm.Collective("all_reduce", 1.0, hidden_by="forward")], 2, cm.Link(0, 1), 1.0)
