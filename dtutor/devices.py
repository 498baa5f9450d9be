"""What can this machine train with? One inventory of GPUs, CPU cores and distributed backends.

Four sources describe the GPUs, each the way the course shows them: GPUtil (wraps ``nvidia-smi``), NVML
(``nvidia-ml-py``, imported as ``pynvml``), ``torch.cuda`` and TensorFlow's ``list_physical_devices``.
Each answer is kept as a ``SourceReport``: no GPU, no driver or no package is a result that is recorded,
never raised. The devices are merged by UUID (or by index where a source has no UUID), the backends
(gloo, NCCL, MPI, Horovod, DeepSpeed) are checked, and ``recommend`` says how each notebook runs here:
on real GPUs, on simulated CPU workers, or not at all (and how to fix that).

Command line: ``python -m dtutor.devices [--json] [--no-tf] [--no-deepspeed]``.
"""

from __future__ import annotations

import argparse
import contextlib
import importlib
import importlib.util
import io
import json
import logging
import os
import shutil
import sys
import warnings
from collections.abc import Callable, Iterator
from dataclasses import asdict, dataclass, field, fields
from pathlib import Path

MIB = 1024 * 1024
_import = importlib.import_module  # every probe imports through this name, so tests can make one fail


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


def _error(exc: BaseException) -> str:
    text = f"{type(exc).__name__}: {exc}"
    if "distutils" in text:
        text += " (GPUtil 1.4.0 imports distutils, which Python 3.12 removed; setuptools brings it back)"
    return text


def _text(value: object) -> str:
    return value.decode() if isinstance(value, bytes) else str(value)


def _errors_only(record: logging.LogRecord) -> bool:
    return record.levelno >= logging.ERROR


@contextlib.contextmanager
def _quiet() -> Iterator[None]:
    """Hide what importing a framework prints: warnings, C++ banners on fd 2, DeepSpeed's info logs.

    DeepSpeed's logger keeps the ``sys.stdout`` it saw at import, so it is filtered rather than redirected.
    """
    ds_logger = logging.getLogger("DeepSpeed")
    ds_logger.addFilter(_errors_only)
    sys.stderr.flush()
    try:
        saved = os.dup(2)
    except OSError:  # no file descriptor 2 (pythonw)
        saved = None
    try:
        with warnings.catch_warnings(), contextlib.redirect_stderr(io.StringIO()), open(os.devnull, "w") as f:
            warnings.simplefilter("ignore")
            if saved is not None:
                os.dup2(f.fileno(), 2)
            yield
    finally:
        if saved is not None:
            os.dup2(saved, 2)
            os.close(saved)
        ds_logger.removeFilter(_errors_only)


def probe_gputil() -> SourceReport:
    """GPUtil parses ``nvidia-smi``; it returns ``[]`` silently when that is missing, so check first."""
    gputil = _import("GPUtil")
    if shutil.which("nvidia-smi") is None:
        return SourceReport("gputil", False, error="nvidia-smi not found on PATH (GPUtil only wraps it)")
    devices = [Accelerator(int(g.id), g.name, g.uuid, g.memoryTotal, g.memoryFree, 100.0 * g.load, g.driver)
               for g in gputil.getGPUs()]
    return SourceReport("gputil", True, devices)


def probe_nvml() -> SourceReport:
    """NVML, the library under ``nvidia-smi``: memory, utilization, driver, compute capability."""
    nvml = _import("pynvml")
    nvml.nvmlInit()
    try:
        driver, devices = _text(nvml.nvmlSystemGetDriverVersion()), []
        for i in range(nvml.nvmlDeviceGetCount()):
            h = nvml.nvmlDeviceGetHandleByIndex(i)
            mem = nvml.nvmlDeviceGetMemoryInfo(h)
            acc = Accelerator(i, _text(nvml.nvmlDeviceGetName(h)), _text(nvml.nvmlDeviceGetUUID(h)),
                              mem.total / MIB, mem.free / MIB, driver=driver)
            with contextlib.suppress(Exception):  # not every GPU reports these two
                acc.utilization_pct = float(nvml.nvmlDeviceGetUtilizationRates(h).gpu)
            with contextlib.suppress(Exception):
                acc.compute_capability = "{}.{}".format(*nvml.nvmlDeviceGetCudaComputeCapability(h))
            devices.append(acc)
    finally:
        nvml.nvmlShutdown()
    return SourceReport("nvml", True, devices)


def probe_torch() -> SourceReport:
    """``torch.cuda``: name, total memory, compute capability (initializes CUDA, allocates nothing)."""
    torch = _import("torch")
    build = f"CUDA {torch.version.cuda}" if torch.version.cuda else "a CPU-only build"
    note = f"torch {torch.__version__} ({build})"
    with warnings.catch_warnings():  # a CUDA build without a driver warns here; the note says it instead
        warnings.simplefilter("ignore")
        available = torch.cuda.is_available()
    if not available:
        return SourceReport("torch", True, note=note + ": torch.cuda.is_available() is False")
    devices = []
    for i in range(torch.cuda.device_count()):
        p = torch.cuda.get_device_properties(i)
        uuid = str(getattr(p, "uuid", "") or "") or None
        cc = f"{p.major}.{p.minor}"
        devices.append(Accelerator(i, p.name, uuid, p.total_memory / MIB, compute_capability=cc))
    return SourceReport("torch", True, devices, note=note)


def probe_tensorflow() -> SourceReport:
    """TensorFlow's ``tf.config.list_physical_devices('GPU')``: lists only, reserves no GPU memory."""
    with _quiet():
        tf = _import("tensorflow")
    devices = []
    for d in tf.config.list_physical_devices("GPU"):
        details = tf.config.experimental.get_device_details(d)
        cc = details.get("compute_capability")
        devices.append(Accelerator(int(d.name.rsplit(":", 1)[1]), details.get("device_name"),
                                   compute_capability="{}.{}".format(*cc) if cc else None))
    built = "with" if tf.test.is_built_with_cuda() else "without"
    return SourceReport("tensorflow", True, devices, note=f"TensorFlow {tf.__version__}, built {built} CUDA")


def _probe(name: str, fn: Callable[[], SourceReport]) -> SourceReport:
    """Run one probe; whatever it raises becomes ``ok=False`` with the error's text."""
    try:
        return fn()
    except Exception as exc:  # every failure is a finding, not a crash
        return SourceReport(name, False, error=_error(exc))


def _uuid_key(uuid: str | None) -> str | None:
    """NVML says ``GPU-5c2e...`` where torch says ``5c2e...``: compare without the prefix."""
    return uuid.lower().removeprefix("gpu-") if uuid else None


def merge_devices(reports: list[SourceReport]) -> list[Accelerator]:
    """One ``Accelerator`` per GPU: devices with the same UUID, or the same index where one has no UUID.

    Each field comes from the first report (in the order given) that knows it.
    """
    merged: list[Accelerator] = []
    for report in reports:
        for dev in report.devices:
            key = _uuid_key(dev.uuid)
            match = next((m for m in merged if (key and key == _uuid_key(m.uuid))
                          or ((not key or not m.uuid) and m.index == dev.index)), None)
            if match is None:
                match = Accelerator(dev.index)
                merged.append(match)
            for f in fields(Accelerator):
                if f.name not in ("index", "sources") and getattr(match, f.name) is None:
                    setattr(match, f.name, getattr(dev, f.name))
            match.sources.append(report.name)
    return sorted(merged, key=lambda a: a.index)


def _torch_backends(n_gpus: int) -> dict[str, Backend]:
    names = ("gloo", "nccl", "mpi")
    try:
        dist = _import("torch.distributed")
        built = {b: dist.is_available() and getattr(dist, f"is_{b}_available")() for b in names}
    except Exception as exc:
        return {b: Backend(b, False, f"torch.distributed: {_error(exc)}") for b in names}
    out = {b: Backend(b, ok, "built into torch" if ok else "not built into torch") for b, ok in built.items()}
    if built["nccl"] and n_gpus == 0:
        out["nccl"] = Backend("nccl", False, "built into torch, but needs at least one GPU")
    return out


def horovod_frameworks() -> list[str] | None:
    """Frameworks Horovod was built for, from its compiled extensions (as ``horovodrun --check-build``);
    None when Horovod is not installed. Does not import Horovod."""
    spec = importlib.util.find_spec("horovod")
    if spec is None or not spec.submodule_search_locations:
        return None
    pkg = Path(next(iter(spec.submodule_search_locations)))
    return [fw for fw in ("torch", "tensorflow", "mxnet") if any((pkg / fw).glob("mpi_lib*"))]


def _horovod_backend() -> Backend:
    """Horovod: which framework extensions were built, and what its torch extension was built with."""
    frameworks = horovod_frameworks()
    if frameworks is None:
        return Backend("horovod", False, "not installed: ./course setup builds it (scripts/build_horovod.sh)")
    if not frameworks:
        return Backend("horovod", False, "installed, but built with no framework: rerun ./course setup")
    detail = "frameworks: " + ", ".join(frameworks)
    if "torch" in frameworks:
        try:
            hvd = _import("horovod.torch")
            built = [b for b in ("gloo", "mpi", "nccl") if getattr(hvd, f"{b}_built")()]
            detail += "; built with: " + ", ".join(built)
        except Exception as exc:
            return Backend("horovod", False, f"{detail}; import horovod.torch failed: {_error(exc)}")
    if not (shutil.which("horovodrun") or Path(sys.executable).with_name("horovodrun").exists()):
        detail += "; horovodrun not found"
    return Backend("horovod", True, detail)


def _deepspeed_backend(probe: bool) -> Backend:
    """DeepSpeed's accelerator and communication backend (``cpu`` and ``gloo`` without GPUs)."""
    if importlib.util.find_spec("deepspeed") is None:
        return Backend("deepspeed", False, "not installed: run ./course setup")
    if not probe:
        return Backend("deepspeed", True, "installed (not imported)")
    try:
        with _quiet():
            version = _import("deepspeed").__version__
            acc = _import("deepspeed.accelerator").get_accelerator()
            name, comm = acc._name, acc.communication_backend_name()
    except Exception as exc:
        return Backend("deepspeed", False, f"import failed: {_error(exc)}")
    return Backend("deepspeed", True, f"{version}: accelerator {name}, communication {comm}")


def inventory(include_tf: bool = True, include_deepspeed: bool = True) -> Inventory:
    """Probe every GPU source, the CPU and the backends; never raises for a missing GPU, driver or package.

    ``include_tf=False`` keeps TensorFlow out of this process (its report then says it was skipped);
    ``include_deepspeed=False`` only checks that DeepSpeed is installed, without importing it.
    """
    reports = [_probe("gputil", probe_gputil), _probe("nvml", probe_nvml), _probe("torch", probe_torch)]
    if include_tf:
        reports.append(_probe("tensorflow", probe_tensorflow))
    else:
        reports.append(SourceReport("tensorflow", False, error="skipped (include_tf=False)"))
    gpus = merge_devices(reports)
    affinity = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else None
    backends = _torch_backends(len(gpus))
    backends["horovod"] = _horovod_backend()
    backends["deepspeed"] = _deepspeed_backend(include_deepspeed)
    return Inventory(reports, gpus, os.cpu_count() or 1, affinity, backends)


@dataclass
class Recommendation:
    """How one notebook's strategy runs here; ``mode`` is ``gpu``, ``simulated`` or ``unavailable``."""

    notebook: str
    strategy: str
    mode: str
    workers: int
    backend: str
    how: str


STRATEGIES = {"01": "DataParallel", "02": "DDP", "03": "Horovod", "04": "TF MirroredStrategy",
              "05": "Model/pipeline parallel", "06": "DeepSpeed", "07": "Comparison"}


def recommend(inv: Inventory, simulated_workers: int | None = None) -> list[Recommendation]:
    """For notebooks 01-07: run on the GPUs, on simulated CPU workers, or not here (and what to do).

    Simulated runs use ``simulated_workers`` workers (default: the usable cores, clamped to 2..4).
    """
    n, be, recs = len(inv.gpus), inv.backends, []
    sim = simulated_workers or max(2, min(4, inv.cpu_cores))

    def add(nb: str, mode: str, workers: int, backend: str, how: str) -> None:
        recs.append(Recommendation(nb, STRATEGIES[nb], mode, workers, backend, how))

    if n:
        add("01", "gpu", n, "one process", f"nn.DataParallel replicates the model on {n} GPU(s) in threads")
    else:
        add("01", "simulated", 1, "one process", "no GPUs: nn.DataParallel simply calls the module on CPU")
    if n and be["nccl"].usable:
        add("02", "gpu", n, "nccl", f"{n} ranks, one per GPU, all-reduce over NCCL")
    elif be["gloo"].usable:
        add("02", "simulated", sim, "gloo", f"{sim} CPU processes (ranks) all-reduce over gloo")
    else:
        add("02", "unavailable", 0, "-", "this torch build has no gloo backend")
    hvd = be["horovod"]
    if not hvd.usable:
        add("03", "unavailable", 0, "-", hvd.detail)
    elif n and "nccl" in hvd.detail:
        add("03", "gpu", n, "nccl", f"horovodrun -np {n}: one rank per GPU over NCCL")
    else:
        op = "gloo" if "gloo" in hvd.detail else "mpi"
        add("03", "simulated", sim, op, f"horovodrun -np {sim}: {sim} CPU ranks over {op}")
    tf = next((s for s in inv.sources if s.name == "tensorflow" and s.ok), None)
    if tf is None and importlib.util.find_spec("tensorflow") is None:
        add("04", "unavailable", 0, "-", "TensorFlow not installed: run ./course setup")
    elif tf is not None and tf.devices:
        add("04", "gpu", len(tf.devices), "NcclAllReduce", f"one replica per GPU ({len(tf.devices)})")
    else:
        add("04", "simulated", sim, "ReductionToOneDevice",
            f"{sim} logical CPU devices (tf.config.set_logical_device_configuration) as replicas")
    if n >= 2:
        add("05", "gpu", n, "device copies", f"model stages on {n} GPUs")
    else:
        add("05", "simulated", 2, "device copies", f"under 2 GPUs: stages share {'cuda:0' if n else 'cpu'}")
    ds = be["deepspeed"]
    if not ds.usable:
        add("06", "unavailable", 0, "-", ds.detail)
    elif n and "accelerator cuda" in ds.detail:
        add("06", "gpu", n, "nccl", f"deepspeed launcher: {n} ranks, ZeRO on the GPUs")
    else:
        add("06", "simulated", sim, "gloo", f"CPU accelerator: {sim} gloo ranks, ZeRO shards in CPU memory")
    add("07", "gpu" if n else "simulated", n or sim, "-",
        "times the strategies above that run here" + ("" if n else "; on CPU: overhead, not speed-up"))
    return recs


def _num(v: float | None) -> str | None:
    return None if v is None else f"{v:.0f}"


def _table(headers: list[str], rows: list[list]) -> str:
    cells = [headers] + [["-" if c is None else str(c) for c in r] for r in rows]
    widths = [max(len(r[i]) for r in cells) for i in range(len(headers))]
    lines = ["  ".join(c.ljust(w) for c, w in zip(r, widths, strict=True)).rstrip() for r in cells]
    return "\n".join([lines[0], "  ".join("-" * w for w in widths), *lines[1:]])


def format_inventory(inv: Inventory) -> str:
    """The inventory as plain-text tables: GPU sources, merged GPUs, CPU cores, backends."""
    src = [[s.name, "ok" if s.ok else "failed", len(s.devices), s.error or s.note] for s in inv.sources]
    out = ["GPU sources", _table(["source", "status", "gpus", "detail"], src), "",
           f"GPUs (merged): {len(inv.gpus)}"]
    if inv.gpus:
        gpu = [[g.index, g.name, _num(g.memory_total_mib), _num(g.memory_free_mib), _num(g.utilization_pct),
                g.driver, g.compute_capability, "+".join(g.sources)] for g in inv.gpus]
        out.append(_table(["idx", "name", "MiB total", "MiB free", "util %", "driver", "cc", "sources"], gpu))
    bk = [[b.name, "yes" if b.usable else "no", b.detail] for b in inv.backends.values()]
    out += ["", f"CPU cores: {inv.cpu_logical} logical, {inv.cpu_affinity or '?'} usable by this process",
            "", "Backends", _table(["backend", "usable", "detail"], bk)]
    return "\n".join(out)


def format_recommendations(recs: list[Recommendation]) -> str:
    """The recommendations as a plain-text table."""
    return _table(["nb", "strategy", "mode", "workers", "backend", "how"],
                  [[r.notebook, r.strategy, r.mode, r.workers, r.backend, r.how] for r in recs])


def main(argv: list[str] | None = None) -> int:
    """Command line: print the inventory and the recommendations as tables, or as JSON with ``--json``."""
    parser = argparse.ArgumentParser(prog="python -m dtutor.devices", description=__doc__.splitlines()[0])
    parser.add_argument("--json", action="store_true", help="print one JSON object")
    parser.add_argument("--no-tf", action="store_true", help="do not import TensorFlow")
    parser.add_argument("--no-deepspeed", action="store_true", help="do not import DeepSpeed")
    args = parser.parse_args(argv)
    inv = inventory(include_tf=not args.no_tf, include_deepspeed=not args.no_deepspeed)
    recs = recommend(inv)
    if args.json:
        doc = {"inventory": inv.to_dict(), "recommendations": [asdict(r) for r in recs]}
        print(json.dumps(doc, indent=2))
    else:
        print(format_inventory(inv), "", "How the course runs here", format_recommendations(recs), sep="\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
