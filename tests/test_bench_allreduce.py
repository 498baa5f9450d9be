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
    table = allreduce.table_allreduce(RESULT)
    assert table.attrs["title"] == "all-reduce on 2 ranks (gloo), float32; busbw = algbw x 2(n-1)/n"
    assert list(table["size"]) == ["4 KiB", "476.3 KiB", "4 MiB", "25 MiB", "64 MiB"]
    bucket = table.set_index("size").loc["25 MiB"]
    assert list(bucket) == [14.0, 1.9, 1.9, "DDP bucket (25 MiB)"]  # time ms, algbw GB/s, busbw GB/s, marks
    assert table.set_index("size").loc["476.3 KiB", "marks"] == "the CNN's gradient"
    assert table["time ms"].tolist() == [1.0, 2.0, 4.0, 14.0, 34.0] and table["busbw GB/s"].iloc[0] == 0.004
    text = " ".join(table.attrs["notes"])
    assert "latency (fastest message up to 64 KiB): 1.00 ms; peak busbw 2.00 GB/s; half of it from 4 MiB on" in text
    assert "DDP's 25 MiB bucket reaches 95% of the peak busbw" in text and "476.3 KiB) 12%, in 2.00 ms" in text
    figure = allreduce.plot_allreduce(RESULT)
    assert figure.texts[0].get_text().endswith("latency 1.00 ms, peak busbw 2.00 GB/s")


def test_latency_is_the_fastest_small_message_not_the_first_one_timed():
    rows = [dict(ROWS[0], seconds=3e-3), {"bytes": 16384, "seconds": 0.9e-3, "algbw": 1.8e7, "busbw": 1.8e7},
            *ROWS[1:]]
    assert allreduce.summary(rows)["latency_s"] == 0.9e-3


def test_a_run_without_the_marked_sizes_says_nothing_about_them():
    small = [row for row in ROWS if row["bytes"] <= 4 * allreduce.MIB and row["bytes"] != allreduce.CNN_GRADIENT_BYTES]
    result = {"rows": small, "ranks": 4, "backend": "gloo", **allreduce.summary(small)}
    assert result["bucket_fraction_of_peak"] is None and result["cnn_seconds"] is None
    assert not any("bucket" in note for note in allreduce.table_allreduce(result).attrs["notes"])


def test_four_ranks_show_what_busbw_adds_to_algbw():
    four = [dict(row, busbw=row["algbw"] * 1.5) for row in ROWS[:3]]
    results = [RESULT, {"rows": four, "ranks": 4, "backend": "gloo", **allreduce.summary(four)}]
    table = allreduce.table_ranks(results)
    assert list(table.columns) == ["ranks", "2(n-1)/n", "ms at 4 MiB", "algbw GB/s", "busbw GB/s", "latency ms"]
    assert table.values.tolist() == [[2, 1.0, 4.0, 1.0, 1.0, 1.0], [4, 1.5, 4.0, 1.0, 1.5, 1.0]]
    figure = allreduce.plot_allreduce(results)
    labels = [t.get_text() for t in figure.axes[1].get_legend().texts]
    assert "2 ranks: busbw = 1.00 x algbw" in labels and "4 ranks: busbw = 1.50 x algbw" in labels


def test_a_tiny_measurement_on_two_ranks():
    rows = launch.run("dtutor.bench.allreduce:measure", 2, quiet=True, timeout=300, sizes=[4096, 65536],
                      budget=0.01, loops=1)[0]
    assert [row["bytes"] for row in rows] == [4096, 65536] and {row["backend"] for row in rows} == {"gloo"}
    for row in rows:
        assert row["seconds"] > 0 and row["algbw"] == pytest.approx(row["bytes"] / row["seconds"])
        assert row["busbw"] == row["algbw"]  # 2(n-1)/n = 1 on 2 ranks
