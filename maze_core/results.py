"""Task results: JSON inline in the event when small, else a content-addressed blob.

A result that is strict JSON (dicts with string keys, lists, strings, finite numbers, booleans,
None) and at most ``inline_limit`` bytes goes into ``TaskSucceeded.data.result``. A larger JSON
result is stored as a blob (``encoding: "json"``); anything else (a tuple, a numpy array, a custom
object) is cloudpickled into a blob (``encoding: "pickle"``) so downstream tasks receive exactly what
was returned. The event then carries ``result_ref = {hash, encoding, size, type, repr}``.
"""

from __future__ import annotations

import json
import math
from collections.abc import Callable
from typing import Any

import cloudpickle

from .events import compact_json
from .store import blob_hash

_SCALARS = (str, int, bool, type(None))


def is_json(value: Any, _depth: int = 0) -> bool:
    """True if ``value`` round-trips through JSON unchanged."""
    if isinstance(value, _SCALARS):
        return type(value) in (str, int, bool, type(None))  # no str/int subclasses (enums...)
    if type(value) is float:
        return math.isfinite(value)
    if _depth > 200:
        return False
    if type(value) is dict:
        return all(type(k) is str and is_json(v, _depth + 1) for k, v in value.items())
    if type(value) is list:
        return all(is_json(v, _depth + 1) for v in value)
    return False


class ResultEncodingError(Exception):
    """A result is neither JSON nor picklable."""


def encode(value: Any, inline_limit: int) -> tuple[dict[str, Any], dict[str, bytes]]:
    """The event fields and blobs for a result: ``({"result": v} | {"result_ref": ref}, blobs)``."""
    if is_json(value):
        try:
            data = compact_json(value).encode("utf-8")
        except (ValueError, UnicodeEncodeError) as exc:  # huge ints, lone surrogates
            raise ResultEncodingError(f"result cannot be stored as JSON: {exc}") from exc
        if len(data) <= inline_limit:
            # a private copy: what the task returned may still change under other references;
            # the event, the run state and downstream tasks must see what the log records
            return {"result": json.loads(data)}, {}
        digest = blob_hash(data)
        return {"result_ref": {"hash": digest, "encoding": "json", "size": len(data),
                               "type": type(value).__name__}}, {digest: data}
    try:
        data = cloudpickle.dumps(value)
    except Exception as exc:
        raise ResultEncodingError(
            f"result of type {type(value).__name__} is neither JSON nor picklable: {exc}") from exc
    digest = blob_hash(data)
    return {"result_ref": {"hash": digest, "encoding": "pickle", "size": len(data),
                           "type": type(value).__name__, "repr": _short_repr(value)}}, {digest: data}


def decode(result: Any, result_ref: dict[str, Any] | None, get_blob: Callable[[str], bytes]) -> Any:
    """The Python value of a stored result."""
    if result_ref is None:
        return result
    data = get_blob(result_ref["hash"])
    if result_ref["encoding"] == "json":
        return json.loads(data)
    return cloudpickle.loads(data)


def public(result: Any, result_ref: dict[str, Any] | None, get_blob: Callable[[str], bytes]) -> Any:
    """A JSON view of a result for APIs and the CLI: a pickled value shows as its reference."""
    if result_ref is None:
        return result
    if result_ref["encoding"] == "json":
        return json.loads(get_blob(result_ref["hash"]))
    return {"__maze_blob__": result_ref["hash"], "type": result_ref.get("type"),
            "repr": result_ref.get("repr"), "size": result_ref.get("size")}


def _short_repr(value: Any, limit: int = 200) -> str:
    try:
        text = repr(value)
    except Exception:  # a broken __repr__ must not fail the task
        text = f"<{type(value).__name__}>"
    return text if len(text) <= limit else text[: limit - 3] + "..."
