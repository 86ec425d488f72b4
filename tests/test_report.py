"""The comparison and the reports, on hand-made runs: every way an
observation can differ from its expectation, and what each report says."""

import hashlib
import json
import platform
import xml.etree.ElementTree as ET
from importlib import metadata

import pytest

from ctxlab import __version__
from ctxlab.config import RunConfig
from ctxlab.errors import ReportFileError
from ctxlab.probe import ContextMark, Record
from ctxlab.report import (
    Report,
    ScenarioReport,
    Status,
    by_occurrence,
    compare,
    diff,
    drift_line,
    environment,
    github_annotations,
    junit,
    load_report,
    runs,
    show,
    skipped,
)
from ctxlab.runner import Run
from ctxlab.scenario import Scenario, by_server, per_request
from ctxlab.values import NOT_REACHED, UNSET, bounded, jsonable


def scenario(expect, naive=None):
    return Scenario(name="hand-made", summary="", build=lambda: None, expect=expect, naive=naive or {})


def record(probe, var, value, request=1, seq=1, thread="MainThread"):
    """A record made outside any task, in a fresh context."""
    return Record(seq, request, probe, var, value, None, ContextMark(None, None), thread)


def run(*records, error=None):
    return Run(records=list(records), onion=["Outer", "Inner"], duration_ms=12.34, error=error)


def result(name, status, observations=(), server="asgi", error=None):
    return ScenarioReport(name, status, 1.0, error, observations=list(observations), config=RunConfig(server))


class TestCompare:
    """Each record is set against the expectation for its request; what was
    expected and never seen is drift too."""

    def test_matching_records_pass_with_every_field_filled(self):
        report = compare(
            scenario({"p": {"v": 1}}, naive={"p": {"v": 2}}), run(record("p", "v", 1, seq=7, thread="W")), RunConfig()
        )
        assert (report.status, report.error, report.onion, report.duration_ms) == (
            Status.PASS,
            None,
            ["Outer", "Inner"],
            12.34,
        )
        (o,) = report.observations
        assert (o.seq, o.request, o.probe, o.var, o.observed, o.expected, o.naive, o.match) == (
            7,
            1,
            "p",
            "v",
            1,
            1,
            2,
            True,
        )
        assert (o.task, o.parent_task, o.context, o.parent_context, o.thread) == (None, None, "C1", None, "W")
        assert o.pitfall

    def test_naive_defaults_to_the_expectation(self):
        (o,) = compare(scenario({"p": {"v": 1}}), run(record("p", "v", 1)), RunConfig()).observations
        assert o.naive == 1 and not o.pitfall

    def test_an_expected_probe_that_never_ran_is_drift(self):
        report = compare(scenario({"p": {"v": 1}, "q": {"w": UNSET}}), run(record("p", "v", 1)), RunConfig())
        assert report.status is Status.DRIFT
        missing = report.observations[1]
        assert (missing.seq, missing.request, missing.probe, missing.var) == (None, None, "q", "w")
        assert (missing.observed, missing.expected, missing.match) == (NOT_REACHED, UNSET, False)
        assert report.drifted == [missing]

    def test_a_crashed_run_reports_its_error_not_the_probes_it_never_reached(self):
        report = compare(scenario({"p": {"v": 1}}), run(error="ValueError: boom"), RunConfig())
        assert (report.status, report.error, report.observations) == (Status.ERROR, "ValueError: boom", [])

    @pytest.mark.parametrize(
        ("expected", "observed"), [("x", None), (None, "x"), (None, UNSET), ({"a": 1}, {"a": None})]
    )
    def test_a_value_that_differs_from_the_expected_one_is_drift(self, expected, observed):
        report = compare(scenario({"p": {"v": expected}}), run(record("p", "v", observed)), RunConfig())
        assert report.status is Status.DRIFT
        assert [o.match for o in report.observations] == [expected == observed] == [False]

    @pytest.mark.parametrize(("expected", "observed"), [(False, 0), (True, 1), (1, 1.0), ({"a": [True]}, {"a": [1]})])
    def test_values_equal_to_python_but_not_the_same_json_are_drift(self, expected, observed):
        # `0 == False` in Python; a variable that held False and now holds 0 is not what was expected.
        report = compare(scenario({"p": {"v": expected}}), run(record("p", "v", observed)), RunConfig())
        assert report.status is Status.DRIFT

    @pytest.mark.parametrize("value", [float("nan"), {"b": 1, "a": 2}, [1, "x", None], False])
    def test_the_same_value_matches_even_where_python_equality_fails(self, value):
        # NaN != NaN in Python, yet NaN observed where NaN was expected is a match
        # (the record holds the value as probe() records it).
        report = compare(scenario({"p": {"v": value}}), run(record("p", "v", jsonable(value))), RunConfig())
        assert (report.status, [o.match for o in report.observations]) == (Status.PASS, [True])

    def test_a_variable_the_scenario_does_not_expect_is_a_declaration_error(self):
        report = compare(scenario({"p": {"v": 1}}), run(record("p", "other", 1)), RunConfig())
        assert report.status is Status.ERROR
        assert report.error == "scenario definition: probe 'p' saw 'other', which the scenario does not expect"

    def test_each_record_is_compared_with_its_own_request_and_server(self):
        expect = {"p": {"v": per_request("first", "later")}, "s": {"v": by_server(asgi="in", uvicorn="out")}}
        records = [record("p", "v", "first", 1), record("p", "v", "later", 2), record("s", "v", "out", 2)]
        report = compare(scenario(expect), run(*records), RunConfig("uvicorn"))
        assert [o.expected for o in report.observations] == ["first", "later", "out"]
        assert report.status is Status.PASS and report.server == "uvicorn"

    def test_an_unreached_probe_is_expected_outside_any_request(self):
        expect = {"p": {"v": per_request("first", "later")}}
        (o,) = compare(scenario(expect), run(), RunConfig()).observations
        assert (o.expected, o.observed) == ("first", NOT_REACHED)


class TestExitCode:
    """130, 3, 1, 5 or 0: the first that applies."""

    @pytest.mark.parametrize(
        ("statuses", "code"),
        [
            ([Status.PASS], 0),
            ([Status.PASS, Status.SKIPPED], 0),
            ([Status.PASS, Status.DRIFT], 1),
            ([Status.DRIFT, Status.ERROR], 3),
            ([Status.ERROR], 3),
            ([Status.SKIPPED], 5),
            ([], 5),
        ],
    )
    def test_statuses(self, statuses, code):
        assert Report([result(str(n), s) for n, s in enumerate(statuses)]).exit_code == code

    def test_interrupted_wins(self):
        assert Report([result("a", Status.ERROR)], interrupted=True).exit_code == 130

    def test_summary_counts_each_status(self):
        statuses = [
            Status.PASS,
            Status.DRIFT,
            Status.DRIFT,
            Status.ERROR,
            Status.SKIPPED,
            Status.SKIPPED,
            Status.SKIPPED,
        ]
        summary = Report([result(str(n), s) for n, s in enumerate(statuses)]).summary
        assert summary == {"total": 7, "passed": 1, "drifted": 2, "errors": 1, "skipped": 3}


class TestJson:
    """The report's JSON is the documented schema."""

    def test_one_server(self):
        compared = compare(scenario({"p": {"v": 1}}), run(record("p", "v", 2)), RunConfig())
        document = Report([compared], spec_version="2.4").to_json()
        assert document["schema_version"] == 1
        assert document["tool"] == {"name": "ctxlab", "version": __version__}
        assert (document["server"], document["spec_version"]) == ("asgi", "2.4")
        assert document["environment"] == environment()
        (entry,) = document["scenarios"]
        assert entry == {
            "name": "hand-made", "status": "drift", "duration_ms": 12.3, "error": None, "onion": ["Outer", "Inner"],
            "observations": [{
                "seq": 1, "request": 1, "probe": "p", "var": "v", "observed": 2, "expected": 1, "naive": 1,
                "match": False, "task": None, "parent_task": None, "context": "C1", "thread": "MainThread",
            }],
        }  # fmt: skip
        assert document["summary"]["drifted"] == 1
        json.dumps(document)  # plain JSON all through

    def test_both_servers_tag_each_scenario(self):
        document = Report(
            [result("a", Status.PASS), result("a", Status.PASS, server="uvicorn")], servers=("asgi", "uvicorn")
        ).to_json()
        assert document["server"] == "both"
        assert [(s["name"], s["server"]) for s in document["scenarios"]] == [("a", "asgi"), ("a", "uvicorn")]

    def test_environment_names_python_and_the_installed_frameworks(self):
        env = environment()
        assert env["python"] == platform.python_version()
        assert env["packages"] == {
            p: metadata.version(p) for p in ("starlette", "fastapi", "anyio", "httpx", "uvicorn")
        }

    def test_skipped_says_why(self):
        report = skipped("a", "needs uvicorn>=99", RunConfig("uvicorn"))
        assert report.server == "uvicorn"
        assert report.to_json() == {
            "name": "a", "status": "skipped", "duration_ms": 0.0, "error": "needs uvicorn>=99", "onion": [], "observations": [],
        }  # fmt: skip
        assert str(Status.DRIFT) == "drift"


class TestText:
    """Values as people read them."""

    def test_show(self):
        assert [show(None), show("x"), show(UNSET), show({"a": 1}), show(0)] == [
            "null",
            '"x"',
            "<unset>",
            '{"a": 1}',
            "0",
        ]

    def test_drift_line_names_the_request_when_there_is_one(self):
        report = compare(
            scenario({"p": {"v": None}, "q": {"w": 1}}), run(record("p", "v", "x", request=2)), RunConfig()
        )
        assert [drift_line(o) for o in report.drifted] == [
            'request 2: p v: expected null, observed "x"',
            "q w: expected 1, observed <not reached>",
        ]

    def test_a_scenario_is_labelled_with_the_server_loop_and_parser_it_ran_on(self):
        ran = ScenarioReport("s", Status.PASS, config=RunConfig("uvicorn", "uvloop", "httptools"))
        assert (ran.server, ran.label) == ("uvicorn", "uvicorn (uvloop, httptools)")
        # In process the loop is no choice of the user's: the tables say "asgi" alone.
        assert ScenarioReport("s", Status.PASS, config=RunConfig("asgi", "asyncio")).label == "asgi"
        assert ScenarioReport("s", Status.PASS, config=RunConfig("hypercorn")).label == "hypercorn"


def saved(*scenarios, server="asgi"):
    return {"schema_version": 1, "server": server, "scenarios": list(scenarios)}


def entry(name, *observed, status="pass", **extra):
    """A saved scenario; `observed` holds (request, probe, var, value)."""
    rows = [{"request": r, "probe": p, "var": v, "observed": value} for r, p, v, value in observed]
    return {"name": name, "status": status, "observations": rows, **extra}


class TestDiff:
    """What changed from one saved report to another."""

    def test_the_same_report_has_no_changes(self):
        before = saved(entry("a", (1, "p", "v", 1), (1, "p", "v", 2)))
        assert diff(before, before) == []

    def test_a_changed_value(self):
        (change,) = diff(saved(entry("a", (1, "p", "v", 1))), saved(entry("a", (1, "p", "v", None))))
        assert (change.scenario, change.server, change.request, change.probe, change.var) == ("a", "asgi", 1, "p", "v")
        assert (change.before, change.after) == (1, None)

    def test_true_becoming_1_is_a_change(self):
        (change,) = diff(saved(entry("a", (1, "p", "v", True))), saved(entry("a", (1, "p", "v", 1))))
        assert (change.before, change.after) == (True, 1)

    def test_an_extra_occurrence_is_reported(self):
        before = saved(entry("a", (1, "p", "v", 1)))
        after = saved(entry("a", (1, "p", "v", 1), (1, "p", "v", 1)))
        (change,) = diff(before, after)
        assert (change.request, change.probe, change.before, change.after) == (1, "p", "<absent>", 1)
        (gone,) = diff(after, before)
        assert (gone.before, gone.after) == (1, "<absent>")

    def test_a_status_change_and_the_values_behind_it(self):
        before = saved(entry("a", (1, "p", "v", 1)))
        after = saved(entry("a", (1, "p", "v", 2), status="drift"))
        status, value = diff(before, after)
        assert (status.probe, status.var, status.request, status.before, status.after) == (
            "-",
            "status",
            None,
            "pass",
            "drift",
        )
        assert (value.before, value.after) == (1, 2)

    def test_a_scenario_skipped_on_one_side_is_its_status_alone(self):
        before = saved(entry("a", (1, "p", "v", 1)), entry("b", (1, "p", "v", 1)))
        status, value = diff(before, saved(entry("a", status="skipped"), entry("b", (1, "p", "v", 2))))
        assert (status.scenario, status.var, status.before, status.after) == ("a", "status", "pass", "skipped")
        assert (value.scenario, value.before, value.after) == ("b", 1, 2)

    def test_a_scenario_no_longer_run_is_a_change_and_a_new_one_is_not(self):
        before = saved(entry("a"), entry("b", (1, "p", "v", 1)))
        after = saved(entry("b", (1, "p", "v", 2)), entry("c"))
        gone, changed = diff(before, after)
        assert (gone.scenario, gone.var, gone.before, gone.after) == ("a", "status", "pass", "<not run>")
        assert (changed.scenario, changed.before, changed.after) == ("b", 1, 2)

    def test_runs_are_told_apart_by_server(self):
        document = saved(entry("a", server="asgi"), entry("a", server="uvicorn"), entry("b"), server="both")
        assert list(runs(document)) == [("a", "asgi"), ("a", "uvicorn"), ("b", "both")]
        assert list(runs({"scenarios": [entry("c")]})) == [("c", "asgi")]
        only_uvicorn = saved(
            entry("a", (1, "p", "v", 1), server="uvicorn"), entry("a", (1, "p", "v", 2), server="asgi")
        )
        (change,) = diff(only_uvicorn, saved(entry("a", (1, "p", "v", 1)), server="uvicorn"))
        assert (change.server, change.var, change.before, change.after) == ("asgi", "status", "pass", "<not run>")

    def test_by_occurrence_counts_repeats_from_zero(self):
        keyed = by_occurrence(["a", "b", "a"], lambda item: (item,))
        assert keyed == {("a", 0): "a", ("b", 0): "b", ("a", 1): "a"}


class TestLoadReport:
    """A saved report is checked before anything reads it."""

    def test_a_valid_report_is_returned_whole(self, tmp_path):
        path = tmp_path / "r.json"
        document = saved(entry("a", (1, "p", "v", 1)))
        document["scenarios"].append({"name": "b", "observations": [{"probe": "p", "var": "v", "observed": None}]})
        path.write_text(json.dumps(document))
        assert load_report(path) == document  # probe, var and observed are all an observation needs

    @pytest.mark.parametrize(
        ("content", "message"),
        [
            ("", "is empty; make one with 'ctxlab snapshot -o"),
            ("  \n", "is empty"),
            ("[1,", "is not JSON (line 1: Expecting value)"),
            ("[]", "is not a ctxlab report (no schema_version)"),
            ('{"scenarios": []}', "is not a ctxlab report (no schema_version)"),
            ('{"schema_version": 2}', "has schema_version 2; this ctxlab reads 1"),
            ('{"schema_version": "1"}', "has schema_version '1'; this ctxlab reads 1"),
            ('{"schema_version": 1}', "malformed ctxlab report"),
            ('{"schema_version": 1, "scenarios": {}}', "malformed"),
            ('{"schema_version": 1, "scenarios": [1]}', "malformed"),
            ('{"schema_version": 1, "scenarios": [{"name": 1, "observations": []}]}', "malformed"),
            ('{"schema_version": 1, "scenarios": [{"name": "a"}]}', "malformed"),
            ('{"schema_version": 1, "scenarios": [{"name": "a", "observations": [[]]}]}', "malformed"),
            (
                '{"schema_version": 1, "scenarios": [{"name": "a", "observations": [{"probe": "p", "var": "v"}]}]}',
                "malformed",
            ),
        ],
    )
    def test_bad_files_are_one_clear_error(self, tmp_path, content, message):
        path = tmp_path / "r.json"
        path.write_text(content)
        with pytest.raises(ReportFileError, match=str(path)) as caught:
            load_report(path)
        assert message in str(caught.value)

    def test_a_file_over_the_size_limit_is_refused_before_reading(self, tmp_path):
        MAX_BYTES = 64 * 2**20  # the limit README gives: "over 64 MiB"
        path = tmp_path / "huge.json"
        with path.open("wb") as huge:
            huge.truncate(MAX_BYTES + 1)  # sparse: no disk, no time
        with pytest.raises(ReportFileError) as caught:
            load_report(path)
        assert str(caught.value) == f"{path} is too large for a ctxlab report ({(MAX_BYTES + 1) // 2**20} MiB)"
        with path.open("wb") as at_the_limit:
            at_the_limit.truncate(MAX_BYTES)  # the limit itself is allowed: read, and refused for what it holds
        with pytest.raises(ReportFileError, match="is not JSON"):
            load_report(path)

    @pytest.mark.parametrize(
        "server, shown",
        [
            ("iis", "'iis'"),
            ("x" * 38, "'" + "x" * 38 + "'"),  # 40 characters: shown whole
            ("x" * 39, "'" + "x" * 36 + "..."),  # 41: the first 37 and an ellipsis
        ],
    )
    def test_a_wrong_value_is_shown_cut_to_40_characters(self, tmp_path, server, shown):
        path = tmp_path / "r.json"
        path.write_text(json.dumps({"schema_version": 1, "server": server, "scenarios": []}))
        with pytest.raises(ReportFileError) as caught:
            load_report(path)
        assert str(caught.value) == (
            f"{path} is a malformed ctxlab report: server is {shown}, expected one of asgi, uvicorn, both"
        )

    def test_unreadable(self, tmp_path):
        with pytest.raises(ReportFileError, match=f"cannot read {tmp_path}/missing.json: No such file or directory"):
            load_report(tmp_path / "missing.json")
        (tmp_path / "latin1.json").write_bytes(b'{"\xff": 1}')
        with pytest.raises(ReportFileError, match="cannot read .*latin1.json: 'utf-8' codec"):
            load_report(tmp_path / "latin1.json")


def ci_report():
    drifted = compare(scenario({"p": {"v": 1}, "q": {"w": 2}}), run(record("p", "v", "50%\nmore")), RunConfig())
    drifted.duration_ms = 1500
    return Report([
        result("ok", Status.PASS), drifted, result("bad", Status.ERROR, error="ValueError: x"),
        result("other", Status.SKIPPED, server="uvicorn", error="runs only on asgi"),
        result("silent", Status.ERROR), result("quiet", Status.SKIPPED),
    ])  # fmt: skip


class TestCiFormats:
    """JUnit XML and GitHub annotations carry each failure's details."""

    def test_junit(self):
        suite = ET.fromstring(junit(ci_report()).split("?>", 1)[1])[0]
        assert {k: suite.get(k) for k in ("name", "tests", "failures", "errors", "skipped", "time")} == {
            "name": "ctxlab", "tests": "6", "failures": "1", "errors": "2", "skipped": "2", "time": "1.505",
        }  # fmt: skip
        cases = {case.get("name"): case for case in suite}
        assert cases["ok"].get("classname") == "ctxlab.asgi" and list(cases["ok"]) == []
        assert cases["other"].get("classname") == "ctxlab.uvicorn"
        assert cases["hand-made"].get("time") == "1.500"
        (failure,) = cases["hand-made"]
        assert (failure.tag, failure.get("message")) == ("failure", "2 observation(s) drifted")
        assert (
            failure.text == 'request 1: p v: expected 1, observed "50%\\nmore"\nq w: expected 2, observed <not reached>'
        )
        assert [(e.tag, e.get("message")) for name in ("bad", "silent", "other", "quiet") for e in cases[name]] == [
            ("error", "ValueError: x"), ("error", "error"), ("skipped", "runs only on asgi"), ("skipped", "skipped"),
        ]  # fmt: skip

    def test_junit_spells_what_xml_cannot_hold(self):
        """An app's exception holding characters XML 1.0 cannot hold, even
        escaped (NUL, an ESC, a lone surrogate): spelled as Python does,
        each alone, and the text around them kept, so the file parses."""
        report = Report([result("bad", Status.ERROR, error="NUL \x00, ESC \x1b[31m, \udcff; tab\t é")])
        (case,) = ET.fromstring(junit(report).split("?>", 1)[1])[0]
        assert case.find("error").get("message") == "NUL \\x00, ESC \\x1b[31m, \\udcff; tab\t é"

    def test_github_annotations(self):
        assert github_annotations(ci_report()) == [
            '::error title=ctxlab drift: hand-made (asgi)::request 1: p v: expected 1, observed "50%25\\nmore"',
            "::error title=ctxlab drift: hand-made (asgi)::q w: expected 2, observed <not reached>",
            "::error title=ctxlab error: bad (asgi)::ValueError: x",
            "::error title=ctxlab error: silent (asgi)::",
        ]

    def test_annotations_escape_newlines(self):
        report = Report([result("a", Status.ERROR, error="line 1\r\nline 2")])
        assert github_annotations(report) == ["::error title=ctxlab error: a (asgi)::line 1%0D%0Aline 2"]


def test_a_value_is_shown_whole_up_to_1000_characters_then_cut_saying_how_long():
    assert show("x" * 998) == json.dumps("x" * 998)  # 1,000 characters with its quotes
    assert show("x" * 999) == f'"{"x" * 999}… (1,001 characters)'
    assert show([1] * 400).endswith("… (1,200 characters)")


def test_a_saved_trace_keeps_a_value_up_to_10000_characters_of_json_then_its_size_and_digest():
    kept = "x" * 9_998  # 10,000 characters as JSON
    assert bounded(kept) == kept and bounded({"k": kept[:9_990]}) == {"k": kept[:9_990]}
    longer, other = "x" * 9_999, "x" * 9_998 + "y"
    digest = hashlib.sha256(json.dumps(longer).encode()).hexdigest()[:16]
    assert bounded(longer) == f"<str of 10,001 characters as JSON, sha256 {digest}>"
    assert bounded(longer) != bounded(other)  # still told apart
    # A dict's keys in another order (built otherwise in another run) are the same value.
    one, two = {"a": longer, "b": 1}, {"b": 1, "a": longer}
    assert bounded(one) == bounded(two) and list(one) != list(two)
    assert bounded(10**999) == 10**999 and bounded(None) is None
