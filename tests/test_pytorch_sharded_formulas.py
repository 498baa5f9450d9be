"""The ZeRO formulas and the estimator: the paper's worked example, DeepSpeed's conventions, FSDP, offload."""

import importlib
import os
import subprocess
import sys

import pytest

from dtutor.pytorch.sharded import formulas

GB = 1e9


@pytest.mark.parametrize(("stage", "gigabytes"), [(0, 120.0), (1, 31.4), (2, 16.6), (3, 1.9)])
def test_the_papers_example_7_5_billion_parameters_on_64_gpus(stage, gigabytes):
    paper = formulas.paper_model_state(7.5e9, 64, stage)
    assert round(paper.total / GB, 1) == gigabytes
    assert formulas.model_state(7.5e9, 64, stage, "bf16").total == paper.total  # DeepSpeed in bf16: the same bytes


def test_mixed_precision_adam_by_hand():
    psi, n = 1_000_000, 4
    assert formulas.optimizer_k("adam") == 12 and formulas.optimizer_k("sgd") == 8
    assert formulas.optimizer_k("adam", master=False) == 8 and formulas.optimizer_k("sgd", master=False) == 4
    expected = {0: 16 * psi, 1: 4 * psi + 12 * psi / n, 2: 2 * psi + 14 * psi / n, 3: 16 * psi / n}
    for stage, total in expected.items():
        assert formulas.paper_model_state(psi, n, stage).total == total
    state = formulas.model_state(psi, n, 2, "bf16")
    assert (state.parameters, state.gradients, state.master_weights, state.optimizer_state) == \
        (2 * psi, 2 * psi / n, 4 * psi / n, 8 * psi / n)
    assert state.components() == {"parameters": 2 * psi, "gradients": 2 * psi / n, "optimizer": 12 * psi / n}


def paper_bytes(psi: float, n: int, stage: int, k: int = 12) -> float:
    """The ZeRO paper's per-device model-state memory (Rajbhandari et al., 2020, section 5.1 and figure 1), written
    out here as published, independent of ``formulas``: mixed-precision training keeps 2Ψ bytes of fp16
    parameters, 2Ψ of fp16 gradients and KΨ of optimizer state (K = 12 for mixed-precision Adam: fp32
    parameters, momentum and variance); P_os partitions the KΨ over N_d, P_os+g also the gradients, and
    P_os+g+p also the parameters."""
    return {0: 2 * psi + 2 * psi + k * psi, 1: 2 * psi + 2 * psi + k * psi / n,
            2: 2 * psi + (2 * psi + k * psi) / n, 3: (2 * psi + 2 * psi + k * psi) / n}[stage]


@pytest.fixture(scope="module")
def deepspeed_estimators():
    """DeepSpeed's own estimators (deepspeed.runtime.zero), imported here; the environment is left as it was."""
    before = dict(os.environ)
    stage_1_and_2 = importlib.import_module("deepspeed.runtime.zero.stage_1_and_2")  # a course dependency
    stage3 = importlib.import_module("deepspeed.runtime.zero.stage3")
    for name in set(os.environ) - set(before):
        del os.environ[name]  # deepspeed's import sets PYTORCH_NVML_BASED_CUDA_CHECK
    return stage_1_and_2, stage3


@pytest.mark.parametrize("ranks", [2, 4, 64])
def test_the_course_formulas_are_the_papers_on_the_courses_model(ranks):
    from dtutor import models

    psi = sum(p.numel() for p in models.mnist_cnn().parameters())
    for stage in formulas.STAGES:
        assert formulas.paper_model_state(psi, ranks, stage).total == pytest.approx(paper_bytes(psi, ranks, stage))
        assert formulas.model_state(psi, ranks, stage, "bf16").total == pytest.approx(paper_bytes(psi, ranks, stage))
    assert formulas.paper_model_state(psi, ranks, 0).total == 16 * psi  # (2 + 2 + 12) Ψ, as the paper says


@pytest.mark.parametrize("ranks", [2, 4])
def test_deepspeeds_own_estimators_agree_with_the_formulas_but_for_what_they_add(deepspeed_estimators, ranks):
    """An independent check of the formulas (which were set from a ledger of DeepSpeed's private attributes):
    DeepSpeed's ``estimate_zero2/3_model_states_mem_needs_all_live`` on the course's CNN. Those print GB to
    two decimals (0.00 for this model) and return nothing, so the check calls what they call: ``model_to_params``
    on the model and ``estimate_zero2/3_model_states_mem_needs``, which return bytes. DeepSpeed's figures add,
    on top of the paper's (bf16, Adam), what it keeps while the optimizer steps: an fp32 copy of the gradient
    partition (4Ψ/N, ZeRO-2: 2Ψ + 18Ψ/N), and at ZeRO-3 the largest layer gathered whole (4 bytes per
    parameter) with 18Ψ/N against the paper's 16Ψ/N."""
    from dtutor import models

    stage_1_and_2, stage3 = deepspeed_estimators
    model = models.mnist_cnn()
    psi = stage_1_and_2.model_to_params(model)
    total, largest = stage3.model_to_params(model)
    assert psi == total == sum(p.numel() for p in model.parameters()) == 121_930
    assert largest == 1600 * 64 + 64  # the first linear layer
    course = {stage: formulas.model_state(psi, ranks, stage, "bf16") for stage in (2, 3)}
    offloaded = {stage: formulas.model_state(psi, ranks, stage, "bf16", offload=True) for stage in (2, 3)}
    host_2, device_2 = stage_1_and_2.estimate_zero2_model_states_mem_needs(
        psi, num_gpus_per_node=ranks, cpu_offload=False, additional_buffer_factor=1)
    assert device_2 == course[2].total + 4 * psi / ranks  # + the fp32 gradient partition
    host_2, device_2 = stage_1_and_2.estimate_zero2_model_states_mem_needs(
        psi, num_gpus_per_node=ranks, cpu_offload=True, additional_buffer_factor=1)
    assert device_2 == offloaded[2].device == 2 * psi  # offload: the bf16 parameters stay
    assert host_2 == ranks * offloaded[2].host == 16 * psi  # the node's ranks' master, Adam and fp32 gradients
    _, device_3, gathered = stage3.estimate_zero3_model_states_mem_needs(
        psi, largest, num_gpus_per_node=ranks, cpu_offload=False, cpu_offload_params=False,
        additional_buffer_factor=1)
    assert gathered == 4 * largest and device_3 == course[3].total + 2 * psi / ranks + gathered
    host_3, device_3, _ = stage3.estimate_zero3_model_states_mem_needs(
        psi, largest, num_gpus_per_node=ranks, cpu_offload=True, cpu_offload_params=False,
        additional_buffer_factor=1)
    assert host_3 == ranks * offloaded[3].host  # 16Ψ per node: master, Adam and fp32 gradients in host memory
    assert device_3 == offloaded[3].device - 2 * psi / ranks + gathered  # its bf16 gradients not counted


def test_deepspeed_keeps_an_fp32_master_copy_in_fp32_except_at_stage_0():
    psi, n = 1000, 2
    assert formulas.model_state(psi, n, 0, "fp32").total == (4 + 4 + 8) * psi  # the optimizer steps the parameters
    assert formulas.model_state(psi, n, 0, "fp32").master_weights == 0
    assert formulas.model_state(psi, n, 1, "fp32").total == 4 * psi + 4 * psi + 12 * psi / n
    assert formulas.model_state(psi, n, 2, "fp32").total == 4 * psi + (4 + 12) * psi / n
    assert formulas.model_state(psi, n, 3, "fp32").total == (4 + 4 + 12) * psi / n
    assert formulas.model_state(psi, n, 3, "fp32", master=False).total == (4 + 4 + 8) * psi / n
    assert formulas.model_state(psi, n, 0, "bf16").master_weights == 4 * psi  # 16 bits: a master copy, whole


def test_fsdp_shards_everything_and_keeps_no_master_copy():
    state = formulas.fsdp_model_state(1000, 4)
    assert (state.parameters, state.gradients, state.master_weights, state.optimizer_state) == (1000, 1000, 0, 2000)
    assert formulas.estimate(1000, 4, 0, "fp32", strategy="fsdp") == state
    assert formulas.fsdp_model_state(1000, 4, optimizer="sgd").optimizer_state == 1000


def test_sgd_with_momentum_keeps_one_fp32_value_per_parameter():
    assert formulas.model_state(1000, 2, 1, "bf16", optimizer="sgd").optimizer_state == 4 * 1000 / 2
    assert formulas.model_state(1000, 2, 1, "bf16", optimizer="sgd").optimizer == 8 * 1000 / 2


def test_offload_moves_the_optimizer_to_the_host():
    psi, n = 1000, 2
    plain, offloaded = formulas.model_state(psi, n, 2, "bf16"), formulas.model_state(psi, n, 2, "bf16", offload=True)
    assert plain.host == 0 and plain.device == plain.total
    assert offloaded.host == (4 + 8 + 4) * psi / n  # master, Adam, the fp32 gradient partition
    assert offloaded.device == 2 * psi  # stage 2: the bf16 parameters; gradients go to the host
    assert offloaded.device + offloaded.host == offloaded.total
    whole_gradient_in_backward = 2 * psi + 2 * psi
    assert formulas.model_state(psi, n, 1, "bf16", offload=True).device == whole_gradient_in_backward
    assert formulas.model_state(psi, n, 3, "bf16", offload=True).device == (2 + 2) * psi / n


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"parameters": 0}, "parameters: must be a number > 0"),
        ({"ranks": 0}, "ranks: must be a whole number >= 1"),
        ({"stage": 4}, "stage: must be 0, 1, 2 or 3"),
        ({"precision": "fp8"}, "precision: must be one of fp32, bf16, fp16"),
        ({"optimizer": "lamb"}, "optimizer: must be one of adam, sgd"),
        ({"stage": 0, "offload": True}, "offload: DeepSpeed offloads a partitioned optimizer only"),
    ],
)
def test_bad_input_names_the_field(kwargs, message):
    with pytest.raises(ValueError, match=message):
        formulas.model_state(**{"parameters": 1000, "ranks": 2, "stage": 1, **kwargs})


def test_estimate_refuses_what_it_does_not_know():
    with pytest.raises(ValueError, match="strategy: the estimator knows"):
        formulas.estimate(1000, 2, 1, strategy="ddp")
    with pytest.raises(ValueError, match="offload: the course's FSDP strategy does not offload"):
        formulas.estimate(1000, 2, 0, offload=True, strategy="fsdp")


def test_the_formulas_import_no_framework():
    code = ("import sys, dtutor.pytorch.sharded.formulas, dtutor.pytorch.sharded.widget, "
            "dtutor.pytorch.sharded.deepspeed_config, dtutor.bench.zero; print('torch' in sys.modules)")
    assert subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout == "False\n"
