"""The seed's claims beside the numbers (dtutor.bench.claims): every verdict follows the invented result."""

from test_bench_rows import fake_result

from dtutor.bench import claims


def verdicts(result, gpu_results=None):
    return {c["method"]: c["verdict"] for c in claims.claims(result, gpu_results)}


def test_each_seed_row_gets_a_verdict_from_the_numbers():
    found = {c["method"]: c for c in claims.claims(fake_result())}
    assert list(found) == [row["method"] for row in claims.SEED_TABLE]
    assert found["DataParallel"]["verdict"] == "unmeasured"
    assert "results/gpu/ is empty" in found["DataParallel"]["measured"]
    assert found["DDP"]["verdict"] == "confirms"  # theory's bytes, 1.05 of the ceiling
    assert found["Horovod"]["verdict"] == "limits"  # the same bytes, 0.73 against DDP's 0.89
    assert "scales 0.73 against DDP's 0.89 (82% of it); its workers use +10.0 ms of CPU per step" in \
        found["Horovod"]["measured"]
    assert found["MirroredStrategy"]["verdict"] == "corrects"  # its (invented) proof failed
    assert found["DeepSpeed"]["verdict"] == "limits"  # less memory, but slower
    assert "ZeRO-3 33% of DDP's (1,463 kB)" in found["DeepSpeed"]["measured"]


def test_verdicts_change_when_the_numbers_do():
    result = fake_result()
    rows = {row["key"]: row for row in result["rows"]}
    rows["horovod"]["efficiency"] = rows["ddp"]["efficiency"]
    rows["ddp"]["vs_ceiling"] = 0.5
    rows["deepspeed_zero3"]["samples_per_s_2"] = 1000
    assert verdicts(result)["Horovod"] == "confirms" and verdicts(result)["DDP"] == "limits"
    assert verdicts(result)["DeepSpeed"] == "confirms"
    rows["deepspeed_zero3"]["model_state_bytes"] = 10**9
    assert verdicts(result)["DeepSpeed"] == "corrects"


def test_a_strategy_that_did_not_run_is_unmeasured_not_guessed():
    result = fake_result()
    result["rows"] = [row for row in result["rows"] if row["key"] != "horovod"]
    assert verdicts(result)["Horovod"] == "unmeasured"


def test_the_markdown_table_has_the_seeds_columns_and_two_more():
    text = claims.claims_markdown(fake_result())
    assert text.splitlines()[0].endswith("| the seed's claim | verdict | measured here |")
    assert ('| DDP | PyTorch | data, one process per GPU | many GPUs, many machines | '
            '"reduces communication overhead" | **confirms** |') in text


def test_dataparallel_is_judged_by_a_recorded_gpu_run_only():
    gpu = fake_result() | {"dataparallel_memory": [3 * 2**30, 2 * 2**30, 2 * 2**30]}
    gpu["machine"] = gpu["machine"] | {"gpus": ["NVIDIA H100"] * 3, "date": "2026-12-01T10:00:00+00:00"}
    found = {c["method"]: c for c in claims.claims(fake_result(), [gpu])}
    assert found["DataParallel"]["verdict"] == "confirms"
    assert "recorded on 3 x NVIDIA H100, 2026-12-01: the first GPU peaks at 3.00 GiB, +50% against the others' " \
           "mean (2.00 GiB)" in found["DataParallel"]["measured"]
    no_memory = {c["method"]: c for c in claims.claims(fake_result(), [fake_result()])}["DataParallel"]
    assert no_memory["verdict"] == "unmeasured" and "needs 2 GPUs or more" in no_memory["measured"]
