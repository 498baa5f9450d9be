import os

os.environ.setdefault("DTUTOR_OFFLINE", "1")
os.environ.setdefault("TQDM_DISABLE", "1")

import uuid  # noqa: E402
from pathlib import Path  # noqa: E402

import psutil  # noqa: E402
import pytest  # noqa: E402

from dtutor.devices import horovod_frameworks  # noqa: E402


def require_horovod(framework: str) -> None:
    """Skip without a Horovod built for ``framework``, except in CI (DTUTOR_REQUIRE_HOROVOD=1), where it fails."""
    built = horovod_frameworks() or []
    if framework not in built:
        message = f"Horovod built with {framework} is not installed (built: {built})"
        if os.environ.get("DTUTOR_REQUIRE_HOROVOD") == "1":
            pytest.fail(message)
        pytest.skip(message)


MARKER = "DTUTOR_TEST_MARKER"


@pytest.fixture
def process_marker(monkeypatch) -> str:
    """A unique value in the environment that every process a launch starts inherits (see ``marked_processes``)."""
    value = uuid.uuid4().hex
    monkeypatch.setenv(MARKER, value)
    return value


def marked_processes(value: str) -> list[psutil.Process]:
    """Every live process on this machine whose environment carries ``process_marker``'s value."""
    found = []
    for process in psutil.process_iter():
        try:
            if process.environ().get(MARKER) == value and process.pid != os.getpid():
                found.append(process)
        except (psutil.AccessDenied, psutil.NoSuchProcess, psutil.ZombieProcess):
            pass
    return found


@pytest.fixture
def own_code_importable(monkeypatch) -> None:
    """Launched ranks can import ``tests/own_code.py`` (a learner's own module) as ``own_code``."""
    folder = str(Path(__file__).parent)
    monkeypatch.setenv("PYTHONPATH", os.pathsep.join([folder, os.environ.get("PYTHONPATH", "")]))
