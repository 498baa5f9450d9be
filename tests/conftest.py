import os

os.environ.setdefault("DTUTOR_OFFLINE", "1")
os.environ.setdefault("TQDM_DISABLE", "1")

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
