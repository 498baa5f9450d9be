"""The Alibaba Cloud article's Keras split (dtutor.tf.model_split): where it ran, what crossed, and equal to
the unsplit CNN.

One child process with 2 logical CPU devices runs the three variants and the proof (TensorFlow starts once;
this pytest process never imports it). Measured on CPU: the split's logits, losses and weights after 3 steps
equal the unsplit model's exactly (0.0), while training moves the weights by ~1e-2.
"""

from __future__ import annotations

import subprocess
import sys

import pytest
from conftest import run_child

from dtutor import launch
from dtutor.tf import model_split
from dtutor.tf.placement import crossing_table, framework_op, op_table

TOLERANCE = 1e-5  # max |split - unsplit| in float32 (logits, losses, weights after 3 steps); measured 0.0 on CPU
BATCH = 32
ACTIVATION_BYTES = BATCH * 13 * 13 * 32 * 4  # part1's output: (32, 13, 13, 32) float32
PART2_WEIGHT_BYTES = (3 * 3 * 32 * 64 + 64 + 1600 * 64 + 64 + 64 * 10 + 10) * 4

PROOF = """
    import pickle, sys
    from dtutor.tf import model_split

    out = {variant: model_split.inspect_split(variant, batch=32) for variant in ("article", "forward", "split")}
    out["proof"] = model_split.prove_split(steps=3, batch=64)
    import tensorflow as tf
    with tf.device("/CPU:5"):  # what require_devices prevents: soft placement falls back without a word
        out["fallback"] = tf.ones(2).device
    try:
        model_split.require_devices(["/CPU:0", "/GPU:1"])
    except ValueError as error:
        out["missing"] = str(error)
    import os
    out["onednn"] = os.environ["TF_ENABLE_ONEDNN_OPTS"]
    pickle.dump(out, open(sys.argv[1], "wb"))
"""


@pytest.fixture(scope="module", params=["0", "1"], ids=["onednn-off", "onednn-on"])
def runs(request, tmp_path_factory):
    """The three variants and the proof, in one child with 2 logical CPUs (about 20 s), once with TensorFlow's
    oneDNN rewrites off and once on (the default on CPUs with AVX-512 VNNI or BF16): the lesson holds on both."""
    with pytest.MonkeyPatch.context() as patch:
        patch.setenv("TF_ENABLE_ONEDNN_OPTS", request.param)
        return run_child(PROOF, str(tmp_path_factory.mktemp("split") / "split.pkl"))


def test_the_rewritten_kernels_are_counted_as_the_ops_they_implement(runs):
    kernels = runs["split"]["kernels"]
    onednn = runs["onednn"] == "1"
    assert any(kernel.startswith("_MklNative") for kernel in kernels) == onednn  # the setting took effect
    if onednn:  # the filter gradient ran as oneDNN's fused kernel, and is counted as the op it implements
        assert kernels["_MklNativeConv2DBackpropFilterWithBias"] == "Conv2DBackpropFilter"


@pytest.mark.parametrize("kernel, op", [
    ("Conv2D", "Conv2D"), ("_FusedConv2D", "Conv2D"), ("_MklNativeFusedConv2D", "Conv2D"),
    ("_FusedMatMul", "MatMul"), ("_MklMatMul", "MatMul"), ("_MklNativeMaxPoolGrad", "MaxPoolGrad"),
    ("_MklNativeConv2DBackpropFilterWithBias", "Conv2DBackpropFilter"),
    ("_MklNativeFusedBatchNormV3", "FusedBatchNormV3"), ("FusedBatchNormV3", "FusedBatchNormV3"),
])
def test_framework_op_maps_rewritten_kernels_back(kernel, op):
    assert framework_op(kernel) == op


def compute_ops(report: dict, device: str, phase: str) -> dict[str, int]:
    """The op counts of one device and phase ("forward", "backward", "update") in an ``inspect_split`` report."""
    return report["ops"].get(device, {}).get(phase, {})


def convolutions(ops: dict[str, int]) -> int:
    """Forward convolutions among ``ops`` (counted as ``Conv2D`` whatever kernel ran them)."""
    return ops.get("Conv2D", 0)


def test_importing_the_module_imports_neither_framework():
    code = "import sys, dtutor.tf.model_split; print(sorted(m for m in ('tensorflow', 'torch') if m in sys.modules))"
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert done.stdout.strip() == "[]"


def test_the_variables_live_where_their_part_was_built_in_every_variant(runs):
    for variant in ("article", "forward", "split"):
        variables = runs[variant]["variables"]
        assert runs[variant]["devices"] == ["CPU:0", "CPU:1"]
        assert len(variables) == 8 and "part2/3.kernel" in variables  # the first dense layer
        assert {device for name, device in variables.items() if name.startswith("part1/")} == {"CPU:0"}
        assert {device for name, device in variables.items() if name.startswith("part2/")} == {"CPU:1"}


def test_the_articles_split_runs_every_op_on_device_0_and_ships_part2s_weights(runs):
    article = runs["article"]
    assert convolutions(compute_ops(article, "CPU:0", "forward")) == 2
    assert compute_ops(article, "CPU:1", "forward") == {} and compute_ops(article, "CPU:1", "backward") == {}
    weights_read = sum(c["bytes"] for c in article["crossings"] if c["phase"] == "forward" and c["from"] == "CPU:1")
    assert weights_read == PART2_WEIGHT_BYTES  # every step reads all of part2's weights across
    assert not [c for c in article["crossings"] if c["bytes"] == ACTIVATION_BYTES]  # no activation crosses


def test_pinning_only_the_forward_leaves_the_backward_on_device_0(runs):
    forward = runs["forward"]
    assert convolutions(compute_ops(forward, "CPU:0", "forward")) == 1
    assert convolutions(compute_ops(forward, "CPU:1", "forward")) == 1
    assert compute_ops(forward, "CPU:1", "backward") == {}
    assert "Conv2DBackpropInput" in compute_ops(forward, "CPU:0", "backward")


def test_pinning_only_the_forward_ships_part2s_activations_back_for_the_backward(runs):
    back = [c for c in runs["forward"]["crossings"] if c["phase"] == "forward" and c["from"] == "CPU:1"]
    assert (BATCH, 11, 11, 64) in {c["shape"] for c in back}  # part2's convolution output, for device 0's backward
    assert sum(c["bytes"] for c in back) > ACTIVATION_BYTES


def test_the_notebook_s_tables_show_what_the_lesson_says_on_every_cpu(runs):
    reports = [runs[variant] for variant in ("article", "forward", "split")]
    ops = [line.split() for line in op_table(reports).splitlines()[1:]]
    assert ops[0][:8] == ["article", "device", "0", "2", "Conv2D", "2,", "MatMul", "2"]
    assert ops[1][:6] == ["article", "device", "1", "6", "-", "-"]  # part2's variables, no arithmetic
    assert ops[4] == ["split", "device", "0", "2", "Conv2D", "1", "Conv2DBackpropFilter", "1", "13"]
    assert ops[5][-7:-1] == ["Conv2DBackpropFilter", "1,", "Conv2DBackpropInput", "1,", "MatMul", "4"]
    assert "BiasAddGrad" not in op_table(reports)  # fused into the filter gradient by oneDNN: not comparable
    crossings = [line.split() for line in crossing_table(reports).splitlines()[1:]]
    assert crossings[0][:8] == ["article", "forward", "device", "1", "->", "device", "0", "6"]
    assert [c[:2] for c in crossings if c[0] == "split"] == [["split", "forward"]] * 2 + [["split", "backward"]]
    assert crossings[-1][-4:] == ["(32,", "13,", "13,", "32)"]


def test_the_working_split_runs_each_part_forward_backward_and_update_on_its_device(runs):
    split = runs["split"]
    assert convolutions(compute_ops(split, "CPU:0", "forward")) == 1
    assert convolutions(compute_ops(split, "CPU:1", "forward")) == 1
    assert compute_ops(split, "CPU:0", "backward").get("Conv2DBackpropFilter") == 1
    assert compute_ops(split, "CPU:1", "backward").get("Conv2DBackpropFilter") == 1
    assert compute_ops(split, "CPU:1", "backward").get("MatMul") == 4  # the two dense layers' gradients
    assert compute_ops(split, "CPU:0", "update") and compute_ops(split, "CPU:1", "update")


def test_only_the_activation_and_its_gradient_cross_in_the_working_split(runs):
    crossings = runs["split"]["crossings"]
    large = sorted((c["phase"], c["from"], c["to"], c["shape"]) for c in crossings if (c["bytes"] or 0) > 1024)
    activation = (BATCH, 13, 13, 32)
    assert large == [("backward", "CPU:1", "CPU:0", activation), ("forward", "CPU:0", "CPU:1", activation)]
    assert all(c["bytes"] == ACTIVATION_BYTES for c in crossings if (c["bytes"] or 0) > 1024)
    assert all(c["bytes"] is not None for c in crossings)  # every crossing has a known size (labels, scalars)
    assert sum(c["bytes"] for c in crossings) < 2 * ACTIVATION_BYTES + 8 * BATCH + 64


def test_the_split_equals_the_unsplit_model_from_the_same_weights(runs):
    proof = runs["proof"]
    assert proof["weight_shapes"] == [(3, 3, 1, 32), (32,), (3, 3, 32, 64), (64,), (1600, 64), (64,), (64, 10), (10,)]
    assert proof["forward_difference"] <= TOLERANCE
    assert proof["loss_difference"] <= TOLERANCE
    assert proof["weight_difference"] <= TOLERANCE
    assert proof["moved"] > 100 * TOLERANCE  # the match is not "nothing happened"
    assert proof["losses"][-1] < proof["losses"][0]


def test_a_device_that_does_not_exist_is_refused_not_silently_replaced(runs):
    assert runs["fallback"].endswith("CPU:0")  # TensorFlow alone: "/CPU:5" quietly becomes CPU:0
    assert "tf.device('/GPU:1'): this process has no such device" in runs["missing"]
    assert "soft placement" in runs["missing"] and "'/device:CPU:1'" in runs["missing"]


def test_a_missing_device_fails_the_launched_entry_point_before_training():
    with pytest.raises(launch.LaunchError) as caught:
        model_split.run_fresh("inspect_split", devices=["/CPU:0", "/CPU:2"], quiet=True, timeout=120)
    assert "tf.device('/CPU:2'): this process has no such device" in caught.value.remote_traceback


@pytest.mark.parametrize(
    "entry, kwargs, match",
    [
        ("inspect_split", {"devices": ["/GPU:0"]}, "give two device names"),
        ("inspect_split", {"devices": ["/CPU:0", "/device:cpu:0"]}, "two different devices"),
        ("prove_split", {"devices": ["/XPU:0", "/CPU:1"]}, "'/XPU:0' is not a TensorFlow device name"),
        ("inspect_split", {"variant": "pipelined"}, "variant: must be one of article, forward, split"),
        ("fit", {}, "entry: must be 'inspect_split' or 'prove_split'"),
    ],
)
def test_bad_input_is_refused_before_any_process_starts(no_process_may_start, entry, kwargs, match):
    with pytest.raises(ValueError, match=match):
        model_split.run_fresh(entry, **kwargs)
