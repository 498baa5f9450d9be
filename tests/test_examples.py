"""The plain scripts of ``examples/`` (what a learner copies into a project), each started by its real launcher
through ``launch.run_script`` and proven equal to the course driver's run of the same strategy, within the
registry's tolerance (measured 0.0 for all three: the same sums in the same order).

One launch of the driver trains the three references in turn (``launch.train_many``) with the scripts'
settings: 2 epochs (so a script that forgot ``set_epoch`` would read the wrong order) and seed 1 (so a script
that ignored ``--seed`` would start elsewhere).
"""

import importlib.util
import json
from pathlib import Path

import pytest
import torch

from dtutor import launch, max_difference, models
from dtutor.result import identical
from dtutor.strategies import STRATEGIES

EXAMPLES = Path(__file__).resolve().parent.parent / "examples"
NPROCS = 2
RUN = {"global_batch": 64, "samples": 128, "epochs": 2, "seed": 1, "test_samples": 0}  # 2 steps per epoch
ADAM = {"optimizer": "adam", "lr": 1e-3}  # the FSDP2 and DeepSpeed scripts' optimizer; DDP's is SGD, lr 0.05
DEEPSPEED = json.loads((EXAMPLES / "deepspeed_config.json").read_text())  # the batch and the stage live there
DEEPSPEED_BATCH = DEEPSPEED["train_micro_batch_size_per_gpu"] * DEEPSPEED["gradient_accumulation_steps"] * NPROCS
DRIVER_RUNS = {
    "ddp": {"strategy": "ddp", "lr": 0.05},
    "fsdp": {"strategy": "fsdp", **ADAM},
    "deepspeed": {"strategy": "deepspeed", "zero_stage": DEEPSPEED["zero_optimization"]["stage"], **ADAM,
                  "global_batch": DEEPSPEED_BATCH},
}


@pytest.fixture(scope="module")
def driver() -> dict[str, dict]:
    """The driver's parameters after each strategy's run (rank 0's), from one launch."""
    trained = launch.train_many(NPROCS, [{**RUN, **fields} for fields in DRIVER_RUNS.values()], timeout=300, quiet=True)
    return {name: results[0].parameters for name, results in zip(DRIVER_RUNS, trained, strict=True)}


def script_options(name: str, output: Path, batch: bool = True) -> list[str]:
    """The script's options for the driver's run ``name``: the same epochs, samples, seed, learning rate."""
    fields = {**RUN, **DRIVER_RUNS[name]}
    words = ["--epochs", fields["epochs"], "--samples", fields["samples"], "--seed", fields["seed"],
             "--lr", fields["lr"], "--output", output]
    return [str(word) for word in words + (["--batch", fields["global_batch"]] if batch else [])]


def assert_trained_like(weights: dict, parameters: dict, strategy: str) -> None:
    """``weights`` equal the driver's ``parameters`` within the registry's tolerance, and moved from the start."""
    assert max_difference(weights, parameters) < STRATEGIES[strategy].tolerance
    assert max_difference(weights, models.seeded(models.mnist_cnn, RUN["seed"]).state_dict()) > 1e-3


@pytest.mark.parametrize("name", ["ddp_train", "fsdp2_train"])
def test_a_scripts_own_cnn_starts_from_the_course_models_weights(name):
    spec = importlib.util.spec_from_file_location(name, EXAMPLES / f"{name}.py")
    script = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(script)
    torch.manual_seed(RUN["seed"])
    assert identical(script.mnist_cnn().state_dict(), models.seeded(models.mnist_cnn, RUN["seed"]).state_dict())


def test_the_ddp_script_under_torchrun_equals_the_drivers_ddp(driver, tmp_path, capsys):
    output = tmp_path / "ddp.pt"
    launch.run_script(EXAMPLES / "ddp_train.py", NPROCS, args=script_options("ddp", output), timeout=120)
    streamed = capsys.readouterr().out
    assert f"$ torchrun --standalone --nproc-per-node={NPROCS} " in streamed and "epoch 1: loss" in streamed
    assert_trained_like(torch.load(output), driver["ddp"], "ddp")


def test_the_fsdp2_script_under_torchrun_equals_the_drivers_fsdp(driver, tmp_path):
    output = tmp_path / "fsdp2.pt"
    launch.run_script(EXAMPLES / "fsdp2_train.py", NPROCS, args=script_options("fsdp", output), timeout=120,
                      quiet=True)
    assert_trained_like(torch.load(output), driver["fsdp"], "fsdp")  # the full state dict, gathered


def test_the_deepspeed_script_under_deepspeeds_launcher_equals_the_drivers_deepspeed(driver, tmp_path, capsys):
    output = tmp_path / "checkpoint"
    options = script_options("deepspeed", output, batch=False) + [
        "--deepspeed_config", str(EXAMPLES / "deepspeed_config.json")]
    launch.run_script(EXAMPLES / "deepspeed_train.py", NPROCS, launcher="deepspeed", args=options, timeout=180)
    assert f"$ deepspeed --num_gpus={NPROCS} " in capsys.readouterr().out
    from deepspeed.utils.zero_to_fp32 import get_fp32_state_dict_from_zero_checkpoint  # after run_script's setup

    weights = get_fp32_state_dict_from_zero_checkpoint(str(output))  # every rank's partitions joined
    assert_trained_like(weights, driver["deepspeed"], "deepspeed")
