"""The hand-written alternative as a pytest file: the facts ctxlab's seven
scenarios check, asserted directly (see by_hand.py)."""

from by_hand import CASES, UNSET

VALUE = {"random_int": 42}


def test_bad_then_shiny():
    assert CASES["bad-then-shiny"]() == {"endpoint": VALUE, "bad.after": None, "shiny.after": None}


def test_shiny_then_bad():
    assert CASES["shiny-then-bad"]() == {"endpoint": VALUE, "shiny.after": VALUE, "bad.after": None}


def test_bad_only():
    assert CASES["bad-only"]() == {"endpoint": VALUE, "bad.after": None}


def test_shiny_only():
    assert CASES["shiny-only"]() == {"endpoint": VALUE, "shiny.after": VALUE}


def test_dependency_audit():
    seen = CASES["dependency-audit"]()
    assert seen == {"endpoint.user": "alice", "audit.request_id": "req-0001", "audit.user": UNSET}


def test_sync_dependency():
    assert CASES["sync-dependency"]() == {"dependency": "acme", "endpoint": None}


def test_executor_no_copy():
    assert CASES["executor-no-copy"]() == {"job": None}
