"""Bounds that a command line and a saved file share: `cli` checks the
options, `validate` the snapshot or trace that `diff` and `--baseline` run
again."""

import re

# An ASGI spec_version, "2.4": ASCII digits only (\d takes "٣.٤" too).
SPEC_VERSION = re.compile(r"[0-9]+\.[0-9]+")

# Seconds probe and trace wait for the user's app: at most a day, since the
# wait is given to poll() in milliseconds, an int (inf overflowed it).
TIMEOUT = (0.1, 86400.0)
# Requests trace sends one after another: more would run for days, and past
# sys.maxsize range() cannot count them.
MAX_REQUESTS = 100_000


def encodes(text: str, encoding: str) -> bool:
    """Can `text` go out as `encoding` (a path or a body as UTF-8, a header
    as Latin-1, HTTP's octets)?  Not when it holds the surrogates Python
    makes of an argument's bytes that are not UTF-8, or a header's é."""
    try:
        text.encode(encoding)
    except UnicodeEncodeError:
        return False
    return True
