"""
Strict JSON text in: what every dialect's JSON bodies must be (RFC 8259,
UTF-8, finite numbers, no lone surrogates), refused with a 400 naming the
place otherwise.
"""

from __future__ import annotations

import json
import math
from typing import Any

from kree.errors import HttpError, InvalidRequest


class _NotJSON(ValueError):
    """A number the JSON grammar does not have (NaN, Infinity, one that overflows)."""


def _refuse_constant(name: str):
    raise _NotJSON(f"{name} is not a JSON number")


def _finite_float(text: str) -> float:
    value = float(text)
    if math.isinf(value):
        raise _NotJSON(f"{text} is too large for a number")
    return value


def parse_json_text(raw: bytes) -> Any:
    """
    Strict JSON (RFC 8259) from bytes: UTF-8 only, no C{NaN} or C{Infinity}
    (Python's json module accepts both), no number that overflows a double,
    and no string, key or value, holding a lone UTF-16 surrogate
    (C{"\\ud800"}), which no UTF-8 response or database could carry.
    Raises L{HttpError} 400 naming the place.
    """
    try:
        # JSON is UTF-8 (RFC 8259); json.loads(bytes) would also guess UTF-16/32.
        text = raw.decode("utf-8")
    except UnicodeDecodeError:
        raise InvalidRequest("the body is not UTF-8") from None
    try:
        value = json.loads(text, parse_constant=_refuse_constant, parse_float=_finite_float)
    except _NotJSON as e:
        raise HttpError(400, "malformed_json", f"the body is not valid JSON: {e}") from None
    except (json.JSONDecodeError, RecursionError) as e:
        raise HttpError(400, "malformed_json", f"the body is not valid JSON: {e}") from None
    where = _surrogate_path(value, "")
    if where is not None:
        raise InvalidRequest(
            f"{where or 'the body'} holds a lone UTF-16 surrogate, which is not a character",
            field=where)
    return value


def printable_text(text: str) -> str:
    """C{text} with lone surrogates shown as C{\\udXXX}, so it can always be encoded."""
    return text.encode("utf-8", "backslashreplace").decode("utf-8")


def _has_surrogate(text: str) -> bool:
    try:
        text.encode("utf-8")
    except UnicodeEncodeError:
        return True
    return False


def _surrogate_path(value: Any, path: str) -> str | None:
    """The dotted path of the first string (or key) with a lone surrogate, if any."""
    stack = [(value, path)]
    while stack:
        node, where = stack.pop()
        if isinstance(node, str):
            if _has_surrogate(node):
                return where
        elif isinstance(node, dict):
            for key, item in node.items():
                inner = f"{where}.{printable_text(key)}" if where else printable_text(key)
                if _has_surrogate(key):
                    return inner
                stack.append((item, inner))
        elif isinstance(node, list):
            stack.extend((item, f"{where}[{i}]") for i, item in enumerate(node))
    return None
