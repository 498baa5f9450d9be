"""The course's tables are pandas DataFrames: JupyterLab renders them, a terminal prints ``text(frame)``.

A table may carry a title (printed above it) and notes (sentences printed below it, each computed from the
numbers) in ``frame.attrs``; ``titled`` puts them there. Numbers are rounded in the frame itself and each
column's name carries its unit ("time ms", "busbw GB/s"), so what a learner sees is what a test reads.
"""

from __future__ import annotations

import textwrap
from collections.abc import Iterable
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:  # pandas is imported where a table is made: importing this module stays cheap for workers
    import pandas as pd

WIDTH = 150  # no printed line is longer


def titled(rows: list[dict[str, Any]], title: str = "", notes: Iterable[str] = (),
           integers: Iterable[str] = ()) -> pd.DataFrame:
    """A DataFrame of ``rows`` (dicts with the same keys, in column order) with its title and notes in attrs;
    the ``integers`` columns hold whole numbers or None (pandas' nullable Int64). Keys that are pairs, such as
    ``("gradients MB", "measured")``, make two header rows."""
    import pandas as pd

    frame = pd.DataFrame(rows)
    frame = frame.astype({name: "Int64" for name in integers if name in frame.columns})
    if len(frame.columns) and all(isinstance(name, tuple) for name in frame.columns):
        frame.columns = pd.MultiIndex.from_tuples(frame.columns)
    frame.attrs.update(title=title, notes=list(notes))
    return frame


def whole(value: float | None) -> int | None:
    """``value`` rounded to a whole number, None kept (for an Int64 column)."""
    return None if value is None else round(value)


def milliseconds(seconds: float | None, digits: int) -> float | None:
    """``seconds`` in milliseconds, rounded to ``digits`` decimals, None kept."""
    return None if seconds is None else round(seconds * 1e3, digits)


def _wrapped(line: str) -> list[str]:
    return textwrap.wrap(line, WIDTH, subsequent_indent="  ", break_on_hyphens=False) or [""]


def _missing_as_dash(frame: pd.DataFrame) -> pd.DataFrame:
    """A copy with "-" where a value is missing (NaN stays NaN: ``na_rep`` prints it)."""
    import pandas as pd

    shown = frame.copy()
    for name in shown.columns:
        if not pd.api.types.is_float_dtype(shown[name]):
            shown[name] = shown[name].astype(object).where(shown[name].notna(), "-")
    return shown


def _body(frame: pd.DataFrame) -> list[str]:
    """The rows as text: columns of words left-aligned, header included (numbers, and columns that mix numbers
    with words, stay right-aligned)."""
    import pandas as pd

    shown = _missing_as_dash(frame)
    if not isinstance(shown.columns, pd.MultiIndex):
        for name in list(shown.columns):
            values = shown[name]
            if values.dtype == object and not any(isinstance(v, int | float) for v in values):
                width = max(len(str(v)) for v in [name, *values])
                shown[name] = values.astype(str).str.ljust(width)
                shown = shown.rename(columns={name: str(name).ljust(width)})
    return [] if frame.empty else [line.rstrip() for line in shown.to_string(index=False, na_rep="-").splitlines()]


def text(frame: pd.DataFrame) -> str:
    """The table for a terminal: its title, ``to_string`` without the index ("-" where a value is missing)
    and its notes, a blank line between them; the title and notes wrap at ``WIDTH`` characters."""
    title, notes = frame.attrs.get("title", ""), frame.attrs.get("notes", [])
    sections = [_wrapped(title) if title else [], _body(frame),
                [line for note in notes for line in _wrapped(note)]]
    return "\n\n".join("\n".join(lines) for lines in sections if lines)


def show(*frames: pd.DataFrame) -> None:
    """Show each table: in a notebook its title, the table (HTML for JupyterLab, ``text``'s rows as its plain
    text) and its notes; elsewhere ``text``."""
    try:
        from IPython import get_ipython
        from IPython.display import display
    except ImportError:  # a terminal without IPython
        get_ipython = display = None
    in_notebook = get_ipython is not None and get_ipython() is not None
    for index, frame in enumerate(frames):
        if index:
            print()
        if not in_notebook:
            print(text(frame))
            continue
        if frame.attrs.get("title"):
            print("\n".join(_wrapped(frame.attrs["title"])))
        if not frame.empty:
            html = _missing_as_dash(frame).to_html(index=False, na_rep="-")
            display({"text/html": html, "text/plain": "\n".join(_body(frame))}, raw=True)
        notes = [line for note in frame.attrs.get("notes", []) for line in _wrapped(note)]
        if notes:
            print("\n".join(notes))
