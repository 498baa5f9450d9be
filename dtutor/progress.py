"""Progress of a training run, shown once: one live bar with a total, wherever the run was started from.

- In the process that trains (a notebook's in-process run, ``fit`` in a script): a ``tqdm.auto`` bar, which
  is a widget in Jupyter and a text bar in a terminal.
- In a worker that ``dtutor.launch`` started (``DTUTOR_PROGRESS=relay`` in its environment): rank 0 writes
  its progress as marker lines (``RELAY_MARKER`` + JSON, at most every ``RELAY_INTERVAL_S``); the supervisor
  turns them into one bar in the notebook or terminal that started the launch (``RelayedBar``) instead of
  printing them. Every rank's other output is printed as before.
- In a worker started by hand (``torchrun ... -m dtutor.launch ...`` in a terminal): a text bar on rank 0.

``TQDM_DISABLE=1`` turns every bar off (the relay lines are still written: the supervisor decides), and no bar
is drawn into a pipe or a file (``can_draw``). Lines printed while a bar is live go through ``Progress.write``
so they do not garble it.
"""

from __future__ import annotations

import json
import os
import sys
import time
from typing import Any

PROGRESS_ENV = "DTUTOR_PROGRESS"  # "relay": this worker's supervisor shows its progress
RELAY_MARKER = "@dtutor-progress "
RELAY_INTERVAL_S = 0.5


def bars_disabled() -> bool:
    """True when ``TQDM_DISABLE`` is set to anything (as tqdm reads it), read each time: it may change."""
    return bool(os.environ.get("TQDM_DISABLE"))


def can_draw() -> bool:
    """Whether a bar can be drawn here: in a Jupyter kernel (a widget) or on a terminal (a text bar).

    Not into a pipe or a file (a log, horovodrun's relay of a worker's output), where a redrawn bar is noise.
    """
    try:
        from IPython import get_ipython

        shell = get_ipython()
        if shell is not None and "IPKernelApp" in shell.config:
            return True
    except ImportError:
        pass
    return sys.stderr.isatty()


def _tqdm(total: int, label: str, unit: str) -> Any:
    from tqdm.auto import tqdm

    return tqdm(total=total, desc=label, unit=unit, leave=True, dynamic_ncols=True,
                disable=bars_disabled() or not can_draw())


class Progress:
    """Steps done out of ``total``, with a label such as ``epoch 2/6``; shows nothing itself (see ``progress``)."""

    def __init__(self, total: int, label: str = "", unit: str = "step"):
        self.total, self.label, self.unit, self.done = total, label, unit, 0

    def update(self, steps: int = 1, label: str | None = None, **postfix: Any) -> None:
        """Count ``steps`` more; a new ``label`` and ``postfix`` values (``loss=0.31``) replace the old ones."""
        self.done += steps
        if label is not None:
            self.label = label
        self._show(postfix)

    def _show(self, postfix: dict[str, Any]) -> None:
        """Subclasses display the state."""

    def write(self, text: str) -> None:
        """Print ``text`` as a line without garbling the bar."""
        print(text)

    def close(self) -> None:
        """End the display."""

    def __enter__(self) -> Progress:
        return self

    def __exit__(self, *exc: Any) -> None:
        self.close()


class _Bar(Progress):
    """A ``tqdm.auto`` bar in this process."""

    def __init__(self, total: int, label: str = "", unit: str = "step"):
        super().__init__(total, label, unit)
        self._bar = _tqdm(total, label, unit)

    def _show(self, postfix: dict[str, Any]) -> None:
        self._bar.set_description_str(self.label, refresh=False)
        if postfix:
            self._bar.set_postfix(postfix, refresh=False)
        self._bar.update(self.done - self._bar.n)

    def write(self, text: str) -> None:
        self._bar.write(text) if not self._bar.disable else print(text)

    def close(self) -> None:
        self._bar.close()


class _Relay(Progress):
    """Marker lines for the supervisor (one on start, then at most every ``RELAY_INTERVAL_S``, one at the end)."""

    def __init__(self, total: int, label: str = "", unit: str = "step"):
        super().__init__(total, label, unit)
        self._last, self._postfix = 0.0, {}
        self._send()

    def _send(self) -> None:
        state = {"done": self.done, "total": self.total, "label": self.label, "unit": self.unit,
                 "postfix": self._postfix}
        print(RELAY_MARKER + json.dumps(state), flush=True)
        self._last = time.monotonic()

    def _show(self, postfix: dict[str, Any]) -> None:
        self._postfix = {**self._postfix, **postfix}
        if time.monotonic() - self._last >= RELAY_INTERVAL_S or self.done >= self.total:
            self._send()

    def close(self) -> None:
        if self.done < self.total:
            self._send()


def progress(total: int, label: str = "", *, show: bool = True, unit: str = "step") -> Progress:
    """The display for a run of ``total`` steps in this process (see the module docstring).

    ``show=False`` (every rank but the logger) gives a ``Progress`` that displays nothing.
    """
    if not show:
        return Progress(total, label, unit)
    if os.environ.get(PROGRESS_ENV) == "relay":
        return _Relay(total, label, unit)
    return _Bar(total, label, unit)


def parse_relay(line: str) -> dict[str, Any] | None:
    """The progress state in a relayed line (any prefix before the marker), or None if it is not one."""
    _, marker, payload = line.partition(RELAY_MARKER)
    if not marker:
        return None
    try:
        state = json.loads(payload)
    except ValueError:
        return None
    return state if isinstance(state, dict) and {"done", "total"} <= state.keys() else None


def _postfix_text(postfix: dict[str, Any]) -> str:
    return ", ".join(f"{key} {value:.4g}" if isinstance(value, float) else f"{key} {value}"
                     for key, value in postfix.items())


class RelayedBar:
    """The supervisor's side: one bar for a launch, fed with the relayed lines (created at the first one)."""

    def __init__(self, enabled: bool = True):
        self.enabled = enabled and not bars_disabled()
        self._bar: Any = None

    def feed(self, line: str) -> bool:
        """Show the progress in ``line``; True if it was a relayed line (to be consumed, not printed)."""
        state = parse_relay(line)
        if state is None:
            return False
        if not self.enabled:
            return True
        if self._bar is None or self._bar.total != state["total"]:
            self.close()
            self._bar = _tqdm(state["total"], state.get("label", ""), state.get("unit", "step"))
        self._bar.set_description_str(state.get("label", ""), refresh=False)
        if state.get("postfix"):
            self._bar.set_postfix_str(_postfix_text(state["postfix"]), refresh=False)
        self._bar.update(max(0, state["done"] - self._bar.n))
        return True

    def write(self, text: str) -> None:
        """Print an output line without garbling the bar."""
        self._bar.write(text) if self._bar is not None and not self._bar.disable else print(text)

    def close(self) -> None:
        """Close the bar (leaving it at its last state)."""
        if self._bar is not None:
            self._bar.close()
            self._bar = None
