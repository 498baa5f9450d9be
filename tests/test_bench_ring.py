"""The ring benchmark (dtutor.bench.ring): the α-β fit on invented times, its tables, one tiny quick run."""

import math

import pytest

from dtutor.bench import parser, ring
from dtutor.bench.allreduce import SIZES

ALPHA, BETA = 50e-6, 2e9  # invented: 50 µs per step, 2 GB/s


def _times(alpha: float, beta: float, ranks: int) -> list[float]:
    """What the model gives, written out here rather than through the module's own formula."""
    return [2 * (ranks - 1) * alpha + 2 * (ranks - 1) / ranks * size / beta for size in SIZES]


@pytest.mark.parametrize("ranks", [2, 4, 8])
def test_the_fit_finds_the_alpha_and_beta_the_times_were_made_with(ranks):
    fit = ring.fit_alpha_beta(SIZES, _times(ALPHA, BETA, ranks), ranks)
    assert fit["alpha_s"] == pytest.approx(ALPHA, rel=1e-9) and fit["beta_bytes_per_s"] == pytest.approx(BETA, rel=1e-9)
    assert fit["worst_relative_error"] < 1e-9


def test_the_fit_with_noise_stays_near_and_says_how_far_it_is():
    noisy = [t * (1.1 if index % 2 else 0.9) for index, t in enumerate(_times(ALPHA, BETA, 4))]
    fit = ring.fit_alpha_beta(SIZES, noisy, 4)
    assert fit["alpha_s"] == pytest.approx(ALPHA, rel=0.15) and fit["beta_bytes_per_s"] == pytest.approx(BETA, rel=0.15)
    assert 0.05 < fit["worst_relative_error"] < 0.2


def test_times_that_do_not_grow_with_size_fit_no_bandwidth_limit():
    flat = ring.fit_alpha_beta(SIZES, [1e-3] * len(SIZES), 4)
    assert flat["alpha_s"] == pytest.approx(1e-3 / 6) and flat["beta_bytes_per_s"] > 1e18
    shrinking = ring.fit_alpha_beta(SIZES, [1e-3 - size * 1e-12 for size in SIZES], 4)
    assert math.isinf(shrinking["beta_bytes_per_s"])


def test_the_tables_put_both_implementations_side_by_side():
    rows = [{"bytes": size, "ranks": 4, "backend": "gloo", "ring_all_reduce": t, "dist.all_reduce": t / 2}
            for size, t in zip(SIZES, _times(ALPHA, BETA, 4), strict=True)]
    fits = {name: ring.fit_alpha_beta(SIZES, [row[name] for row in rows], 4) for name in ring.IMPLEMENTATIONS}
    result = {"rows": rows, "ranks": 4, "backend": "gloo", "fits": fits}
    times = ring.table_times(result)
    assert list(times.columns) == ["size", "ring_all_reduce ms", "ring_all_reduce fit ms", "dist.all_reduce ms",
                                   "dist.all_reduce fit ms", "by hand / gloo"]
    assert list(times["size"]) == ["4 KiB", "16 KiB", "64 KiB", "256 KiB", "1 MiB", "4 MiB", "16 MiB", "64 MiB"]
    assert set(times["by hand / gloo"]) == {2.0}
    fits = ring.table_fits(result)
    assert fits.values.tolist() == [["ring_all_reduce", 50.0, 2.0, 0.0], ["dist.all_reduce", 25.0, 4.0, 0.0]]
    assert "6 latencies and 1.50 x S bytes" in fits.attrs["notes"][0]


def test_the_command_line_knows_the_ring():
    args = parser().parse_args(["ring", "--mode", "quick", "--ranks", "2"])
    assert (args.mode, args.ranks) == ("quick", 2)


def test_a_tiny_quick_run_on_two_ranks():
    result = ring.bench_ring(2, quick=True, sizes=[4096, 16384])
    assert [row["bytes"] for row in result["rows"]] == [4096, 16384] and result["backend"] == "gloo"
    assert all(row[name] > 0 for row in result["rows"] for name in ring.IMPLEMENTATIONS)
    assert ring.table_times(result).shape == (2, 6) and ring.table_fits(result).shape == (2, 4)
