"""Horovod's gap to DDP (dtutor.bench.horovod_gap): the summary, the table and its conclusions."""

import pytest

from dtutor.bench import horovod_gap


def rank(rate, wall=0.1, cpu=0.1, main=0.09):
    return {"samples_per_s": rate, "wall_per_step": wall, "cpu_per_step": cpu, "main_thread_cpu_per_step": main}


RUNS = {"ddp": [[rank(100), rank(100)], [rank(120), rank(120)]],
        "horovod": [[rank(80, cpu=0.13, main=0.11)] * 2, [rank(90, cpu=0.13, main=0.11)] * 2],
        "horovod, sleeping wait": [[rank(97)] * 2, [rank(118)] * 2],
        "horovod, no fusion": [[{"name": "x", "error": "RuntimeError: boom"}] * 2, [rank(70)] * 2]}


def result():
    return {"rows": horovod_gap.summarize(RUNS), "idle_cpu_per_second": {"horovod": 0.2, "torch.distributed": 0.0}}


def test_each_variant_is_compared_with_ddp_in_the_same_round():
    rows = {row["variant"]: row for row in horovod_gap.summarize(RUNS)}
    assert rows["ddp"]["vs_ddp"] == 1.0 and rows["horovod"]["vs_ddp"] == pytest.approx((0.8 + 0.75) / 2)
    assert rows["horovod"]["main_thread_cpu_per_step"] == pytest.approx(0.11)
    assert rows["horovod"]["other_threads_cpu_per_step"] == pytest.approx(0.02)
    assert rows["horovod, no fusion"]["errors"] == ["RuntimeError: boom"]
    assert rows["horovod, no fusion"]["vs_ddp"] == pytest.approx(70 / 120)  # the failed round is left out


def test_the_conclusions_are_computed_from_the_numbers():
    table = horovod_gap.table_gap(result())
    rows = table.set_index("variant")
    assert rows.loc["horovod", "vs DDP"] == 0.78 and rows.loc["ddp", "vs DDP"] == 1.0
    assert (rows.loc["horovod", "main CPU ms/step"], rows.loc["horovod", "other CPU ms/step"]) == (110.0, 20.0)
    text = " ".join(table.attrs["notes"])
    assert "idle, per rank: horovod 20.0% of a core, torch.distributed 0.0% of a core" in text
    assert "Horovod runs at 0.78 of DDP's samples/s; its main thread uses 110.0 ms of CPU per step against " \
           "DDP's 90.0, its other threads 20.0 against 10.0." in text
    assert "Horovod's background thread uses 20.0% of a core per rank (torch.distributed: 0.0%)" in text
    assert "takes the main thread from 110.0 to 90.0 ms of CPU per step (DDP: 90.0)" in text
    assert "Best variant: horovod, sleeping wait, at 0.98 of DDP: closes the gap (within 5% of DDP)." in text
    worse = {name: runs for name, runs in RUNS.items() if name != "horovod, sleeping wait"}
    notes = horovod_gap.table_gap({**result(), "rows": horovod_gap.summarize(worse)}).attrs["notes"]
    assert "does not close the gap" in notes[-1]


def test_the_variants_are_horovod_beside_ddp():
    assert horovod_gap.VARIANTS["ddp"] == {"strategy": "ddp"}
    assert {v["strategy"] for name, v in horovod_gap.VARIANTS.items() if name != "ddp"} == {"horovod"}
    assert horovod_gap.GroupedHorovod.optimizer_options == {"num_groups": 1}
