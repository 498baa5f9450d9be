"""The CSDN article's claims beside the numbers (dtutor.bench.claims): every verdict follows the invented
result, and a timing verdict carries its spread over the rounds and is undecided when they disagree."""

import copy

import pytest
from conftest import fake_bench_result

from dtutor.bench import claims


def verdicts(result, gpu_results=None):
    return {c["method"]: c["verdict"] for c in claims.claims(result, gpu_results)}


def test_each_row_of_the_article_gets_a_verdict_from_the_numbers():
    found = {c["method"]: c for c in claims.claims(fake_bench_result())}
    assert list(found) == [row["method"] for row in claims.ARTICLE_TABLE]
    assert found["DataParallel"]["verdict"] == "unmeasured"
    assert "results/gpu/ is empty" in found["DataParallel"]["measured"]
    assert found["DDP"]["verdict"] == "confirms"  # theory's bytes, 1.06 and 1.04 of the ceiling
    assert "rounds: 1.04 to 1.06 over 2 rounds; confirms from 0.9 on" in found["DDP"]["measured"]
    assert found["Horovod"]["verdict"] == "limits"  # the same bytes, 0.83 and 0.81 of DDP's efficiency
    assert "scales 0.73 against DDP's 0.89 (its share of DDP's, rounds: 0.81 to 0.83 over 2 rounds; limits " \
           "below 0.95); its workers use +10.0 ms of CPU per step" in found["Horovod"]["measured"]
    assert found["MirroredStrategy"]["verdict"] == "corrects"  # its (invented) proof failed
    assert found["DeepSpeed"]["verdict"] == "limits"  # less memory, but slower
    assert "ZeRO-3 33% of DDP's (1,463 kB)" in found["DeepSpeed"]["measured"]


def _rescale(result, name, factor, rounds=(0, 1)):
    """``result`` with run ``name``'s samples/s multiplied by ``factor`` in ``rounds``."""
    changed = copy.deepcopy(result)
    for entry in changed["records"]:
        if entry["case"]["name"] == name and entry["round"] in rounds:
            for rank in entry["ranks"]:
                rank["samples_per_s"] *= factor
    return changed


def test_verdicts_change_when_the_rounds_do():
    result = fake_bench_result()
    assert verdicts(_rescale(result, "horovod@2", 1.3))["Horovod"] == "confirms"  # 1.08 and 1.06 of DDP's
    assert verdicts(_rescale(result, "ddp@2", 0.8))["DDP"] == "limits"  # 0.85 and 0.83 of the ceiling
    assert verdicts(_rescale(result, "deepspeed_zero3@2", 4))["DeepSpeed"] == "confirms"  # faster than DDP
    rows = {row["key"]: row for row in result["rows"]}
    rows["deepspeed_zero3"]["model_state_bytes"] = 10**9
    assert verdicts(result)["DeepSpeed"] == "corrects"  # no memory saved: whatever the speed


def test_rounds_on_both_sides_of_the_threshold_leave_the_verdict_undecided():
    split = _rescale(fake_bench_result(), "horovod@2", 1.3, rounds=(0,))  # round 0: 1.08 of DDP's; round 1: 0.81
    found = {c["method"]: c for c in claims.claims(split)}
    assert found["Horovod"]["verdict"] == "undecided" and "0.81 to 1.08 over 2 rounds" in found["Horovod"]["measured"]
    one_round = fake_bench_result()
    one_round["records"] = [entry for entry in one_round["records"] if entry["round"] == 0]
    found = {c["method"]: c for c in claims.claims(one_round)}
    assert {found[m]["verdict"] for m in ("DDP", "Horovod", "DeepSpeed")} == {"undecided"}
    assert "1.06, one round: no spread" in found["DDP"]["measured"]


def test_judge_and_spread():
    assert claims.judge([0.91, 0.95], 0.9, "yes", "no") == "yes"
    assert claims.judge([0.5, 0.89], 0.9, "yes", "no") == "no"
    assert claims.judge([0.85, 0.95], 0.9, "yes", "no") == "undecided"
    assert claims.judge([0.95], 0.9, "yes", "no") == "undecided"
    assert claims.spread([0.812, 0.934, 0.9]) == "0.81 to 0.93 over 3 rounds" and claims.spread([]) == "no round"


def test_a_strategy_that_did_not_run_is_unmeasured_not_guessed():
    result = fake_bench_result()
    result["rows"] = [row for row in result["rows"] if row["key"] != "horovod"]
    assert verdicts(result)["Horovod"] == "unmeasured"


def test_the_markdown_table_has_the_articles_columns_and_two_more():
    text = claims.claims_markdown(fake_bench_result())
    assert text.splitlines()[0].endswith("| the article's claim | verdict | measured here |")
    assert ('| DDP | PyTorch | data, one process per GPU | many GPUs, many machines | '
            '"reduces communication overhead" | **confirms** |') in text


def test_dataparallel_is_judged_by_a_recorded_gpu_run_only():
    gpu = fake_bench_result() | {"dataparallel_memory": [3 * 2**30, 2 * 2**30, 2 * 2**30]}
    gpu["machine"] = gpu["machine"] | {"gpus": ["NVIDIA H100"] * 3, "date": "2026-12-01T10:00:00+00:00"}
    found = {c["method"]: c for c in claims.claims(fake_bench_result(), [gpu])}
    assert found["DataParallel"]["verdict"] == "confirms"
    assert "recorded on 3 x NVIDIA H100, 2026-12-01: the first GPU peaks at 3.00 GiB, +50% against the others' " \
           "mean (2.00 GiB)" in found["DataParallel"]["measured"]
    no_memory = {c["method"]: c for c in claims.claims(fake_bench_result(), [fake_bench_result()])}["DataParallel"]
    assert no_memory["verdict"] == "unmeasured" and "needs 2 GPUs or more" in no_memory["measured"]


def test_median_and_range():
    assert claims.median_and_range([0.8, 0.95, 0.9]) == "0.90 (0.80-0.95)"
    assert claims.median_and_range([1.2345], 3) == "1.234" and claims.median_and_range([]) == "-"


def test_scaling_rounds_give_each_figure_with_its_spread_by_wall_clock_and_by_cpu_time():
    result = fake_bench_result()  # every PyTorch rank: 0.1 CPU s per step (Horovod's first: 0.12); batch 64 per run
    cpu = claims.cpu_per_sample_by_round(result["records"])
    assert cpu["single@1"] == {0: 0.1 / 64, 1: 0.1 / 64} and cpu["ceiling"][0] == 0.2 / (2 * 64)  # a batch per rank
    assert cpu["horovod@2"][1] == pytest.approx(0.22 / 64) and "proof:ddp" not in cpu  # proof runs are not timed
    rows = {row["row"]: row for row in claims.scaling_rounds(result)}
    assert list(rows) == ["ceiling (2 single runs)", "ddp", "horovod", "mirrored"]  # ZeRO-3 failed at 1 worker
    assert rows["ceiling (2 single runs)"]["T2/(2T1)"] == "0.85 (0.85-0.85)"  # (90 + 80) / 200, (99 + 88) / 220
    assert rows["ddp"]["T2/(2T1)"] == "0.89 (0.88-0.90)"  # 180 / 200, 176 / 200
    assert rows["ddp"]["/ceiling"] == "1.05 (1.04-1.06)"  # 0.9 / 0.85, 0.88 / 0.85
    assert rows["horovod"]["CPU ms/sample 1 w"] == "1.562 (1.562-1.562)"
    assert rows["horovod"]["2 w"] == "3.438 (3.438-3.438)"
    assert rows["horovod"]["by CPU: 1 w / 2 w"] == "0.45 (0.45-0.45)"  # 1.5625 / 3.4375
    assert rows["mirrored"]["CPU ms/sample 1 w"] == "1.562 (1.562-1.562)"
    assert claims.table_scaling_rounds(result).attrs["title"] == "Scaling over 2 round(s): median (min-max)"
    ddp = next(c for c in claims.claims(result) if c["method"] == "DDP")["measured"]
    assert "the ceiling's own rounds: 0.85 to 0.85 over 2 rounds; by CPU time, one worker's CPU per sample over " \
           "two workers': 0.50 (0.50-0.50)" in ddp  # 0.1 s per step on 1 worker, 2 x 0.1 s on 2, the same batch
