"""The memory table of notebook 05 and ``bench pipeline``: parameter bytes per rank of each split, and its text."""

import pandas as pd
import pytest

from dtutor.pytorch.model_parallel import memory_and_speed


def test_parameter_memory_per_rank_of_each_split():
    rows = memory_and_speed.measured_table("cnn", speed=False)
    assert [(r["layout"], r["strategy"]) for r in rows] == [
        ("unsplit", "single"), ("article's split (part1 | part2)", "-"), ("pipeline stages", "pipeline_gpipe"),
        ("pipeline stages", "pipeline_1f1b"), ("tensor parallel shards", "tensor_parallel")]
    assert all(r["samples_per_s"] is None for r in rows)
    assert rows[1]["largest_share"] == pytest.approx(1 - 320 / 121_930)
    found = {r["layout"]: r["bytes_per_rank"] for r in rows}
    whole = 121_930 * 4
    assert found["unsplit"] == [whole, whole]
    assert found["article's split (part1 | part2)"] == [320 * 4, whole - 320 * 4]
    assert sum(found["pipeline stages"]) == whole and min(found["pipeline stages"]) > 0
    shards = found["tensor parallel shards"]  # 1600 x 64 and 64 x 10 halved, the rest whole
    assert shards[0] == shards[1] == whole - (1600 * 64 + 64 + 64 * 10) * 4 // 2


def test_memory_table_for_people():
    rows = [{"layout": "unsplit", "strategy": "single", "bytes_per_rank": [4096, 4096], "largest_share": 1.0,
             "samples_per_s": 1234.0},
            {"layout": "article's split (part1 | part2)", "strategy": "-", "bytes_per_rank": [1024, 3072],
             "largest_share": 0.75, "samples_per_s": None}]
    table = memory_and_speed.table_memory(rows)
    assert list(table.columns) == ["layout", "strategy", "parameter kB per rank", "largest share %", "samples/s"]
    assert table.iloc[0].tolist() == ["unsplit", "single", "4.0 | 4.0", 100, 1234]
    assert table.iloc[1].tolist()[2:4] == ["1.0 | 3.0", 75] and pd.isna(table.iloc[1]["samples/s"])
