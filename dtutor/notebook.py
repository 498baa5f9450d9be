"""Small helpers the notebooks share: show the package's real code, not a second copy of it."""

from __future__ import annotations

import inspect
from pathlib import Path

LANGUAGES = {".py": "python", ".json": "json", ".sh": "bash"}  # a shown file's highlighting, by its suffix


def _show_code(text: str, language: str) -> None:
    """Display ``text`` highlighted as ``language`` when in Jupyter; print it elsewhere."""
    try:
        from IPython import get_ipython
        from IPython.display import Code, display

        if get_ipython() is not None:
            display(Code(text, language=language))
            return
    except ImportError:
        pass
    print(text)


def show_source(obj) -> None:
    """Display the source of a ``dtutor`` function, class or module, highlighted when in Jupyter."""
    _show_code(inspect.getsource(obj), "python")


def show_file(path: str | Path) -> None:
    """Display a file whole (a plain script of ``examples/``, its JSON configuration), highlighted when in Jupyter.

    A first line names the file and its length, so the learner knows what to copy and that nothing is left out.
    """
    path = Path(path)
    text = path.read_text()
    print(f"{path.parent.name}/{path.name}: {len(text.splitlines())} lines")
    _show_code(text.rstrip("\n"), LANGUAGES.get(path.suffix, "text"))
