"""Small helpers the notebooks share: show the package's real code, not a second copy of it."""

from __future__ import annotations

import inspect


def show_source(obj) -> None:
    """Display the source of a ``dtutor`` function, class or module, highlighted when in Jupyter."""
    source = inspect.getsource(obj)
    try:
        from IPython import get_ipython
        from IPython.display import Code, display

        if get_ipython() is not None:
            display(Code(source, language="python"))
            return
    except ImportError:
        pass
    print(source)
