"""How much model state one rank holds under ZeRO stages 0-3 and FSDP: the ZeRO paper's formulas, and an estimator.

For Ψ parameters, N data-parallel ranks and K optimizer bytes per parameter, the ZeRO paper (Rajbhandari et
al., 2020) counts per rank, in mixed precision (2-byte parameters and gradients; K = 12 for Adam: an fp32
master copy 4, momentum 4, variance 4)::

    stage 0 (plain data parallelism)         (2 + 2 + K) Ψ          parameters, gradients, optimizer: all whole
    stage 1 (optimizer state partitioned)    2Ψ + 2Ψ + KΨ/N
    stage 2 (+ gradients partitioned)        2Ψ + (2 + K)Ψ/N
    stage 3 (+ parameters partitioned)       (2 + 2 + K)Ψ/N

The fp32 variant has 4-byte parameters and gradients; an fp32 master copy is then redundant, and whether it is
kept depends on the implementation. What DeepSpeed 0.19.8 holds, measured tensor by tensor
(``dtutor.pytorch.sharded.model_state``), which ``model_state`` follows by default:

- parameters and gradients in the compute precision (fp32: 4 bytes, bf16/fp16: 2), whole or 1/N as above;
  stage 1 holds the whole gradient during backward and keeps only its partition once the gradients are reduced;
- an fp32 master copy at stages 1-3 **even in fp32** (the ZeRO optimizer always steps its own fp32 partition),
  and at stage 0 in bf16/fp16; none at stage 0 in fp32 (the optimizer steps the fp32 parameters themselves);
- the optimizer's state in fp32: Adam 8 bytes per parameter (momentum and variance), SGD with momentum 4
  (plain SGD, momentum 0, has none); so K = 12 for Adam and 8 for SGD with a master copy, 8 and 4 without.

FSDP (PyTorch's ``fully_shard``) shards parameters, gradients and optimizer state over all ranks in the
parameters' own precision and keeps no master copy: (4 + 4 + 8)Ψ/N for fp32 Adam (``fsdp_model_state``).

Offload (``offload_optimizer: {device: cpu}``, stages 1-3) moves the master copy and the optimizer state into
host (CPU) memory, where the optimizer steps; DeepSpeed also keeps there an fp32 copy of this rank's gradient
partition (4Ψ/N: what the CPU optimizer reads). At stage 2 the gradients then go from the reduce bucket straight
to the host (no device partition); stage 1 still holds the whole gradient on the device during backward, stage 3
its partition. The estimator reports ``device`` and ``host`` bytes separately; on a CPU-only machine both are
the same memory, so offload only moves bytes from one pool to the other (and adds transfer buffers).

These are model states only: activations, communication buckets and other temporary buffers come on top.
This module imports no framework.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass

BYTES = {"fp32": 4, "bf16": 2, "fp16": 2}  # bytes per value in each precision
STATE_BYTES = {"adam": 8, "sgd": 4}  # fp32 optimizer state per parameter: Adam's two moments, SGD's momentum
MASTER_BYTES = 4  # the fp32 master copy of a parameter
STAGES = (0, 1, 2, 3)
PAPER_FORMULAS = {0: "(2 + 2 + K)Ψ", 1: "2Ψ + 2Ψ + KΨ/N", 2: "2Ψ + (2 + K)Ψ/N", 3: "(2 + 2 + K)Ψ/N"}
COMPONENTS = ("parameters", "gradients", "optimizer")  # the three parts the paper's formulas add up


@dataclass(frozen=True)
class ModelState:
    """Bytes of model state one rank holds, by component; ``host_gradients`` and, with ``offload``, the master
    copy and optimizer state are in host memory, the rest on the device."""

    parameters: float
    gradients: float  # on the device, in the compute precision
    master_weights: float
    optimizer_state: float
    host_gradients: float = 0.0  # offload: the fp32 gradient partition the CPU optimizer reads
    offload: bool = False

    @property
    def optimizer(self) -> float:
        """The paper's KΨ part: master copy plus optimizer state."""
        return self.master_weights + self.optimizer_state

    @property
    def all_gradients(self) -> float:
        """Gradient bytes wherever they are (device and host)."""
        return self.gradients + self.host_gradients

    @property
    def total(self) -> float:
        """Every byte of model state of this rank."""
        return self.parameters + self.all_gradients + self.optimizer

    @property
    def host(self) -> float:
        """Bytes in host memory: with offload the master copy, the optimizer state and the host gradients."""
        return self.optimizer + self.host_gradients if self.offload else 0.0

    @property
    def device(self) -> float:
        """Bytes in the accelerator's memory."""
        return self.total - self.host

    def components(self) -> dict[str, float]:
        """The paper's three parts: parameters, gradients (device and host), optimizer (master + state)."""
        return {"parameters": self.parameters, "gradients": self.all_gradients, "optimizer": self.optimizer}

    def as_dict(self) -> dict[str, float]:
        """Every field and derived total, by name (JSON-friendly)."""
        return {**asdict(self), "optimizer": self.optimizer, "total": self.total, "device": self.device,
                "host": self.host}


def _check(parameters: float, ranks: int, stage: int, precision: str, optimizer: str) -> None:
    if not isinstance(parameters, int | float) or isinstance(parameters, bool) or parameters <= 0:
        raise ValueError(f"parameters: must be a number > 0, got {parameters!r}")
    if not isinstance(ranks, int) or isinstance(ranks, bool) or ranks < 1:
        raise ValueError(f"ranks: must be a whole number >= 1, got {ranks!r}")
    if stage not in STAGES:
        raise ValueError(f"stage: must be 0, 1, 2 or 3, got {stage!r}")
    if precision not in BYTES:
        raise ValueError(f"precision: must be one of {', '.join(BYTES)}, got {precision!r}")
    if optimizer not in STATE_BYTES:
        raise ValueError(f"optimizer: must be one of {', '.join(STATE_BYTES)}, got {optimizer!r}")


def deepspeed_keeps_master(stage: int, precision: str) -> bool:
    """Whether DeepSpeed 0.19.8 keeps an fp32 master copy: always at stages 1-3, at stage 0 only in 16 bits."""
    return stage >= 1 or precision != "fp32"


def optimizer_k(optimizer: str = "adam", master: bool = True) -> int:
    """K, the optimizer bytes per parameter: fp32 state (Adam 8, SGD with momentum 4) plus a master copy (4)."""
    _check(1, 1, 0, "fp32", optimizer)
    return STATE_BYTES[optimizer] + (MASTER_BYTES if master else 0)


def model_state(parameters: float, ranks: int, stage: int, precision: str = "bf16", offload: bool = False,
                optimizer: str = "adam", master: bool | None = None) -> ModelState:
    """The estimator: bytes per rank for Ψ = ``parameters`` on ``ranks`` ranks at ZeRO ``stage``.

    ``master``: keep an fp32 master copy (None: DeepSpeed's rule, ``deepspeed_keeps_master``; True: the
    paper's mixed-precision K; False: none). ``offload`` (stages 1-3) puts the master copy and optimizer state
    in host memory with an fp32 gradient partition (see the module docstring); ``device``/``host`` split them.
    """
    _check(parameters, ranks, stage, precision, optimizer)
    if offload and stage == 0:
        raise ValueError("offload: DeepSpeed offloads a partitioned optimizer only (stages 1-3), got stage 0")
    if master is None:
        master = deepspeed_keeps_master(stage, precision)
    psi, width = float(parameters), BYTES[precision]
    share = {name: psi / ranks if stage >= level else psi
             for name, level in (("optimizer", 1), ("gradients", 2), ("parameters", 3))}
    gradients = width * share["gradients"]
    if offload and stage == 2:
        gradients = 0.0  # reduced straight from the bucket into the host's fp32 partition
    return ModelState(
        parameters=width * share["parameters"],
        gradients=gradients,
        master_weights=MASTER_BYTES * share["optimizer"] if master else 0.0,
        optimizer_state=STATE_BYTES[optimizer] * share["optimizer"],
        host_gradients=MASTER_BYTES * psi / ranks if offload else 0.0,
        offload=offload,
    )


def fsdp_model_state(parameters: float, ranks: int, optimizer: str = "adam", precision: str = "fp32") -> ModelState:
    """FSDP (``fully_shard``): parameters, gradients and optimizer state all 1/N, no master copy."""
    return model_state(parameters, ranks, 3, precision, optimizer=optimizer, master=False)


def paper_model_state(parameters: float, ranks: int, stage: int, optimizer: str = "adam") -> ModelState:
    """The paper's mixed-precision count: 2-byte parameters and gradients, K with the fp32 master copy."""
    return model_state(parameters, ranks, stage, "bf16", optimizer=optimizer, master=True)


def estimate(parameters: float, ranks: int, stage: int, precision: str = "bf16", offload: bool = False,
             optimizer: str = "adam", strategy: str = "deepspeed") -> ModelState:
    """Bytes per rank for ``strategy`` "deepspeed" (ZeRO ``stage``) or "fsdp" (which has no stages)."""
    if strategy == "fsdp":
        if offload:
            raise ValueError("offload: the course's FSDP strategy does not offload; use offload=False")
        return fsdp_model_state(parameters, ranks, optimizer, precision)
    if strategy != "deepspeed":
        raise ValueError(f"strategy: the estimator knows 'deepspeed' and 'fsdp', got {strategy!r}")
    return model_state(parameters, ranks, stage, precision, offload, optimizer)
