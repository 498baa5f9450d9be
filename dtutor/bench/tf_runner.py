"""The entry point the TensorFlow workers of ``python -m dtutor.bench all`` run: ``run_tf_cases``.

Each case trains with the course's Keras driver (``dtutor.tf.driver.fit``) through its strategy's class, and
reports what ``dtutor.bench.runner`` reports for PyTorch, measured the TensorFlow way:

- **bytes**: a Keras step is a traced graph, so the collectives are counted when it is traced: the tensors
  handed to ``collective_ops.all_reduce_v2`` (MultiWorkerMirroredStrategy) or to Horovod's allreduce ops
  (Horovod for Keras), each tensor once. MirroredStrategy's replicas live in one
  process and sum their gradients in memory (``ReductionToOneDevice`` on CPUs): nothing is sent;
- **model state**: the variables of one replica (weights and the optimizer's slots). TensorFlow keeps no
  gradients between steps; they are counted at their size, which they have during ``apply_gradients``;
- **speed**: samples/s over the epochs after the first (the driver's figure).

Launch recipe: ``python -m dtutor.launch dtutor.bench.tf_runner:run_tf_cases "cases=[...]"`` under the
strategy's launcher, as ``dtutor.bench.suite`` does.
"""

from __future__ import annotations

import traceback
from typing import Any

from dtutor import strategies
from dtutor.bench.theory import wire_factor
from dtutor.config import TrainConfig


class GraphCollectives:
    """Bytes handed to all-reduce operations while a graph is traced (eager calls are not a step's).

    A step may be traced more than once, and Horovod traces its own gradient function once for all of them,
    so each tensor is counted once by its name in the graph: ``bytes`` is one step's.
    """

    def __init__(self) -> None:
        self.sizes: dict[str, int] = {}
        self._undo: list[tuple[Any, str, Any]] = []

    def _wrap(self, module: Any, name: str) -> None:
        import tensorflow as tf

        original = getattr(module, name)

        def counted(tensor, *args, **kwargs):
            if not tf.executing_eagerly():
                for each in tensor if isinstance(tensor, list | tuple) else [tensor]:
                    self.sizes[each.name] = each.shape.num_elements() * each.dtype.size
            return original(tensor, *args, **kwargs)

        setattr(module, name, counted)
        self._undo.append((module, name, original))

    @property
    def bytes(self) -> int:
        """One step's all-reduced bytes (before the ring's factor)."""
        return sum(self.sizes.values())

    def __enter__(self) -> GraphCollectives:
        import importlib

        from tensorflow.python.ops import collective_ops

        self._wrap(collective_ops, "all_reduce_v2")
        try:
            hvd_tf = importlib.import_module("horovod.tensorflow")
        except ImportError:
            hvd_tf = None
        if hvd_tf is not None:
            for name in ("_allreduce", "_grouped_allreduce"):
                self._wrap(hvd_tf, name)
            _forget_horovods_traced_gradients(hvd_tf)
        return self

    def __exit__(self, *exc: object) -> None:
        for module, name, original in reversed(self._undo):
            setattr(module, name, original)


def _forget_horovods_traced_gradients(hvd_tf: Any) -> None:
    """Empty Horovod's per-process cache of its traced gradient function (``horovod.tensorflow.util._cache``).

    A second case in the same process would otherwise reuse the function traced for the first one, its
    all-reduces would not be traced again, and the counter would see 0 bytes.
    """
    cached = getattr(hvd_tf, "_make_cached_allreduce_grads_fn", None)
    for cell in getattr(cached, "__closure__", None) or ():
        if isinstance(cell.cell_contents, dict):
            cell.cell_contents.clear()


def replica_state_bytes(model: Any) -> dict[str, int]:
    """One replica's weights and optimizer slots in bytes; gradients at the size of the trainable weights."""
    def size(variable: Any) -> int:
        values = getattr(variable, "values", None)  # a mirrored variable: one component per replica
        one = values[0] if values else variable
        return one.shape.num_elements() * one.dtype.size

    optimizer = getattr(model.optimizer, "_optimizer", model.optimizer)  # Horovod's wrapper, if any
    return {"parameters": sum(size(w) for w in model.weights),
            "gradients": sum(size(w) for w in model.trainable_weights),
            "optimizer": sum(size(v) for v in optimizer.variables)}


def run_tf_case(case: dict[str, Any]) -> dict[str, Any]:
    """Train one case with the Keras driver; its measurements and (rank 0) the parameters."""
    from dtutor.tf.driver import fit

    config = TrainConfig.from_kwargs(**case["fields"])
    strategy = strategies.load(config.strategy)(config, case.get("replicas", 1))
    models: list[Any] = []
    after_compile = strategy.after_compile
    strategy.after_compile = lambda model: (models.append(model), after_compile(model))[-1]
    with GraphCollectives() as counter:
        result = fit(config, strategy)
    world = max(result.world_size, strategy.replicas_in_sync)
    in_process = strategy.replicas_in_process
    sent = None if in_process else counter.bytes * wire_factor("all_reduce", world)
    state = replica_state_bytes(models[0])
    return {"name": case["name"], "rank": result.rank, "world_size": world,
            "samples_per_s": result.samples_per_second(), "epochs": [e.samples_per_second for e in result.epochs],
            "parameters": result.parameters if result.rank == 0 else None, "model_state": state,
            "model_state_bytes": sum(state.values()), "bytes_per_step": sent,
            "collectives": None if in_process else {"all_reduce": counter.bytes}}


def run_tf_cases(cases: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Entry point: each case trained and measured in turn; a failed case is ``{"name", "error"}``."""
    most = max((case.get("replicas", 1) for case in cases), default=1)
    if most > 1:  # before TensorFlow starts: the logical CPUs every in-process case may ask for
        from dtutor.tf import setup

        setup.prepare_devices(most).config.list_logical_devices()  # started now: a 1-replica case keeps them
    found = []
    for case in cases:
        try:
            found.append(run_tf_case(case))
        except Exception as error:  # noqa: BLE001 - reported, and the next case runs
            traceback.print_exc()
            found.append({"name": case["name"], "error": f"{type(error).__name__}: {error}"[:500]})
    return found
