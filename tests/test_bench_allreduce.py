"""The all-reduce microbenchmark (dtutor.bench.allreduce): nccl-tests' definitions, the summary, one tiny run."""

import pytest

from dtutor import launch
from dtutor.bench import allreduce

ROWS = [{"bytes": 4096, "seconds": 1e-3, "algbw": 4.096e6, "busbw": 4.096e6},
        {"bytes": allreduce.CNN_GRADIENT_BYTES, "seconds": 2e-3, "algbw": 2.4e8, "busbw": 2.4e8},
        {"bytes": 4 * allreduce.MIB, "seconds": 4e-3, "algbw": 1.0e9, "busbw": 1.0e9},
        {"bytes": allreduce.DDP_BUCKET_BYTES, "seconds": 1.4e-2, "algbw": 1.9e9, "busbw": 1.9e9},
        {"bytes": 64 * allreduce.MIB, "seconds": 3.4e-2, "algbw": 2.0e9, "busbw": 2.0e9}]
RESULT = {"rows": ROWS, "ranks": 2, "backend": "gloo", **allreduce.summary(ROWS)}


def test_the_default_sizes_run_from_4_kib_to_64_mib_with_the_marked_sizes():
    sizes = allreduce.default_sizes()
    assert sizes[0] == 4096 and sizes[-1] == 64 * allreduce.MIB and sizes == sorted(sizes)
    assert allreduce.DDP_BUCKET_BYTES in sizes and allreduce.CNN_GRADIENT_BYTES in sizes


def test_the_summary_reads_latency_peak_and_where_half_the_bandwidth_is_reached():
    assert RESULT["latency_s"] == 1e-3 and RESULT["peak_busbw"] == 2.0e9
    assert RESULT["half_bandwidth_size"] == 4 * allreduce.MIB  # the first size at >= 1 GB/s
    assert RESULT["bucket_fraction_of_peak"] == pytest.approx(0.95)
    assert RESULT["cnn_fraction_of_peak"] == pytest.approx(0.12) and RESULT["cnn_seconds"] == 2e-3


def test_the_table_and_its_sentences_follow_the_numbers():
    text = allreduce.format_allreduce(RESULT)
    assert "25 MiB    14.000ms       1.900       1.900  <- DDP bucket (25 MiB)" in text
    assert "latency (smallest message): 1.00 ms; peak busbw 2.00 GB/s; half of it from 4 MiB on" in text
    assert "DDP's 25 MiB bucket reaches 95% of the peak busbw" in text and "476.3 KiB) 12%, in 2.00 ms" in text
    figure = allreduce.plot_allreduce(RESULT)
    assert figure.texts[0].get_text().endswith("latency 1.00 ms, peak busbw 2.00 GB/s")


def test_a_tiny_measurement_on_two_ranks():
    rows = launch.run("dtutor.bench.allreduce:measure", 2, quiet=True, timeout=300, sizes=[4096, 65536],
                      budget=0.01, loops=1)[0]
    assert [row["bytes"] for row in rows] == [4096, 65536] and {row["backend"] for row in rows} == {"gloo"}
    for row in rows:
        assert row["seconds"] > 0 and row["algbw"] == pytest.approx(row["bytes"] / row["seconds"])
        assert row["busbw"] == row["algbw"]  # 2(n-1)/n = 1 on 2 ranks
