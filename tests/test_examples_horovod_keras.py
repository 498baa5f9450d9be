"""The plain Horovod and Keras scripts (examples/horovod_train.py, examples/keras_train.py), launched by their real
launchers through dtutor's supervisor, against the course driver's run of the same strategy.

Each script reads nothing of the driver: its own model, seed, data order, loss and optimizer must give the
driver's weights. Measured on CPU: Horovod 0.0 (bitwise); Keras' MirroredStrategy on 2 logical devices 2e-8
with oneDNN off and 0.0 with it on (the driver ran with this CPU's default, on); MultiWorkerMirroredStrategy's 2
workers 0.0; while training moves the weights by ~1e-2. The driver's Horovod and multi-worker runs are the ones
their own tests launch (``shared_train``).
"""

from __future__ import annotations

import contextlib
import io
from pathlib import Path

import h5py
import numpy as np
import pytest
import torch
from conftest import SMALL_RUN, TF_SETUP, require_horovod

from dtutor import launch, models
from dtutor.config import TrainConfig
from dtutor.result import max_difference
from dtutor.strategies import STRATEGIES

EXAMPLES = Path(__file__).resolve().parent.parent / "examples"


def script_arguments(fields: dict, output: Path) -> list[str]:
    """The scripts' options for the driver's ``fields`` (the config's defaults for lr and seed)."""
    config = TrainConfig(strategy="single", **fields)
    return ["--epochs", str(config.epochs), "--batch", str(config.global_batch), "--samples", str(config.samples),
            "--lr", str(config.lr), "--seed", str(config.seed), "--output", str(output)]


def keras_weights(path: Path) -> dict[str, np.ndarray]:
    """The weights ``model.save_weights(... .h5)`` wrote, named as the Keras driver names them ("0.kernel")."""
    found = {}
    with h5py.File(path, "r") as file:
        for index, layer in enumerate(file.attrs["layer_names"]):
            for weight in file[layer].attrs["weight_names"]:
                found[f"{index}.{weight.rsplit('/', 1)[-1].split(':')[0]}"] = np.array(file[layer][weight])
    return found


@pytest.fixture(scope="module")
def horovod_script(tmp_path_factory):
    """The Horovod script on 2 workers under horovodrun: what it printed and the checkpoint worker 0 wrote."""
    require_horovod("torch")
    output = tmp_path_factory.mktemp("horovod") / "cnn.pt"
    shown = io.StringIO()
    with contextlib.redirect_stdout(shown):
        launch.run_horovod_script(EXAMPLES / "horovod_train.py", 2, args=script_arguments(SMALL_RUN, output),
                                  timeout=300)
    return shown.getvalue(), torch.load(output)


def test_the_horovod_script_equals_the_drivers_horovod_run(horovod_script, shared_train):
    printed, weights = horovod_script
    driver = shared_train(2, strategy="horovod", **SMALL_RUN)[0]
    tolerance = STRATEGIES["horovod"].tolerance
    assert max_difference(weights, driver) <= tolerance
    start = models.seeded(models.mnist_cnn, TrainConfig().seed).state_dict()
    assert max_difference(weights, start) > 1000 * tolerance  # a match is not "nothing happened"
    assert "$ horovodrun -np 2 --gloo -H localhost:2" in printed and "examples/horovod_train.py" in printed
    assert "[rank 0] epoch 0: loss" in printed  # the workers' output, streamed with one prefix


@pytest.fixture(scope="module", params=["0", "1"], ids=["onednn-off", "onednn-on"])
def mirrored_script(request, tmp_path_factory):
    """The Keras script in one process, MirroredStrategy over 2 logical CPUs, with oneDNN's rewrites off and on."""
    output = tmp_path_factory.mktemp("mirrored") / "cnn.h5"
    with pytest.MonkeyPatch.context() as patch:
        patch.setenv("TF_ENABLE_ONEDNN_OPTS", request.param)
        launch.run_tf_script(EXAMPLES / "keras_train.py", 1, timeout=300, quiet=True,
                             args=[*script_arguments(TF_SETUP, output), "--replicas", "2"])
    return keras_weights(output)


@pytest.fixture(scope="module")
def mirrored_driver():
    """The Keras driver's MirroredStrategy run on 2 replicas, in a fresh process (2 logical CPUs)."""
    return launch.run_single("dtutor.tf.driver:train", timeout=300, replicas=2, strategy="mirrored", **TF_SETUP)


def test_the_keras_script_under_mirrored_strategy_equals_the_drivers_run(mirrored_script, mirrored_driver):
    assert mirrored_driver.details["replicas_in_sync"] == 2
    assert max_difference(mirrored_script, mirrored_driver) <= STRATEGIES["mirrored"].tolerance


def test_the_keras_script_under_tf_config_equals_the_drivers_multiworker_run(tmp_path, shared_train):
    output = tmp_path / "cnn.h5"
    shown = io.StringIO()
    with contextlib.redirect_stdout(shown):
        launch.run_tf_script(EXAMPLES / "keras_train.py", 2, timeout=300, args=script_arguments(TF_SETUP, output))
    driver = shared_train(2, strategy="multiworker", **TF_SETUP)[0]
    assert max_difference(keras_weights(output), driver) <= STRATEGIES["multiworker"].tolerance
    printed = shown.getvalue().replace(" \\\n    ", " ")  # long commands are wrapped with continuations
    assert printed.count("TF_CONFIG='{\"cluster\": {\"worker\": [\"127.0.0.1:") == 2
    assert '"task": {"type": "worker", "index": 1}' in printed


def test_a_failing_script_is_reported_with_its_last_output(tmp_path):
    broken = tmp_path / "broken.py"
    broken.write_text("print('starting'); raise SystemExit('broken on purpose')\n")
    with pytest.raises(launch.LaunchError, match="broken on purpose"):
        launch.run_tf_script(broken, 1, timeout=60, quiet=True)


def test_bad_script_launches_are_refused_before_anything_starts(no_process_may_start, tmp_path):
    with pytest.raises(FileNotFoundError, match="no script at"):
        launch.run_tf_script(tmp_path / "missing.py", 2)
    with pytest.raises(ValueError, match="num_workers must be a whole number"):
        launch.run_tf_script(EXAMPLES / "keras_train.py", 0)
    with pytest.raises(ValueError, match="-np 4 is more than the 2 slot"):
        launch.run_horovod_script(EXAMPLES / "horovod_train.py", 4, hosts="localhost:2")
