"""Where TensorFlow really ran each op, and which tensors crossed between devices (notebook 05, step 1).

``tf.device`` is a request: with soft placement TensorFlow silently runs an op meant for a device that does
not exist on another one, and around a layer's construction it places only the layer's variables. So the
model-split lesson checks device names first (``check_device_names``, ``require_devices``) and reads what
happened from TensorFlow's run metadata (``placement``): the step's graph as partitioned for execution, one
part per device, with a ``_Send``/``_Recv`` pair for every tensor that crosses.
"""

from __future__ import annotations

import re
from collections import Counter
from typing import Any

DEVICE_NAME = re.compile(r"^/(?:device:)?(CPU|GPU):(\d+)$", re.IGNORECASE)
DATA_FREE_OPS = {"_Arg", "_Retval", "_Send", "_Recv", "_DeviceArg", "_EagerConst", "Const", "Identity", "NoOp"}
KERNEL_PREFIX = re.compile(r"^_(?:MklNative|Mkl)?")  # oneDNN's rewrites (_MklNative...), Grappler's fusions (_Fused...)
FUSED = re.compile(r"^Fused(Conv2D|Conv3D|DepthwiseConv2dNative|MatMul|BatchMatMulV2)$")


def framework_op(kernel: str) -> str:
    """The TensorFlow op that a rewritten kernel implements: ``_MklNativeConv2DBackpropFilterWithBias`` ->
    ``Conv2DBackpropFilter``, ``_FusedConv2D`` and ``_MklNativeFusedConv2D`` -> ``Conv2D``.

    Before running a graph, TensorFlow rewrites it for the machine: Grappler fuses a convolution or matrix
    product with the bias and activation after it (``_FusedConv2D``), and on CPUs with AVX-512 VNNI or BF16
    (or with ``TF_ENABLE_ONEDNN_OPTS=1``) oneDNN replaces ops by its own kernels (``_MklNative...``), some of
    them fused too (the filter gradient computes the bias gradient as well: ``...WithBias``). The op a
    lesson talks about is the same on every CPU; the kernel's name is not.
    """
    name = KERNEL_PREFIX.sub("", kernel) if kernel.startswith(("_Mkl", "_Fused")) else kernel
    fused = FUSED.match(name)
    return fused[1] if fused else name.removesuffix("WithBias")


def _device_key(match: re.Match) -> tuple[str, int]:
    """("CPU" or "GPU", index) of a parsed device name."""
    return match[1].upper(), int(match[2])


def normal_name(name: str) -> str:
    """A device name as "CPU:1" (from "/cpu:1", "/device:CPU:1", or a full "/job:.../device:CPU:1")."""
    kind, index = _device_key(DEVICE_NAME.match("/" + name.rsplit("/", 1)[-1]))
    return f"{kind}:{index}"


def check_device_names(devices: list[str] | None) -> list[str] | None:
    """``devices`` (two names like "/GPU:1" or "/device:CPU:0", different), or None (choose); ``ValueError``.

    Checks the spelling only, before any process starts; ``require_devices`` checks that they exist.
    """
    if devices is None:
        return None
    if not isinstance(devices, (list, tuple)) or len(devices) != 2:
        raise ValueError(f"devices: give two device names (part1's, part2's), got {devices!r}")
    parsed = [DEVICE_NAME.match(str(name)) for name in devices]
    for name, match in zip(devices, parsed, strict=True):
        if match is None:
            raise ValueError(f"devices: {name!r} is not a TensorFlow device name like '/GPU:1' or '/CPU:0'")
    if _device_key(parsed[0]) == _device_key(parsed[1]):
        raise ValueError(f"devices: the two parts need two different devices, got {devices!r}")
    return list(devices)


def require_devices(devices: list[str]) -> list[str]:
    """Each of ``devices`` exists in this process (``tf.config.list_logical_devices``), else ``ValueError``.

    Without this check TensorFlow's soft placement would run ``tf.device("/GPU:1")`` work on another device
    without a word, and the "split" would be no split at all.
    """
    import tensorflow as tf

    have = [d.name for d in tf.config.list_logical_devices()]
    known = {(d.device_type, int(d.name.rsplit(":", 1)[1])) for d in tf.config.list_logical_devices()}
    for name in check_device_names(devices):
        if _device_key(DEVICE_NAME.match(name)) not in known:
            raise ValueError(f"tf.device({name!r}): this process has no such device; it has {have}. TensorFlow "
                             f"would silently place the work elsewhere (soft placement). On a CPU, call "
                             f"setup_tensorflow(cpu_replicas=2) first and use '/CPU:0' and '/CPU:1'.")
    return list(devices)


def _phase(node: Any) -> str:
    """Which part of the step a placed op belongs to: "forward", "backward" or "update"."""
    if node.name.startswith("gradient"):  # "gradients/..." (tf.gradients), "gradient_tape/..." (GradientTape)
        return "backward"
    if "SGD" in node.name or node.op.startswith(("Assign", "ResourceApply")):
        return "update"
    return "forward"


def placement(step: Any, *args: Any) -> dict[str, Any]:
    """Where the first call of the ``tf.function`` ``step(*args)`` actually ran each op, and what crossed.

    Read from TensorFlow's run metadata: the graph as partitioned for execution, one part per device, with a
    ``_Send``/``_Recv`` pair for every tensor that crosses between devices (``step`` must not have run yet:
    the partitions are recorded when the function is instantiated). Returns ``{"ops": {device: {phase:
    {op: count}}}, "crossings": [{"tensor", "from", "to", "phase", "shape", "bytes"}], "kernels": {kernel:
    op}}``. Ops are counted by the framework op they implement (``framework_op``), so the ops that carry the
    arithmetic (``ARITHMETIC_OPS``) count the same on every CPU; the bias and activation ops a fused kernel
    absorbs do not. ``kernels`` lists the rewritten kernels this machine ran. Op counts leave out bookkeeping
    (arguments, constants, identities, sends, receives, variable reads).
    """
    from tensorflow.python.eager import context  # run metadata has no public TF2 API (tf.summary uses this)

    graph = step.get_concrete_function(*args).graph
    runtime = context.context()
    runtime.enable_run_metadata()
    try:
        runtime.export_run_metadata()  # discard what earlier work in this process left there
        step(*args)
        metadata = runtime.export_run_metadata()
    finally:
        runtime.disable_run_metadata()
    ops: dict[str, dict[str, Counter]] = {}
    crossings, kernels = [], {}
    for function in metadata.function_graphs:
        for partition in function.partition_graphs:
            for node in partition.node:
                device = normal_name(node.device)
                if node.op == "_Send" and "/ctrl/" not in node.input[0]:
                    crossings.append(_crossing(graph, node))
                elif node.op not in DATA_FREE_OPS and node.op != "ReadVariableOp":
                    op = framework_op(node.op)
                    ops.setdefault(device, {}).setdefault(_phase(node), Counter())[op] += 1
                    if op != node.op:
                        kernels[node.op] = op
    return {"ops": {device: {phase: dict(sorted(counts.items())) for phase, counts in sorted(phases.items())}
                    for device, phases in sorted(ops.items())}, "crossings": crossings,
            "kernels": dict(sorted(kernels.items()))}


def _crossing(graph: Any, send: Any) -> dict[str, Any]:
    """One ``_Send`` node as {"tensor", "from", "to", "phase", "shape", "bytes"} (shape from ``graph``)."""
    name, _, index = send.input[0].partition(":")
    shape, size = None, None
    try:
        tensor = graph.get_operation_by_name(name).outputs[int(index or 0)]
        if tensor.shape.is_fully_defined():
            shape, size = tuple(tensor.shape.as_list()), tensor.shape.num_elements() * tensor.dtype.size
    except (KeyError, ValueError, IndexError):  # a node Grappler created or renamed: no Python tensor
        pass
    return {"tensor": send.input[0], "from": normal_name(send.attr["send_device"].s.decode()),
            "to": normal_name(send.attr["recv_device"].s.decode()), "phase": _phase(send), "shape": shape,
            "bytes": size}


ARITHMETIC_OPS = {  # per phase, the framework ops that carry a CNN's arithmetic (convolutions, products, gradients)
    "forward": ("Conv2D", "MatMul"),
    "backward": ("Conv2DBackpropFilter", "Conv2DBackpropInput", "MatMul"),
}
PHASES = ("forward", "backward", "update")


def device_labels(report: dict[str, Any]) -> dict[str, str]:
    """{"CPU:0": "device 0", ...}: part1's device is device 0, part2's device 1 (``report["devices"]``)."""
    return {name: f"device {index}" for index, name in enumerate(report["devices"])}


def op_table(reports: list[dict[str, Any]]) -> str:
    """Per variant and device: variables held, the forward and backward arithmetic ops, and the update ops.

    Counted as framework ops (``framework_op``), so the table is the same on every CPU. Bias gradients are
    left out on purpose: oneDNN computes them inside the filter gradient, elsewhere they are ops of their own.
    """
    lines = [f"{'variant':<9}{'device':<10}{'variables':>9}  {'forward':<20}{'backward':<58}update ops"]
    for report in reports:
        for device, label in device_labels(report).items():
            phases = report["ops"].get(device, {})
            held = sum(place == device for place in report["variables"].values())
            cells = [", ".join(f"{op} {phases[phase][op]}" for op in ops if op in phases.get(phase, {})) or "-"
                     for phase, ops in ARITHMETIC_OPS.items()]
            update = sum(phases.get("update", {}).values())
            lines.append(f"{report['variant']:<9}{label:<10}{held:>9}  {cells[0]:<20}{cells[1]:<58}{update}")
    return "\n".join(lines)


def crossing_table(reports: list[dict[str, Any]]) -> str:
    """Per variant, phase and direction: how many tensors crossed between the devices, their bytes, the largest."""
    lines = [f"{'variant':<9}{'phase':<10}{'direction':<22}{'tensors':>7}{'bytes':>11}  largest tensor"]
    for report in reports:
        label = device_labels(report)
        groups: dict[tuple[int, str, str], list[dict[str, Any]]] = {}
        for crossing in report["crossings"]:
            key = (PHASES.index(crossing["phase"]), label[crossing["from"]], label[crossing["to"]])
            groups.setdefault(key, []).append(crossing)
        for (phase, source, target), found in sorted(groups.items()):
            largest = max(found, key=lambda c: c["bytes"] or 0)
            lines.append(f"{report['variant']:<9}{PHASES[phase]:<10}{source + ' -> ' + target:<22}{len(found):>7}"
                         f"{sum(c['bytes'] or 0 for c in found):>11,}  {largest['shape']}")
    return "\n".join(lines)
