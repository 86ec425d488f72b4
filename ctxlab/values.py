"""How observed values are reported: plain data, comparable across runs.

Kept apart from the recorder so that reading and comparing reports never
imports asyncio.
"""

from __future__ import annotations

import json
import math
import re
from typing import Any, Callable

UNSET = "<unset>"  # how an unset variable (LookupError) is reported
NOT_REACHED = "<not reached>"  # an expected probe that never ran

_ADDRESS = re.compile(r" at 0x[0-9a-fA-F]+")
# Values the JSON round trip gives back unchanged.  Exact types only: a
# subclass (an IntEnum member) still goes through JSON, which turns it into
# the plain value.  Not int and float: an int past 4,300 digits cannot be
# printed, and NaN and the infinities are not JSON.  probe() checks it itself
# before calling jsonable.
PLAIN = frozenset({str, bool})
# Values whose `==` never disagrees with their JSON text, given the same type
# (floats do: NaN).
_EXACT = frozenset({str, int, bool, type(None)})
# An int this long or longer is shown by its size: Python refuses to print
# one past 4,300 digits (sys.get_int_max_str_digits), which would end the run.
_LONGEST_INT = 10**1000


def raised(exc_type: str, message: str) -> dict[str, str]:
    """The report form of an exception seen at a probe."""
    return {"raised": exc_type, "message": message}


def jsonable(value: Any) -> Any:
    """A value as the report shows it: JSON when it can be, else its repr.

    Memory addresses are dropped so that two runs can be compared.  Never
    raises: it runs inside the app, whose values may refuse to be shown
    (a `__repr__` that raises), and a trace must change nothing the app sees.
    """
    kind = type(value)
    if kind is int:
        return value if -_LONGEST_INT < value < _LONGEST_INT else f"<int of {value.bit_length()} bits>"
    if kind is float:
        return value if math.isfinite(value) else f"<float {value!r}>"
    if value is None or kind in PLAIN:
        return value  # what the JSON round trip would return, without it
    if isinstance(value, BaseException):
        return raised(kind.__name__, _ADDRESS.sub("", _shown(str, value)))
    try:
        return json.loads(json.dumps(value, allow_nan=False))
    except (TypeError, ValueError, RecursionError):
        return _ADDRESS.sub("", _shown(repr, value))


def _shown(show: Callable[[Any], str], value: Any) -> str:
    try:
        return show(value)
    except Exception as exc:  # noqa: BLE001 - the app's __repr__ or __str__, an int too long to print
        return f"<{type(value).__name__} whose {show.__name__}() raised {type(exc).__name__}>"


# A value a saved trace keeps longer than this (as JSON text) is kept as its
# size and digest: a 5 MB string read eight times a request made a 90 MiB
# trace, which diff then refused as too large to read.
LONGEST_KEPT = 10_000


def bounded(value: Any) -> Any:
    """`value` as a saved trace keeps it: itself, or when its JSON is longer
    than LONGEST_KEPT its size and a digest, which still tell two values
    apart for `diff`."""
    text = json.dumps(value, sort_keys=True)
    if len(text) <= LONGEST_KEPT:
        return value
    import hashlib

    digest = hashlib.sha256(text.encode("utf-8", "surrogatepass")).hexdigest()[:16]
    return f"<{type(value).__name__} of {len(text):,} characters as JSON, sha256 {digest}>"


def same(left: Any, right: Any) -> bool:
    """Whether two reported values are the same value.

    Compared as JSON text rather than with `==`, for which `0` equals
    `false`, `1` equals `1.0` and NaN differs from itself: a variable that
    held `True` and now holds `1` has changed, and a report must say so.
    """
    if type(left) is type(right) and type(left) in _EXACT:
        return left == right  # what the JSON texts would say, without writing them
    return json.dumps(left, sort_keys=True) == json.dumps(right, sort_keys=True)
