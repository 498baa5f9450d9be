"""The clusters' and models' figures: each cluster's links, each model's FLOPs per sample."""

from dtutor import clusters
from dtutor.tables import text


def test_every_cluster_names_a_source_for_each_figure_and_picks_its_link_by_span():
    for cluster in clusters.CLUSTERS.values():
        assert cluster.memory_bytes == 80e9 and all(source for _, _, source in cluster.sources)
    two_nodes = clusters.CLUSTERS["2x8 H100 SXM, IB"]
    assert two_nodes.gpus == 16
    assert two_nodes.link(8) is two_nodes.intra and two_nodes.link(16) is two_nodes.inter
    workstation = clusters.CLUSTERS["4x H100 PCIe"]
    assert workstation.peak_flops == 756e12 and workstation.link(4).beta_bytes_per_s == 35e9


def test_a_transformer_trains_on_6n_flops_per_token_and_the_cnn_on_its_counted_flops():
    seven = clusters.transformer("7B")
    assert seven.flops_per_sample == 6 * 7e9 * 2048 and seven.tokens_per_step == 256 * 2048
    cnn = clusters.cnn()
    assert cnn.flops_per_sample == 14_778_624  # test_bench_cost_model derives it layer by layer
    assert cnn.tensor_share == 6 * (1600 * 64 + 64 * 10) / 14_778_624  # the linear pair, with its input gradient


def test_the_figures_table_gives_every_figure_a_source():
    figures = clusters.table_figures()
    assert figures["source"].str.len().min() > 10
    assert {"989.4 TFLOP/s", "756 TFLOP/s", "460 GB/s (460-480)", "400 GB/s (400-450)"} <= set(figures["value"])
    assert max(len(line) for line in text(figures).splitlines()) <= 150
