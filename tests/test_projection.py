"""The projection onto GPU clusters, on cases worked out by hand (the figures are dtutor.clusters')."""

import math

import pytest

from dtutor import projection as pj
from dtutor.clusters import CLUSTERS, cnn, transformer
from dtutor.strategies import STRATEGIES
from dtutor.tables import text

NODE = CLUSTERS["8x H100 SXM"]  # 989.4 TFLOP/s per GPU, NVLink all-reduce at 460 GB/s, α = 1 µs per hop
N, TOKENS = 7e9, 256 * 2048  # 7B parameters; 256 sequences of 2,048 tokens per step
SEVEN_B = transformer("7B")  # 32 layers, hidden 4,096, 32 heads, one sequence per micro-batch
PEAK, MFU = 989.4e12, 0.40
# Korthikanti et al.'s activations of one 2,048-token sequence, per layer: s·h·(34 + 5·a·s/h) = s·h·114 bytes
ACTIVATIONS = 32 * 2048 * 4096 * (34 + 5 * 32 * 2048 / 4096)


def _project(label, model=SEVEN_B, cluster=NODE):
    name, extra = next((name, extra) for variant, name, extra in pj.variants() if variant == label)
    return pj.project(model, cluster, label, name, extra)


def test_7b_on_zero3_over_8_gpus_keeps_16n_over_8_bytes_of_model_state():
    zero3 = _project("ZeRO-3")
    assert zero3.memory_bytes == pytest.approx(16 * N / 8 + ACTIVATIONS)  # 14 GB + 30.6 GB: fits 80 GB
    assert zero3.fits is True
    ddp = _project("ddp")
    assert ddp.memory_bytes == pytest.approx(16 * N + ACTIVATIONS) and ddp.fits is False  # 112 GB of state alone


def test_ddp_all_reduces_2_n_minus_1_over_n_of_the_gradients_once_per_step():
    ddp = _project("ddp")
    gradients = 4 * N  # fp32: autocast keeps fp32 parameters, so DDP all-reduces fp32 gradients
    buckets = math.ceil(gradients / (25 * 2**20))  # DDP's 25 MiB buckets: 1,069 calls, 2(8-1) hops each
    expected = buckets * 14 * 1e-6 + 2 * 7 / 8 * gradients / 460e9
    assert ddp.terms.comm_s == pytest.approx(expected)
    # 8 GPUs x 1 sequence per micro-batch: 32 micro-batches, each 1/32 of the compute; the last one's backward
    # (2/3 of it) hides all but the last bucket
    compute = 6 * N * TOKENS / 8 / (PEAK * MFU)
    assert ddp.terms.compute_s == pytest.approx(compute)
    assert ddp.terms.exposed_s == pytest.approx(expected / buckets)


def test_tokens_per_second_and_mfu_follow_from_the_step_time():
    single = _project("single")
    assert single.gpus == 1
    assert single.terms.step_s == pytest.approx(6 * N * TOKENS / (PEAK * MFU))  # 55.7 s: nothing to send
    assert single.tokens_per_s == pytest.approx(TOKENS / single.terms.step_s)
    assert single.mfu == pytest.approx(MFU)
    zero2 = _project("ZeRO-2")
    assert zero2.tokens_per_s == pytest.approx(TOKENS / zero2.terms.step_s)
    assert zero2.mfu == pytest.approx(6 * N * TOKENS / (zero2.terms.step_s * 8 * PEAK))


def test_1f1b_on_8_stages_idles_p_minus_1_over_m_plus_p_minus_1_and_holds_p_micro_batches():
    gpipe, one_f_one_b = _project("pipeline_gpipe"), _project("pipeline_1f1b")
    stage = 4 / 32 * 6 * N * 2048 / (PEAK * MFU)  # 4 of 32 layers, one sequence
    assert one_f_one_b.terms.compute_s == pytest.approx(256 * stage)
    assert one_f_one_b.terms.bubble_s == pytest.approx(7 * stage)
    busy = one_f_one_b.terms.compute_s + one_f_one_b.terms.bubble_s
    assert one_f_one_b.terms.bubble_s / busy == pytest.approx(7 / (256 + 7))
    state = 16 * N / 8  # a stage's 4 of 32 layers, whole model state
    assert one_f_one_b.memory_bytes == pytest.approx(state + 8 * ACTIVATIONS / 8)  # 8 micro-batches x 4 layers
    assert gpipe.memory_bytes == pytest.approx(state + 256 * ACTIVATIONS / 8) and gpipe.fits is False


def test_strategies_that_cannot_run_say_why():
    assert "one machine" in pj.project(SEVEN_B, CLUSTERS["2x8 H100 SXM, IB"], "dataparallel", "dataparallel", {}).note
    small = transformer("1.3B")  # 24 layers on 32 GPUs
    stuck = _project("pipeline_1f1b", small, CLUSTERS["4x8 H100 SXM, IB"])
    assert stuck.terms is None and "24 layers cannot fill 32 stages" in stuck.note


def test_the_table_covers_every_registry_strategy_on_every_cluster():
    projections = pj.project_all([SEVEN_B])
    names = {name for _, name, _ in pj.variants()}
    assert names == set(STRATEGIES)
    assert len(projections) == len(CLUSTERS) * len(pj.variants())
    frame = pj.table_projection(projections)
    assert frame.attrs["title"].startswith("PROJECTION")
    assert max(len(line) for line in text(frame).splitlines()) <= 150


def test_asking_which_strategy_for_7b_on_8_h100_gives_the_rows_behind_the_answer():
    frame = pj.ask("7B", "8x H100 SXM")
    # the guide's rules: a whole copy (16 x 7e9 = 112 GB) exceeds 70% of 80 GB, 1/8 of it (14 GB) fits: FSDP
    assert "the guide's rules pick fsdp" in frame.attrs["title"]
    fits = list(frame["fits"])
    assert fits == sorted(fits, key=lambda value: value != "yes")  # those that fit come first
    fitting = frame[frame["fits"] == "yes"]["step ms"]
    assert list(fitting) == sorted(fitting)  # fastest first
    assert f"projected fastest that fits: {frame['strategy'].iloc[0]}," in frame.attrs["title"]
    with pytest.raises(ValueError, match="model, cluster"):
        pj.ask("70B", "8x H100 SXM")


def test_the_cnns_activations_are_what_autograd_saves_per_image():
    """Per image, fp32 (int64 for the pooling indices and targets): input 784 x 4, ReLU 1 32·26·26 x 4, pool 1
    indices 32·13·13 x 8, its output 32·13·13 x 4, ReLU 2 64·11·11 x 4, pool 2 indices 64·5·5 x 8, its output
    1600 x 4, ReLU 3 64 x 4, log-softmax 10 x 4, target 8: 205,040 bytes; plus the loss's 4-byte scalar per batch."""
    assert pj.activation_bytes(cnn()) == 205_040 * 256 + 4
