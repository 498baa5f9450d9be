"""What the inventory records: GPUs (``Accelerator``), each source's answer, backends, the whole inventory."""

from __future__ import annotations

from dataclasses import asdict, dataclass, field

MIB = 1024 * 1024


@dataclass
class Accelerator:
    """One GPU as one or more sources describe it (``None``: no source knew that field)."""

    index: int
    name: str | None = None
    uuid: str | None = None
    memory_total_mib: float | None = None
    memory_free_mib: float | None = None
    utilization_pct: float | None = None
    driver: str | None = None
    compute_capability: str | None = None
    sources: list[str] = field(default_factory=list)

    @property
    def memory_used_mib(self) -> float | None:
        """Total minus free, when both are known."""
        if self.memory_total_mib is None or self.memory_free_mib is None:
            return None
        return self.memory_total_mib - self.memory_free_mib


@dataclass
class SourceReport:
    """One source's answer: ``ok=False`` with an ``error``, or ``ok=True`` with its (maybe no) devices."""

    name: str
    ok: bool
    devices: list[Accelerator] = field(default_factory=list)
    error: str | None = None
    note: str | None = None


@dataclass
class Backend:
    """A communication backend or framework, and whether this machine can use it."""

    name: str
    usable: bool
    detail: str = ""


@dataclass
class Inventory:
    """Every source's report, the merged GPUs, the CPU cores and the backends."""

    sources: list[SourceReport]
    gpus: list[Accelerator]
    cpu_logical: int
    cpu_affinity: int | None
    backends: dict[str, Backend]

    @property
    def cpu_cores(self) -> int:
        """The cores this process may run on: the affinity mask where known, else the logical count."""
        return self.cpu_affinity or self.cpu_logical

    def to_dict(self) -> dict:
        """A JSON-ready dict of the whole inventory."""
        return {**asdict(self), "cpu_cores": self.cpu_cores}
