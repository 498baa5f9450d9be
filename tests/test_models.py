import os
import subprocess
import sys

import pytest
import torch

from dtutor import models

KERAS_COUNT = "from dtutor.models import keras_mnist_cnn; m = keras_mnist_cnn(); print(m.count_params())"


def test_torch_cnn_shape_and_parameter_count():
    model = models.mnist_cnn()
    assert models.count_parameters(model) == models.MNIST_CNN_PARAMETERS
    assert tuple(model(torch.zeros(3, 1, 28, 28)).shape) == (3, 10)


def test_the_batchnorm_cnn_trades_each_convolution_bias_for_a_scale_and_shift():
    model = models.mnist_cnn_batchnorm()
    batchnorms = [m for m in model.modules() if isinstance(m, torch.nn.BatchNorm2d)]
    assert [m.num_features for m in batchnorms] == [32, 64]
    assert models.count_parameters(model) == models.MNIST_CNN_PARAMETERS - (32 + 64) + 2 * (32 + 64)
    assert tuple(model(torch.zeros(3, 1, 28, 28)).shape) == (3, 10)


@pytest.mark.parametrize("legacy", ["1", "0"], ids=["keras2", "keras3"])
def test_keras_cnn_has_the_same_parameter_count(legacy):
    env = {**os.environ, "TF_USE_LEGACY_KERAS": legacy, "TF_CPP_MIN_LOG_LEVEL": "3"}
    out = subprocess.run([sys.executable, "-c", KERAS_COUNT], env=env, capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, out.stderr[-2000:]
    assert int(out.stdout.strip().splitlines()[-1]) == models.MNIST_CNN_PARAMETERS


def test_wide_mlp_scales_and_checks_its_arguments():
    small, big = models.wide_mlp(64, 2), models.wide_mlp(128, 2)
    assert models.count_parameters(small) == 784 * 64 + 64 + 64 * 64 + 64 + 64 * 10 + 10
    assert models.count_parameters(big) > 2 * models.count_parameters(small)
    with pytest.raises(ValueError):
        models.wide_mlp(0)


def test_seeded_models_are_identical():
    a, b = models.seeded(models.mnist_cnn, 3), models.seeded(models.mnist_cnn, 3)
    assert all(torch.equal(p, q) for p, q in zip(a.parameters(), b.parameters(), strict=True))
    c = models.seeded(models.mnist_cnn, 4)
    assert not all(torch.equal(p, q) for p, q in zip(a.parameters(), c.parameters(), strict=True))


