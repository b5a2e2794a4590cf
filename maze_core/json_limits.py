"""What a JSON value must be to enter the log: the limits every submitted value is held to.

A workflow reaches the engine from a client (the server's door) or from Python; either way its
values end up in events, which are stored as UTF-8 JSON and read back by every projection, API
and replay. So a value that the store could not encode, or that a reader could not decode again,
is refused when it is submitted, with the place it was found, rather than failing later inside
the engine:

- nesting at most ``MAX_DEPTH`` levels of objects and arrays (deeper values exhaust the recursion
  of JSON encoders and decoders);
- text that is valid Unicode: no lone surrogates (``"\\udc00"``, what undecodable bytes become);
- numbers that are finite, and integers within ``MAX_INT`` (beyond, most JSON readers lose them
  and unit conversions overflow).

The walk is iterative, so it never recurses, whatever the depth of what it is handed.
"""

from __future__ import annotations

import math
from typing import Any

__all__ = ["MAX_DEPTH", "MAX_INT", "json_problems", "text_problem"]

MAX_DEPTH = 64
MAX_INT = 2**63
MAX_PROBLEMS = 10


def text_problem(text: str) -> str | None:
    """Why ``text`` cannot be stored as UTF-8, or None."""
    try:
        text.encode("utf-8")
    except UnicodeEncodeError as exc:
        return f"holds {text[exc.start:exc.end]!r} at character {exc.start}, which is not valid Unicode text"
    return None


def json_problems(value: Any, where: str) -> list[str]:
    """Every way ``value`` (named ``where`` in the messages) breaks the limits above, each with
    the path to the culprit; at most ``MAX_PROBLEMS``."""
    problems: list[str] = []
    stack: list[tuple[Any, int, str]] = [(value, 0, where)]
    while stack and len(problems) < MAX_PROBLEMS:
        item, depth, path = stack.pop()
        if isinstance(item, str):
            problem = text_problem(item)
            if problem:
                problems.append(f"{path}: {problem}")
        elif isinstance(item, bool) or item is None:
            continue
        elif isinstance(item, int):
            if not -MAX_INT <= item <= MAX_INT:
                problems.append(f"{path}: integer out of range (at most {MAX_INT} either way; "
                                f"pass larger numbers as strings)")
        elif isinstance(item, float):
            if not math.isfinite(item):
                problems.append(f"{path}: {item!r} is not a finite number")
        elif isinstance(item, dict | list | tuple):
            if depth >= MAX_DEPTH:
                problems.append(f"{path}: nested deeper than {MAX_DEPTH} levels")
                continue
            if isinstance(item, dict):
                for key, child in item.items():
                    label = f"{path}.{key}" if isinstance(key, str) and not text_problem(key) else f"{path}[?]"
                    if isinstance(key, str) and (problem := text_problem(key)):
                        problems.append(f"{path}: a key {problem}")
                    stack.append((child, depth + 1, label))
            else:
                stack.extend((child, depth + 1, f"{path}[{i}]") for i, child in enumerate(item))
    return problems
