"""What communication should cost, written down before anything is measured (no framework imported).

Bytes each worker sends for one collective of a ``size``-byte tensor among ``n`` workers, with the ring
algorithms NCCL and gloo use for large messages (the factors nccl-tests call the bus-bandwidth factors):

    all-reduce       2 (n-1)/n x size     (a reduce-scatter, then an all-gather)
    reduce-scatter     (n-1)/n x size     (size: the whole input)
    all-gather         (n-1)/n x size     (size: the whole output)
    broadcast          (n-1)/n x size     (pipelined ring; the root sends it once)
    send                         size     (point to point: a pipeline's activations and their gradients)

and, per optimizer step, what each kind of strategy should send per worker (gradients are the size of the
parameters, ``G`` bytes in fp32):

    data parallel (DDP, Horovod, MirroredStrategy, MWMS)   one all-reduce of G:           2 (n-1)/n G
    ZeRO-1, ZeRO-2                                           reduce-scatter G, all-gather G: 2 (n-1)/n G
    ZeRO-3, FSDP                                             + the parameters gathered again for backward: 3 (n-1)/n G
    pipeline (n stages)                                      activations forward, their gradients backward
    tensor parallel (a column/row linear pair)               all-reduce of the pair's output (forward)
                                                             and of its input's gradient (backward)

The ZeRO figures are the ZeRO paper's (Rajbhandari et al. 2020, section 7): stages 1 and 2 send what DDP
sends, stage 3 half as much again.
"""

from __future__ import annotations

import math

BYTES_FP32 = 4


def wire_factor(op: str, n: int) -> float:
    """Bytes each of ``n`` workers sends per byte of an ``op`` ("all_reduce", "reduce_scatter", ...)."""
    if n < 1:
        raise ValueError(f"n: must be >= 1, got {n}")
    factors = {"all_reduce": 2 * (n - 1) / n, "reduce_scatter": (n - 1) / n, "all_gather": (n - 1) / n,
               "broadcast": (n - 1) / n, "all_to_all": (n - 1) / n, "send": 1.0}
    if op not in factors:
        raise ValueError(f"op: must be one of {', '.join(factors)}, got {op!r}")
    return factors[op]


def bus_bandwidth(algbw: float, n: int) -> float:
    """nccl-tests' bus bandwidth of an all-reduce: ``algbw x 2(n-1)/n`` (the speed of the busiest link)."""
    return algbw * wire_factor("all_reduce", n)


def data_parallel_bytes(gradient_bytes: float, n: int) -> float:
    """One ring all-reduce of every gradient per step: ``2(n-1)/n x gradient_bytes`` sent per worker."""
    return wire_factor("all_reduce", n) * gradient_bytes


def sharded_bytes(gradient_bytes: float, n: int, stage: int) -> float:
    """ZeRO stage 1-3 (FSDP = 3) per worker and step: ``2(n-1)/n G`` for stages 1-2, ``3(n-1)/n G`` for 3."""
    if stage not in (1, 2, 3):
        raise ValueError(f"stage: must be 1, 2 or 3, got {stage}")
    return (3 if stage == 3 else 2) * (n - 1) / n * gradient_bytes


def pipeline_bytes(boundary_elements: list[int], batch: int, bytes_per_element: int = BYTES_FP32) -> float:
    """The busiest stage's bytes per step: it sends its boundary's activations forward and the gradient of
    the previous boundary backward (``boundary_elements``: per sample, one entry per cut between stages)."""
    sizes = [elements * batch * bytes_per_element for elements in boundary_elements]
    stages = len(sizes) + 1
    return float(max((sizes[s] if s < stages - 1 else 0) + (sizes[s - 1] if s > 0 else 0) for s in range(stages)))


def tensor_parallel_bytes(pairs: list[tuple[int, int]], batch: int, n: int,
                          bytes_per_element: int = BYTES_FP32) -> float:
    """Per worker and step for each (input width, output width) of a column/row pair: all-reduce the pair's
    output in the forward and its input's gradient in the backward (the input of a network's middle layer
    needs one)."""
    elements = sum(batch * (inputs + outputs) for inputs, outputs in pairs)
    return wire_factor("all_reduce", n) * elements * bytes_per_element


def within(counted: float | None, expected: float | None, tolerance: float = 0.05) -> bool | None:
    """Whether a counted figure is within ``tolerance`` (relative) of theory; None if either is unknown."""
    if counted is None or expected is None:
        return None
    if expected == 0:
        return counted == 0
    return math.isclose(counted, expected, rel_tol=tolerance)
