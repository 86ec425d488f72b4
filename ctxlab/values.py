"""How observed values are reported: plain data, comparable across runs.

Kept apart from the recorder so that reading and comparing reports never
imports asyncio.
"""

from __future__ import annotations

import json
import re
from typing import Any

UNSET = "<unset>"  # how an unset variable (LookupError) is reported
NOT_REACHED = "<not reached>"  # an expected probe that never ran

_ADDRESS = re.compile(r" at 0x[0-9a-fA-F]+")
# Values the JSON round trip gives back unchanged (floats too: repr round-trips
# exactly, NaN and infinity included).  Exact types only: a subclass (an IntEnum
# member) still goes through JSON, which turns it into the plain value.  probe()
# checks it itself before calling jsonable.
PLAIN = frozenset({str, int, float, bool})
# Values whose `==` never disagrees with their JSON text, given the same type
# (floats do: NaN).
_EXACT = frozenset({str, int, bool, type(None)})


def raised(exc_type: str, message: str) -> dict[str, str]:
    """The report form of an exception seen at a probe."""
    return {"raised": exc_type, "message": message}


def jsonable(value: Any) -> Any:
    """A value as the report shows it: JSON when it can be, else its repr.

    Memory addresses are dropped so that two runs can be compared.
    """
    if value is None or type(value) in PLAIN:
        return value  # what the JSON round trip would return, without it
    if isinstance(value, BaseException):
        return raised(type(value).__name__, _ADDRESS.sub("", str(value)))
    try:
        return json.loads(json.dumps(value))
    except (TypeError, ValueError):
        return _ADDRESS.sub("", repr(value))


def same(left: Any, right: Any) -> bool:
    """Whether two reported values are the same value.

    Compared as JSON text rather than with `==`, for which `0` equals
    `false`, `1` equals `1.0` and NaN differs from itself: a variable that
    held `True` and now holds `1` has changed, and a report must say so.
    """
    if type(left) is type(right) and type(left) in _EXACT:
        return left == right  # what the JSON texts would say, without writing them
    return json.dumps(left, sort_keys=True) == json.dumps(right, sort_keys=True)
