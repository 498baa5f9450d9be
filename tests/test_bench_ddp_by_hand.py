"""``python -m dtutor.bench ddp_by_hand``: its quick mode once (a tiny MLP), the table's shape and call counts."""

import pytest

from dtutor import models
from dtutor.bench import ddp_by_hand, parser

# wide_mlp(64, 2): Linear 784->64, 64->64, 64->10, a weight and a bias each: 6 tensors. Last first, in fp32 bytes:
# 4 * (10 + 640) + 4 * (64 + 4096) = 19,240 B, over the quick mode's 16 KiB: bucket 1 closes; 784->64: bucket 2.
TENSORS, BUCKETS = 6, 2


@pytest.fixture(scope="module")
def quick():
    return ddp_by_hand.bench_ddp_by_hand("quick", timeout=240)


def test_the_command_line_runs_it_with_a_mode():
    args = parser().parse_args(["ddp_by_hand", "--mode", "quick", "--json", "out.json"])
    assert args.mode == "quick" and args.json == "out.json" and args.run.__name__ == "_ddp_by_hand"


def test_the_quick_table_has_a_row_per_version_with_its_all_reduce_calls(quick):
    settings = ddp_by_hand.MODES["quick"]
    assert len(list(models.wide_mlp(settings["width"], settings["depth"]).parameters())) == TENSORS
    table = ddp_by_hand.table_ddp_by_hand(quick)
    assert list(table["version"]) == ["naive", "bucketed", "overlapped", "torch_ddp"]
    assert list(table.columns) == ["version", "all-reduces step 1", "all-reduces later steps", "median ms",
                                   "spread (IQR) ms", "vs naive"]
    assert list(table["all-reduces step 1"]) == [TENSORS, BUCKETS, BUCKETS, 1]  # DDP: one bucket until it rebuilds
    assert list(table["all-reduces later steps"]) == [TENSORS, BUCKETS, BUCKETS, BUCKETS]
    assert (table["median ms"] > 0).all() and (table["spread (IQR) ms"] >= 0).all() and table["vs naive"][0] == 1.0
    assert all(len(v["seconds"]) == settings["steps"] for v in quick["versions"].values())
    assert "55,050 parameters in 6 tensors" in table.attrs["notes"][0] and "16 KiB" in table.attrs["notes"][0]
