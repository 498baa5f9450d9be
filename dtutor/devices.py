"""What can this machine train with? One inventory of GPUs, CPU cores and distributed backends.

Four sources describe the GPUs, each the way the course shows them: GPUtil (wraps ``nvidia-smi``), NVML
(``nvidia-ml-py``, imported as ``pynvml``), ``torch.cuda`` and TensorFlow's ``list_physical_devices``.
Each source's answer is kept as a ``SourceReport``: having no GPU, or no driver, is a normal result that
is recorded, never raised. The devices are merged by UUID (or by index where a source has no UUID), the
backends (gloo, NCCL, MPI, Horovod, DeepSpeed) are checked, and ``recommend`` says how each notebook runs
here: on real GPUs, on simulated CPU workers, or not at all (and how to fix that).

Run ``python -m dtutor.devices`` (``--json`` for machine-readable output).
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
from dataclasses import asdict, dataclass, field, fields
from pathlib import Path

MIB = 1024 * 1024
_import = importlib.import_module  # the probes import through this name, so tests can make one fail


@dataclass
class Accelerator:
    """One GPU as one or more sources describe it (``None``: no source knew this field)."""

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
    """What one source said: ``ok=False`` with an ``error``, or ``ok=True`` with its (maybe zero) devices."""

    name: str
    ok: bool
    devices: list[Accelerator] = field(default_factory=list)
    error: str | None = None
    note: str | None = None


@dataclass
class Backend:
    """A communication backend or framework and whether this machine can use it."""

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
        """Cores this process may run on (the affinity mask where known, else the logical count)."""
        return self.cpu_affinity or self.cpu_logical

    def to_dict(self) -> dict:
        """A JSON-ready dict (``dataclasses.asdict`` plus the derived fields)."""
        return {**asdict(self), "cpu_cores": self.cpu_cores}


def _error(exc: BaseException) -> str:
    text = f"{type(exc).__name__}: {exc}".strip()
    if "distutils" in text:
        text += " (GPUtil 1.4.0 imports distutils, which Python 3.12 removed; setuptools provides it again)"
    return text


def _probe(name: str, fn) -> SourceReport:
    """Run one source's probe; whatever it raises becomes ``ok=False`` with the error text."""
    try:
        return fn()
    except Exception as exc:  # noqa: BLE001 - every failure is a finding, not a crash
        return SourceReport(name, ok=False, error=_error(exc))


def probe_gputil() -> SourceReport:
    """GPUtil: parses ``nvidia-smi``; it returns ``[]`` silently when that is missing, so check first."""
    gputil = _import("GPUtil")
    if shutil.which("nvidia-smi") is None:
        return SourceReport("gputil", ok=False, error="nvidia-smi not found on PATH (GPUtil only wraps it)")
    devices = [
        Accelerator(index=int(g.id), name=g.name, uuid=g.uuid, memory_total_mib=g.memoryTotal,
                    memory_free_mib=g.memoryFree, utilization_pct=100.0 * g.load, driver=g.driver)
        for g in gputil.getGPUs()
    ]
    return SourceReport("gputil", ok=True, devices=devices)


def probe_nvml() -> SourceReport:
    """NVML, the library under ``nvidia-smi``: memory, utilization, driver, compute capability."""
    nvml = _import("pynvml")
    nvml.nvmlInit()
    try:
        driver = nvml.nvmlSystemGetDriverVersion()
        devices = []
        for i in range(nvml.nvmlDeviceGetCount()):
            h = nvml.nvmlDeviceGetHandleByIndex(i)
            mem = nvml.nvmlDeviceGetMemoryInfo(h)
            acc = Accelerator(index=i, name=_text(nvml.nvmlDeviceGetName(h)), uuid=_text(nvml.nvmlDeviceGetUUID(h)),
                              memory_total_mib=mem.total / MIB, memory_free_mib=mem.free / MIB, driver=_text(driver))
            with contextlib.suppress(Exception):  # not every GPU reports these
                acc.utilization_pct = float(nvml.nvmlDeviceGetUtilizationRates(h).gpu)
            with contextlib.suppress(Exception):
                acc.compute_capability = "{}.{}".format(*nvml.nvmlDeviceGetCudaComputeCapability(h))
            devices.append(acc)
    finally:
        nvml.nvmlShutdown()
    return SourceReport("nvml", ok=True, devices=devices)


def probe_torch() -> SourceReport:
    """``torch.cuda``: name, total memory and compute capability (initializes CUDA, allocates nothing)."""
    torch = _import("torch")
    if not torch.cuda.is_available():
        build = f"CUDA {torch.version.cuda}" if torch.version.cuda else "a CPU-only build"
        return SourceReport("torch", ok=True, note=f"torch {torch.__version__} ({build}): cuda not available")
    devices = []
    for i in range(torch.cuda.device_count()):
        p = torch.cuda.get_device_properties(i)
        uuid = str(getattr(p, "uuid", "") or "") or None
        devices.append(Accelerator(index=i, name=p.name, uuid=uuid, memory_total_mib=p.total_memory / MIB,
                                   compute_capability=f"{p.major}.{p.minor}"))
    return SourceReport("torch", ok=True, devices=devices, note=f"torch {torch.__version__}, CUDA {torch.version.cuda}")


def probe_tensorflow() -> SourceReport:
    """TensorFlow: ``tf.config.list_physical_devices('GPU')`` (lists only; reserves no GPU memory)."""
    if "tensorflow" not in sys.modules:
        os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")  # hide TF's C++ info lines about CPU features
    tf = _import("tensorflow")
    devices = []
    for d in tf.config.list_physical_devices("GPU"):
        details = tf.config.experimental.get_device_details(d)
        cc = details.get("compute_capability")
        devices.append(Accelerator(index=int(d.name.rsplit(":", 1)[1]), name=details.get("device_name"),
                                   compute_capability="{}.{}".format(*cc) if cc else None))
    built = "with CUDA" if tf.test.is_built_with_cuda() else "without CUDA"
    return SourceReport("tensorflow", ok=True, devices=devices, note=f"TensorFlow {tf.__version__}, built {built}")


def _text(value) -> str:
    return value.decode() if isinstance(value, bytes) else str(value)


def _uuid_key(uuid: str | None) -> str | None:
    """NVML says ``GPU-5c2e...``, torch says ``5c2e...``: compare without the prefix."""
    return uuid.lower().removeprefix("gpu-") if uuid else None


def merge_devices(reports: list[SourceReport]) -> list[Accelerator]:
    """One ``Accelerator`` per physical GPU: same UUID, or same index where one side has no UUID.

    Fields are filled from the first source that knows them (the order of ``reports``).
    """
    merged: list[Accelerator] = []
    for report in reports:
        for dev in report.devices:
            key = _uuid_key(dev.uuid)
            match = next((m for m in merged if (key and key == _uuid_key(m.uuid))
                          or ((not key or not m.uuid) and m.index == dev.index)), None)
            if match is None:
                match = Accelerator(index=dev.index)
                merged.append(match)
            for f in fields(Accelerator):
                if f.name not in ("index", "sources") and getattr(match, f.name) is None:
                    setattr(match, f.name, getattr(dev, f.name))
            match.sources.append(report.name)
    return sorted(merged, key=lambda a: a.index)


class _BelowError(logging.Filter):
    def filter(self, record: logging.LogRecord) -> bool:
        return record.levelno >= logging.ERROR


def _deepspeed_backend() -> Backend:
    """DeepSpeed's accelerator, imported quietly (its logger writes to stdout, so filter it, don't redirect)."""
    if importlib.util.find_spec("deepspeed") is None:
        return Backend("deepspeed", False, "not installed: run ./course setup")
    ds_logger, quiet = logging.getLogger("DeepSpeed"), _BelowError()
    ds_logger.addFilter(quiet)
    try:
        with warnings.catch_warnings(), contextlib.redirect_stderr(io.StringIO()):
            warnings.simplefilter("ignore")
            deepspeed = _import("deepspeed")
            acc = _import("deepspeed.accelerator").get_accelerator()
            name, comm = acc._name, acc.communication_backend_name()
    except Exception as exc:  # noqa: BLE001
        return Backend("deepspeed", False, f"import failed: {_error(exc)}")
    finally:
        ds_logger.removeFilter(quiet)
    return Backend("deepspeed", True, f"{deepspeed.__version__}: accelerator {name}, communication {comm}")


def _horovod_backend() -> Backend:
    """Horovod: which framework extensions were built (from the files, as ``horovodrun --check-build``)."""
    spec = importlib.util.find_spec("horovod")
    if spec is None or not spec.submodule_search_locations:
        return Backend("horovod", False, "not installed: ./course setup builds it (scripts/build_horovod.sh)")
    pkg = Path(next(iter(spec.submodule_search_locations)))
    frameworks = [fw for fw in ("torch", "tensorflow", "mxnet") if any((pkg / fw).glob("mpi_lib*"))]
    if not frameworks:
        return Backend("horovod", False, "installed, but no framework extension was built")
    detail = "frameworks: " + ", ".join(frameworks)
    if "torch" in frameworks:
        try:
            hvd = _import("horovod.torch")
            ops = [op for op in ("gloo", "mpi", "nccl") if getattr(hvd, f"{op}_built")()]
            detail += "; controllers/ops: " + ", ".join(ops)
        except Exception as exc:  # noqa: BLE001
            return Backend("horovod", False, f"{detail}; import horovod.torch failed: {_error(exc)}")
    launcher = shutil.which("horovodrun") or Path(sys.executable).with_name("horovodrun")
    return Backend("horovod", True, detail + ("" if Path(launcher).exists() else "; horovodrun missing"))


def _torch_backends(n_gpus: int) -> dict[str, Backend]:
    try:
        dist = _import("torch.distributed")
        built = {b: dist.is_available() and getattr(dist, f"is_{b}_available")() for b in ("gloo", "nccl", "mpi")}
    except Exception as exc:  # noqa: BLE001
        return {b: Backend(b, False, f"torch.distributed: {_error(exc)}") for b in ("gloo", "nccl", "mpi")}
    out = {b: Backend(b, ok, "built into torch" if ok else "not built into torch") for b, ok in built.items()}
    if built["nccl"] and n_gpus == 0:
        out["nccl"] = Backend("nccl", False, "built into torch, but needs at least one GPU")
    return out


def inventory(include_tf: bool = True, include_deepspeed: bool = True) -> Inventory:
    """Probe every source and backend; never raises for a missing GPU, driver or package.

    ``include_tf=False`` keeps TensorFlow out of this process (its report then says it was skipped);
    ``include_deepspeed=False`` skips importing DeepSpeed (only whether it is installed is reported).
    """
    reports = [_probe("gputil", probe_gputil), _probe("nvml", probe_nvml), _probe("torch", probe_torch)]
    if include_tf:
        reports.append(_probe("tensorflow", probe_tensorflow))
    else:
        reports.append(SourceReport("tensorflow", ok=False, error="skipped (include_tf=False)"))
    gpus = merge_devices(reports)
    affinity = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else None
    backends = _torch_backends(len(gpus))
    backends["horovod"] = _horovod_backend()
    if include_deepspeed:
        backends["deepspeed"] = _deepspeed_backend()
    else:
        installed = importlib.util.find_spec("deepspeed") is not None
        backends["deepspeed"] = Backend("deepspeed", installed, "installed (not probed)" if installed
                                        else "not installed: run ./course setup")
    return Inventory(reports, gpus, os.cpu_count() or 1, affinity, backends)


@dataclass
class Recommendation:
    """How one notebook's strategy runs here: mode is ``gpu``, ``simulated`` or ``unavailable``."""

    notebook: str
    strategy: str
    mode: str
    workers: int
    backend: str
    how: str


def recommend(inv: Inventory, simulated_workers: int | None = None) -> list[Recommendation]:
    """For each strategy of notebooks 01-07: real GPUs, simulated CPU workers, or why not and what to do."""
    n, sim = len(inv.gpus), simulated_workers or max(2, min(4, inv.cpu_cores))
    be = inv.backends
    tf = next((s for s in inv.sources if s.name == "tensorflow"), None)
    tf_known = tf is not None and tf.ok
    tf_gpus = len(tf.devices) if tf_known else 0
    tf_here = tf_known or importlib.util.find_spec("tensorflow") is not None
    hvd_ops = be["horovod"].detail
    ds_gpu = be["deepspeed"].usable and "accelerator cuda" in be["deepspeed"].detail
    nccl = be["nccl"].usable
    R = Recommendation
    return [
        R("01", "DataParallel", "gpu", n, "single process", f"nn.DataParallel replicates the model on {n} GPUs")
        if n >= 2 else R("01", "DataParallel", "simulated", sim, "single process",
                         "fewer than 2 GPUs: the scatter / replicate / gather steps run on CPU tensors"),
        R("02", "DDP", "gpu", n, "nccl", f"{n} ranks, one per GPU, all-reduce over NCCL") if n and nccl
        else R("02", "DDP", "simulated", sim, "gloo", f"{sim} CPU processes (ranks) all-reduce over gloo")
        if be["gloo"].usable else R("02", "DDP", "unavailable", 0, "-", "torch.distributed has no gloo here"),
        R("03", "Horovod", "unavailable", 0, "-", be["horovod"].detail) if not be["horovod"].usable
        else R("03", "Horovod", "gpu", n, "nccl", f"horovodrun -np {n}: one rank per GPU, NCCL all-reduce")
        if n and "nccl" in hvd_ops
        else R("03", "Horovod", "simulated", sim, "gloo" if "gloo" in hvd_ops else "mpi",
               f"horovodrun -np {sim}: {sim} CPU ranks"),
        R("04", "TF MirroredStrategy", "unavailable", 0, "-", "TensorFlow not installed: run ./course setup")
        if not tf_here else R("04", "TF MirroredStrategy", "gpu", tf_gpus, "NcclAllReduce",
                              f"one replica per GPU ({tf_gpus})") if tf_gpus
        else R("04", "TF MirroredStrategy", "simulated", sim, "ReductionToOneDevice",
               f"{sim} logical CPU devices (tf.config.set_logical_device_configuration) as replicas"),
        R("05", "Model/pipeline parallel", "gpu", n, "cuda copies", f"model stages on {n} GPUs") if n >= 2
        else R("05", "Model/pipeline parallel", "simulated", 2, "cpu", "fewer than 2 GPUs: stages all on CPU"),
        R("06", "DeepSpeed", "unavailable", 0, "-", be["deepspeed"].detail) if not be["deepspeed"].usable
        else R("06", "DeepSpeed", "gpu", n, "nccl", f"deepspeed launcher, {n} ranks, ZeRO on GPUs")
        if n and ds_gpu else R("06", "DeepSpeed", "simulated", sim, "gloo",
                               f"CPU accelerator: {sim} gloo ranks, ZeRO partitions in CPU memory"),
        R("07", "Comparison", "gpu" if n else "simulated", n or sim, "-",
          "compares what runs above" + ("" if n else "; CPU timings show overhead, not GPU speed-ups")),
    ]


def _table(headers: list[str], rows: list[list]) -> str:
    cells = [[str(c) for c in headers]] + [["-" if c is None else str(c) for c in r] for r in rows]
    widths = [max(len(r[i]) for r in cells) for i in range(len(headers))]
    lines = ["  ".join(c.ljust(w) for c, w in zip(r, widths, strict=True)).rstrip() for r in cells]
    return "\n".join([lines[0], "  ".join("-" * w for w in widths), *lines[1:]])


def format_inventory(inv: Inventory) -> str:
    """The inventory as plain-text tables: sources, GPUs, CPU, backends."""
    mib = lambda v: None if v is None else f"{v:.0f}"  # noqa: E731
    src = [[s.name, "ok" if s.ok else "failed", len(s.devices), s.error or s.note or ""] for s in inv.sources]
    gpu = [[g.index, g.name, mib(g.memory_total_mib), mib(g.memory_free_mib), g.utilization_pct, g.driver,
            g.compute_capability, "+".join(g.sources)] for g in inv.gpus]
    out = ["GPU sources", _table(["source", "status", "gpus", "detail"], src), "",
           f"GPUs (merged): {len(inv.gpus)}"]
    if gpu:
        out.append(_table(["idx", "name", "MiB total", "MiB free", "util %", "driver", "cc", "sources"], gpu))
    out += ["", f"CPU cores: {inv.cpu_logical} logical, {inv.cpu_affinity or '?'} usable by this process", "",
            "Backends", _table(["backend", "usable", "detail"],
                               [[b.name, "yes" if b.usable else "no", b.detail] for b in inv.backends.values()])]
    return "\n".join(out)


def format_recommendations(recs: list[Recommendation]) -> str:
    """The recommendations as a plain-text table."""
    return _table(["nb", "strategy", "mode", "workers", "backend", "how"],
                  [[r.notebook, r.strategy, r.mode, r.workers, r.backend, r.how] for r in recs])


def main(argv: list[str] | None = None) -> int:
    """Command line: print the inventory and recommendations (``--json`` for JSON)."""
    parser = argparse.ArgumentParser(prog="python -m dtutor.devices", description=__doc__.splitlines()[0])
    parser.add_argument("--json", action="store_true", help="print one JSON object")
    parser.add_argument("--no-tf", action="store_true", help="do not import TensorFlow")
    parser.add_argument("--no-deepspeed", action="store_true", help="do not import DeepSpeed")
    args = parser.parse_args(argv)
    inv = inventory(include_tf=not args.no_tf, include_deepspeed=not args.no_deepspeed)
    recs = recommend(inv)
    if args.json:
        print(json.dumps({"inventory": inv.to_dict(), "recommendations": [asdict(r) for r in recs]}, indent=2))
    else:
        print(format_inventory(inv), "", "How the course runs here", format_recommendations(recs), sep="\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
