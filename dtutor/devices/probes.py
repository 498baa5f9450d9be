"""The four GPU sources (GPUtil, NVML, ``torch.cuda``, TensorFlow), each probed safely, and their merge.

A probe that fails (no GPU, no driver, no package) becomes a ``SourceReport`` with ``ok=False`` and the
error's text, never an exception. Every probe, and the backend checks, import through ``_import``, so tests
can make one import fail.
"""

from __future__ import annotations

import contextlib
import importlib
import io
import logging
import os
import shutil
import sys
import tempfile
import warnings
from collections.abc import Callable, Iterator
from dataclasses import fields

from dtutor.devices.records import MIB, Accelerator, SourceReport

_import = importlib.import_module  # every probe imports through this name, so tests can make one fail


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
    If the import fails, what it printed is shown after all, above the error.
    """
    ds_logger = logging.getLogger("DeepSpeed")
    ds_logger.addFilter(_errors_only)
    sys.stderr.flush()
    try:
        saved = os.dup(2)
    except OSError:  # no file descriptor 2 (pythonw)
        saved = None
    python_lines = io.StringIO()
    with tempfile.TemporaryFile("w+") as native_lines:
        try:
            with warnings.catch_warnings(), contextlib.redirect_stderr(python_lines):
                warnings.simplefilter("ignore")
                if saved is not None:
                    os.dup2(native_lines.fileno(), 2)
                yield
        except BaseException:
            _restore_stderr(saved)
            saved = None
            native_lines.seek(0)
            sys.stderr.write(native_lines.read() + python_lines.getvalue())
            raise
        finally:
            _restore_stderr(saved)
            ds_logger.removeFilter(_errors_only)


def _restore_stderr(saved: int | None) -> None:
    """Point file descriptor 2 back at ``saved`` (a ``dup`` of it), if any, and close the copy."""
    if saved is not None:
        os.dup2(saved, 2)
        os.close(saved)


def import_quietly(name: str):
    """Import module ``name`` with what the import prints hidden: warnings, and the C++ start-up lines written to
    file descriptor 2 before any log setting applies (TensorFlow's "oneDNN custom operations are on", for one)."""
    with _quiet():
        return _import(name)


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
