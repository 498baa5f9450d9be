"""Entry points and their arguments on a command line: ``ENTRY key=value ...``, Python literals only.

An entry point is ``"package.module:function"``; its keyword arguments travel to the workers as
``key=value`` words (bare words for simple strings, ``repr`` for the rest) and are read back with
``ast.literal_eval``, so a worker gets exactly the values the caller passed, or the caller is refused.
"""

from __future__ import annotations

import ast
import importlib
import inspect
from collections.abc import Callable
from typing import Any


def resolve_entry(entry: str) -> Callable[..., Any]:
    """The function named by ``entry`` ("package.module:function"); ``ValueError`` if there is none."""
    module_name, _, function_name = entry.partition(":")
    if not module_name or not function_name:
        raise ValueError(f"entry point must look like 'package.module:function', got {entry!r}")
    try:
        module = importlib.import_module(module_name)
    except ImportError as error:
        raise ValueError(f"cannot import the entry point's module {module_name!r}: {error}") from error
    function = getattr(module, function_name, None)
    if not callable(function):
        raise ValueError(f"module {module_name!r} has no function {function_name!r}")
    return function


def parse_value(text: str) -> Any:
    """The value of one ``key=value`` word: a Python literal, or else the text itself (``backend=gloo``)."""
    try:
        return ast.literal_eval(text)
    except (ValueError, SyntaxError):
        return text


def _is_bare_word(value: Any) -> bool:
    """A string that can go on the command line unquoted and still reads back as the same string."""
    if not isinstance(value, str):
        return False
    simple = value.replace("_", "").replace("-", "").replace(".", "").isalnum()
    return simple and parse_value(value) == value


def encode_argument(key: str, value: Any) -> str:
    """``key=value`` for the command line; ``ValueError`` unless ``value`` reads back equal (a literal)."""
    if _is_bare_word(value):
        return f"{key}={value}"
    text = repr(value)
    try:
        same = ast.literal_eval(text) == value
    except (ValueError, SyntaxError):
        same = False
    if not same:
        raise ValueError(
            f"argument {key}={text[:80]} cannot be sent to the workers: only Python literals "
            "(numbers, strings, booleans, None, and lists/tuples/dicts of them) travel on the command line"
        )
    return f"{key}={text}"


def parse_arguments(words: list[str]) -> dict[str, Any]:
    """The keyword arguments from ``key=value`` words (the inverse of ``encode_argument``)."""
    kwargs = {}
    for word in words:
        key, _, text = word.partition("=")
        kwargs[key] = parse_value(text)
    return kwargs


def worker_arguments(entry: str, kwargs: dict[str, Any]) -> list[str]:
    """The ``-m dtutor.launch ENTRY key=value ...`` part of a worker's command (validated against ``entry``)."""
    function = resolve_entry(entry)
    try:
        inspect.signature(function).bind(**kwargs)
    except TypeError as error:
        raise ValueError(f"{entry} cannot take these arguments: {error}") from error
    return ["-m", "dtutor.launch", entry, *(encode_argument(key, value) for key, value in kwargs.items())]
