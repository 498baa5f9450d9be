"""Model-state memory measured tensor by tensor: what DeepSpeed and FSDP hold (held_tensors), and real 2-rank runs of
ZeRO and FSDP whose every part is within 10% of the estimator's formula."""

import subprocess

import pytest
import torch

from dtutor.bench import zero
from dtutor.config import ConfigError
from dtutor.pytorch.sharded import formulas, model_state

RUNS = [{"strategy": "deepspeed", "zero_stage": 1, "precision": "fp32"},
        {"strategy": "deepspeed", "zero_stage": 2, "precision": "bf16", "offload": True},
        {"strategy": "deepspeed", "zero_stage": 3, "precision": "fp32", "optimizer": "sgd"},
        {"strategy": "fsdp"}]


def test_held_tensors_finds_tensors_in_attributes_containers_and_gradients():
    layer = torch.nn.Linear(3, 2)
    layer(torch.ones(1, 3)).sum().backward()
    found = {path: tensor for path, tensor in model_state.held_tensors({"model": layer, "extra": [torch.ones(5)]})}
    assert ("model", "_parameters", "weight", "grad") in found and ("extra", "0") in found


def test_a_bad_run_is_refused_before_any_process_starts(monkeypatch):
    monkeypatch.setattr(subprocess, "Popen", lambda *a, **k: pytest.fail("a process was started"))
    with pytest.raises(ConfigError, match="zero_stage"):
        model_state.measure([{"strategy": "deepspeed", "zero_stage": 4}])


@pytest.fixture(scope="module")
def measured():
    return model_state.measure(RUNS, width=512, timeout=300)  # 1.2 M parameters: every ZeRO-3 layer is partitioned


def test_every_part_is_within_ten_percent_of_the_estimator(measured):
    for per_rank in measured:
        row = zero.memory_row(per_rank)
        assert row["within_target"], (row["configuration"], row["ratio"])
        assert [rank["rank"] for rank in per_rank] == [0, 1] and row["parameter_count"] == 1_195_018


def test_what_each_configuration_holds(measured):
    stage1, offload, stage3, fsdp = ({rank["rank"]: rank for rank in per_rank} for per_rank in measured)
    psi = stage1[0]["parameter_count"]
    # ZeRO-1 holds the whole fp32 gradient until the end of backward, and a master copy even in fp32
    assert stage1[0]["moment"] == model_state.BEFORE_REDUCE and stage1[0]["bytes"]["gradients"] == 4 * psi
    assert stage1[0]["bytes"]["master_weights"] == pytest.approx(4 * psi / 2, rel=1e-3)
    # offload: the fp32 gradient partition for the CPU optimizer; no gradient partition kept on the device
    assert offload[1]["bytes"]["host_gradients"] == pytest.approx(4 * psi / 2, rel=1e-3)
    assert offload[1]["bytes"]["gradients"] == 0
    # ZeRO-3 with SGD: momentum is 4 bytes per parameter, partitioned like everything else
    assert stage3[0]["bytes"]["optimizer_state"] == pytest.approx(4 * psi / 2, rel=1e-3)
    # FSDP: half of (4 + 4 + 8) bytes per parameter on each rank, no master copy
    steps = 10 * 4  # Adam's step count: one fp32 scalar per parameter tensor (10 here), on every rank
    assert fsdp[0]["bytes"]["model_state"] == formulas.fsdp_model_state(psi, 2).total + steps
    assert fsdp[0]["bytes"]["master_weights"] == 0
