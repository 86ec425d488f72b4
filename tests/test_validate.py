"""The limits a saved report or trace is held to, at their edges: the
largest file and the deepest nesting still read, one more refused; each
field of a saved trace just inside and just outside what it may be."""

import copy
import json
import os
import threading

import pytest

from ctxlab import validate
from ctxlab.errors import ReportFileError


def nested(depth: int):
    """A JSON value `depth` levels deep: a list in a dict in a list ..."""
    value = 0
    for level in range(depth - 1):
        value = [value] if level % 2 else {"k": value}
    return value


@pytest.mark.parametrize("depth, refused", [(validate.MAX_DEPTH, False), (validate.MAX_DEPTH + 1, True)])
def test_nesting_up_to_the_limit_is_read(tmp_path, depth, refused):
    """Shallow enough for json.loads (no RecursionError): the walk of the
    document itself decides."""
    path = tmp_path / "deep.json"
    path.write_text(json.dumps(nested(depth)))
    if refused:
        with pytest.raises(ReportFileError, match=f"nests deeper than {validate.MAX_DEPTH} levels"):
            validate.read_json(path, "a snapshot", ReportFileError)
    else:
        assert validate.read_json(path, "a snapshot", ReportFileError) == nested(depth)


def test_a_wide_document_is_not_deep(tmp_path):
    path = tmp_path / "wide.json"
    path.write_text(json.dumps([[0]] * (validate.MAX_DEPTH + 5)))
    assert len(validate.read_json(path, "a snapshot", ReportFileError)) == validate.MAX_DEPTH + 5


@pytest.fixture
def small_limit(monkeypatch):
    monkeypatch.setattr(validate, "MAX_BYTES", 100)
    return 100


@pytest.mark.parametrize("extra, refused", [(0, False), (1, True)])
def test_a_file_up_to_the_limit_is_read(tmp_path, small_limit, extra, refused):
    path = tmp_path / "report.json"
    text = json.dumps("x" * (small_limit - 2 + extra))  # the quotes make up the rest
    path.write_text(text)
    assert os.path.getsize(path) == small_limit + extra
    if refused:
        with pytest.raises(ReportFileError, match=r"is too large for a snapshot \(0 MiB\)"):
            validate.read_json(path, "a snapshot", ReportFileError)
    else:
        assert validate.read_json(path, "a snapshot", ReportFileError) == "x" * (small_limit - 2)


@pytest.mark.parametrize("extra, refused", [(0, False), (1, True)])
def test_a_pipe_is_read_no_further_than_the_limit(tmp_path, small_limit, extra, refused):
    """A FIFO has no size to check first: what it holds past the limit is refused."""
    fifo = tmp_path / "fifo"
    os.mkfifo(fifo)
    text = json.dumps("x" * (small_limit - 2 + extra))

    def feed():
        with open(fifo, "w") as stream:
            stream.write(text)

    writer = threading.Thread(target=feed)
    writer.start()
    try:
        if refused:
            with pytest.raises(ReportFileError, match=r"is too large for a snapshot \(over 0 MiB\)"):
                validate.read_json(fifo, "a snapshot", ReportFileError)
        else:
            assert validate.read_json(fifo, "a snapshot", ReportFileError) == json.loads(text)
    finally:
        writer.join()


TRACE = {
    "app": "myapp.main:app",
    "server": "asgi",
    "options": {
        "requests": 2,
        "path": "/",
        "method": "GET",
        "headers": [["x-a", "1"]],
        "data": "",
        "lifespan": False,
        "vars": [],
        "factory": False,
        "app_dir": ".",
        "timeout": 30.0,
    },  # fmt: skip
    "events": [{"request": 1, "op": "get", "var": "v", "file": "a.py", "function": "f", "value": 1}],
    "findings": [
        {"kind": "lost", "var": "v", "read": {"file": "a.py", "function": "f"}, "set": None},
        {
            "kind": "lost",
            "var": "v",
            "read": {"file": "a.py", "function": "f"},
            "set": {"file": "b.py", "function": "g"},
        },
    ],
}


def with_field(path: str, value):
    document = copy.deepcopy(TRACE)
    *parents, last = path.split(".")
    target = document
    for part in parents:
        target = target[part]
    target[last] = value
    return document


def test_a_whole_trace_passes():
    assert validate.trace_problem(TRACE) is None


@pytest.mark.parametrize(
    "path, value, problem",
    [
        ("options.requests", 1, None),
        ("options.requests", 0, "options.requests is 0, expected a number of requests"),
        ("options.requests", 100_000, None),
        ("options.requests", 100_001, "options.requests is 100001, expected a number of requests"),
        # Text the request could not carry (json.loads gives "\udcff" back as a lone surrogate).
        ("options.path", "/caf\u00e9", None),
        (
            "options.path",
            "/\udcff",
            "options.path is '/\\udcff', expected a path starting with /, in text a request can carry",
        ),
        ("options.data", "\u20ac", None),
        ("options.data", "\udcff", "options.data is '\\udcff', expected a string a request can carry"),
        ("options.headers", [["x-a", "caf\u00e9"]], None),
        ("options.headers", [["x-a", "\u20ac"]], "options.headers is [['x-a', '\u20ac']], expected a list of"),
        ("options.headers", [["x-\u20ac", "1"]], "options.headers is [['x-\u20ac', '1']], expected a list of"),
        ("options.headers", [], None),
        ("options.headers", [["x-a"]], "options.headers is [['x-a']], expected a list of [name, value] pairs"),
        ("options.headers", [["x-a", "1", "2"]], "options.headers is [['x-a', '1', '2']], expected a list of"),
        ("options.headers", [("x-a", "1")], "options.headers is [('x-a', '1')], expected a list of"),
        ("options.headers", [["x-a", 1]], "options.headers is [['x-a', 1]], expected a list of"),
        ("options.timeout", 0.1, None),
        ("options.timeout", 86400, None),
        ("options.timeout", 0.09, "options.timeout is 0.09, expected seconds"),
        ("options.timeout", 86400.5, "options.timeout is 86400.5, expected seconds"),
        ("options.timeout", True, "options.timeout is True, expected seconds"),
        (
            "findings",
            [{"kind": "lost", "var": "v", "read": {"file": "a.py", "function": "f"}, "set": {"file": 1}}],
            "findings is [{'kind': 'lost', 'var': 'v', 'read':..., expected a list of findings",
        ),  # fmt: skip
    ],
)
def test_each_trace_field_at_its_edges(path, value, problem):
    found = validate.trace_problem(with_field(path, value))
    assert found == problem if problem is None else found.startswith(problem)


def _report(*runs):
    # No server key: a report of one server.
    return {
        "scenarios": [
            {"name": name, "observations": [], **({"server": server} if server else {})} for name, server in runs
        ]
    }


def test_a_scenario_may_appear_once_per_server():
    assert validate.problem(_report(("a", "asgi"), ("a", "uvicorn"), ("b", "asgi")), ["asgi", "uvicorn"]) is None
    assert validate.problem(_report(("a", None), ("b", None)), ["asgi"]) is None
    assert validate.problem(_report(("a", "asgi"), ("b", "asgi"), ("a", "asgi")), ["asgi"]) == (
        "scenarios[2] is a second result for 'a' on asgi"
    )
    assert validate.problem(_report(("a", None), ("a", None)), ["asgi"]) == "scenarios[1] is a second result for 'a'"


def test_a_report_of_both_servers_names_each_result_s_server():
    """Results of `--server both` are keyed by their own server: one that
    names none would be keyed "both", and every run would read as new."""
    both = {**_report(("a", "asgi"), ("a", "uvicorn")), "server": "both"}
    assert validate.problem(both, ["asgi", "uvicorn"]) is None
    both["scenarios"][1].pop("server")
    assert validate.problem(both, ["asgi", "uvicorn"]) == (
        "scenarios[1].server is missing: a report of server both names the server of each result"
    )
    assert validate.problem({**both, "server": "uvicorn"}, ["asgi", "uvicorn"]) is None
