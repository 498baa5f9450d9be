"""DeepSpeed's ZeRO stages on 2 gloo ranks, proven equal to DDP (fp32, the registry's tolerance; measured 0.0)."""

from pathlib import Path

import pytest
from conftest import SMALL_RUN

from dtutor import TrainConfig, launch, max_difference, models
from dtutor.config import ConfigError
from dtutor.result import identical
from dtutor.strategies import STRATEGIES

SETUP = {**SMALL_RUN, "optimizer": "adam", "lr": 1e-3, "timeout": 300, "quiet": True}
TOLERANCE = STRATEGIES["deepspeed"].tolerance  # the same gradient sums as DDP; measured 0.0 for every stage
# Accumulation adds two half-batch gradients where DDP takes one big batch: float32 rounding of ~1e-9 in a
# gradient, which Adam's division by sqrt(v) magnifies for the smallest gradients; measured 1.04e-6 after 4 steps.
ACCUMULATION_TOLERANCE = 1e-5
# bf16 weights against fp32, 4 SGD steps: a weight near 0.5 is stored to 2^-9 x 0.5 ~ 1e-3; measured 1.03e-3, while
# the same bf16 run at twice the learning rate lies 1.2e-2 away (so this tolerance can fail). With Adam's 4 steps of
# 1e-3 no weight moves far enough for any tolerance to tell a right run from a wrong one.
BF16_TOLERANCE = 4e-3


STAGES = [(1, False), (2, False), (3, False), (3, True)]


@pytest.fixture(scope="module")
def ddp(shared_train):
    """DDP (also FSDP's reference with Adam); every DeepSpeed run of the tests below trains in the same launch."""
    runs = [{"strategy": "ddp"}, *({"strategy": "deepspeed", "zero_stage": stage, "offload": offload}
                                   for stage, offload in STAGES),
            {"strategy": "deepspeed", "zero_stage": 2, "accumulation": 2}]
    return shared_train.many(2, [{**run, **SETUP} for run in runs])[0][0]


@pytest.mark.parametrize(("stage", "offload"), STAGES)
def test_every_zero_stage_reaches_ddps_parameters(ddp, shared_train, stage, offload):
    results = shared_train(2, strategy="deepspeed", zero_stage=stage, offload=offload, **SETUP)  # stage 2: Slurm's
    assert max_difference(results[0], ddp) < TOLERANCE and identical(results[0], results[1])
    assert results[0].test_accuracy == pytest.approx(ddp.test_accuracy, abs=1e-9)
    assert max_difference(results[0], models.seeded(models.mnist_cnn, 0).state_dict()) > 1e-4  # it trained


def test_accumulation_inside_the_engine_equals_the_big_batch(ddp, shared_train):
    results = shared_train(2, strategy="deepspeed", zero_stage=2, accumulation=2, **SETUP)  # notebook 06's exercise
    assert results[0].details["micro_batch"] == 16 and max_difference(results[0], ddp) < ACCUMULATION_TOLERANCE


def test_bf16_is_close_to_fp32_but_not_equal():
    """One launch trains the runs in turn (``launch.train_many``): DDP in fp32 is the reference."""
    common = {"global_batch": 64, "samples": 256, "epochs": 1, "test_samples": 0, "backend": "gloo"}
    bf16 = {"strategy": "deepspeed", "zero_stage": 1, "precision": "bf16"}
    fields = {"ddp_fp32": {"strategy": "ddp"}, "bf16": bf16,
              "bf16_twice_the_rate": {**bf16, "lr": 2 * TrainConfig().lr}}
    trained = launch.train_many(2, [{**common, **more} for more in fields.values()], timeout=300, quiet=True)
    runs = {name: results[0] for name, results in zip(fields, trained, strict=True)}
    distance = {name: max_difference(runs[name], runs["ddp_fp32"]) for name in ("bf16", "bf16_twice_the_rate")}
    assert 0 < distance["bf16"] < BF16_TOLERANCE < distance["bf16_twice_the_rate"], distance  # rounding, not hidden


def test_deepspeeds_own_launcher_runs_the_same_workers(ddp):
    results = launch.run_deepspeed("dtutor.pytorch.driver:train", 2, strategy="deepspeed", zero_stage=1,
                                   **SETUP)
    assert [r.rank for r in results] == [0, 1] and max_difference(results[0], ddp) < TOLERANCE


def test_the_deepspeed_command_hands_the_worker_its_module():
    command = launch.deepspeed_command("dtutor.pytorch.driver:train", 4, {"strategy": "deepspeed"}, nnodes=2)
    assert command == ["deepspeed", "--num_gpus=4", "--hostfile=hostfile", "--num_nodes=2", "--module",
                       "dtutor.launch", "dtutor.pytorch.driver:train", "strategy=deepspeed"]


def test_stop_and_resume_at_stage_3_is_bitwise_equal_to_an_unbroken_run(tmp_path):
    """The unbroken run and the run stopped after epoch 0 train in turn in one launch; the resumed run in another."""
    fields = {**SMALL_RUN, "optimizer": "adam", "lr": 1e-3, "strategy": "deepspeed", "zero_stage": 3, "epochs": 3,
              "samples": 128, "test_samples": 0}
    folder = str(tmp_path / "zero3")
    unbroken, first = launch.train_many(2, [fields, {**fields, "checkpoint": folder, "stop_after_epochs": 1}],
                                        timeout=300, quiet=True)
    assert [e.epoch for e in unbroken[0].epochs] == [0, 1, 2] and [e.epoch for e in first[0].epochs] == [0]
    assert (Path(folder) / "latest").exists()
    resumed = launch.train(2, checkpoint=folder, **fields, quiet=True, timeout=300)
    assert [e.epoch for e in resumed[0].epochs] == [1, 2]
    assert identical(unbroken[0], resumed[0])


def test_teardown_destroys_the_engine_before_the_process_group(monkeypatch):
    """torch 2.13 + gloo aborted at exit when the engine outlived the process group (it took ten launches in a
    row to see it; the worker runner now also leaves without the interpreter's teardown): the order, checked."""
    from dtutor.pytorch import process_group
    from dtutor.pytorch.sharded.deepspeed_zero import DeepSpeedZeRO

    events = []
    strategy = DeepSpeedZeRO.__new__(DeepSpeedZeRO)
    strategy.engine = type("Engine", (), {"destroy": lambda self: events.append("engine destroyed")})()
    monkeypatch.setattr(process_group, "leave_process_group", lambda: events.append("group destroyed"))
    strategy.teardown()
    assert events == ["engine destroyed", "group destroyed"] and strategy.engine is None


def test_deepspeeds_helper_is_built_by_the_environments_own_ninja_wherever_it_runs(monkeypatch):
    """The system's ninja hashes the build commands differently: each switch rebuilt the helper (~30 s; a Slurm job
    puts the environment first on PATH, a local launch did not)."""
    import shutil
    import sys

    from dtutor.pytorch.sharded.deepspeed_zero import deepspeed_environment

    monkeypatch.setenv("PATH", "/usr/bin:/bin")
    deepspeed_environment()
    assert shutil.which("ninja") == str(Path(sys.executable).parent / "ninja")


def test_a_zero3_checkpoint_of_another_world_size_is_refused_for_sgd_before_any_process_starts(tmp_path,
                                                                                            no_process_may_start):
    """DeepSpeed's universal checkpoint, the only road to another world size at stage 3, keeps Adam's state only."""
    step = tmp_path / "global_step4"
    step.mkdir()
    (tmp_path / "latest").write_text("global_step4")
    for rank in (0, 1):  # as 2 ranks write it: one optimizer file each
        (step / f"zero_pp_rank_{rank}_mp_rank_00_optim_states.pt").write_bytes(b"")
    fields = {**SMALL_RUN, "strategy": "deepspeed", "zero_stage": 3, "checkpoint": str(tmp_path)}
    with pytest.raises(ConfigError, match="optimizer: a ZeRO-3 checkpoint saved by 2 ranks loads on 4 through"):
        launch.train(4, **fields)
    with pytest.raises(ConfigError, match="optimizer: a ZeRO-3 checkpoint saved by 2 ranks loads on 1"):
        launch.train(1, **fields)
