"""The CLI end to end, in subprocesses: exit codes, JSON, files, errors."""

import json
import os
import platform
import re
import stat
import subprocess
import sys
from importlib import metadata
from pathlib import Path

import pytest
from conftest import ctxlab, ctxlab_json, python_path

FIXTURES = Path(__file__).parent / "fixtures"
PACKAGE_DIR = str(Path(__file__).resolve().parent.parent / "ctxlab")
OBSERVATION_KEYS = [
    "seq", "request", "probe", "var", "observed", "expected", "naive", "match",
    "task", "parent_task", "context", "thread",
]  # fmt: skip


def observed_at(document, scenario, probe):
    (result,) = [s for s in document["scenarios"] if s["name"] == scenario]
    return [o["observed"] for o in result["observations"] if o["probe"] == probe]


def test_run_bad_then_shiny_json_matches_the_contract():
    code, document, _ = ctxlab_json("run", "bad-then-shiny")
    assert code == 0
    assert list(document) == ["schema_version", "tool", "environment", "server", "spec_version", "scenarios", "summary"]
    assert document["schema_version"] == 1
    assert document["tool"]["name"] == "ctxlab"
    assert set(document["environment"]["packages"]) == {"starlette", "fastapi", "anyio", "httpx", "uvicorn"}
    assert (document["server"], document["spec_version"]) == ("asgi", None)
    (scenario,) = document["scenarios"]
    assert list(scenario) == ["name", "status", "duration_ms", "error", "onion", "observations"]
    assert scenario["status"] == "pass" and scenario["onion"] == ["ShinyMiddleware", "BadMiddleware"]
    for observation in scenario["observations"]:
        assert list(observation) == OBSERVATION_KEYS
    assert observed_at(document, "bad-then-shiny", "bad.after") == [None]
    assert observed_at(document, "bad-then-shiny", "shiny.after") == [None]
    assert document["summary"] == {"total": 1, "passed": 1, "drifted": 0, "errors": 0, "skipped": 0}


def test_shiny_then_bad_shows_the_value_only_inside():
    code, document, _ = ctxlab_json("run", "shiny-then-bad")
    assert code == 0
    assert observed_at(document, "shiny-then-bad", "shiny.after") == [{"random_int": 42}]
    assert observed_at(document, "shiny-then-bad", "bad.after") == [None]


def test_table_output_has_onion_rows_and_summary():
    code, out, err = ctxlab("run", "bad-then-shiny")
    assert code == 0 and err == ""
    assert "onion: ShinyMiddleware → BadMiddleware → app" in out
    assert "shiny.after" in out and "naive:" in out
    assert out.strip().splitlines()[-1].startswith("1 passed in ")
    assert "\x1b[" not in out  # piped: no colour codes


def test_force_color_colours_output():
    code, out, _ = ctxlab("run", "bad-only", env={"FORCE_COLOR": "1", "NO_COLOR": None})
    assert code == 0 and "\x1b[" in out


def test_typo_exits_2_with_a_suggestion_and_no_traceback():
    code, out, err = ctxlab("run", "bad-then-shinny")
    assert code == 2 and out == ""
    assert err == "ctxlab: error: unknown scenario 'bad-then-shinny'; did you mean 'bad-then-shiny'?\n"


@pytest.mark.parametrize(
    "args, message",
    [
        (["run"], "name a scenario, or use --all or --tag"),
        (["run", "--tag", "nope"], "unknown tag 'nope'; known tags:"),
        (["run", "bad-only", "--all"], "give scenario names or --all, not both"),
        (["run", "bad-only", "--spec-version", "two"], "bad --spec-version 'two'"),
        (["run", "bad-only", "--spec-version", "2.4\n"], "bad --spec-version '2.4\\n'"),
        (["run", "bad-only", "--spec-version", "\u0663.\u0664"], "bad --spec-version '\u0663.\u0664'"),
        # Whichever typer: recent ones check choices with pydantic ("Value error, ...").
        (["run", "bad-only", "--server", "iis"], "ctxlab: error: Invalid value for '--server': 'iis' is not one of"),
        # click < 8.4 says "No such option: --bogus", later ones "No such option '--bogus'."
        (["run", "bad-only", "--bogus"], "No such option"),
        (["run", "--all", "--scenarios", "/no/such/dir"], "scenario directory /no/such/dir does not exist"),
        # The package's own directory instead of a scenarios directory beside it.
        (["list", "--scenarios", PACKAGE_DIR], f"scenario directory {PACKAGE_DIR} declares no scenario"),
        (["explain", "nope"], "unknown scenario 'nope'"),
        (["list", "--tag", "nope"], "unknown tag 'nope'"),
    ],
)
def test_bad_input_is_one_line_and_exit_2(args, message):
    code, out, err = ctxlab(*args)
    assert code == 2, (out, err)
    assert message in err and len(err.strip().splitlines()) == 1 and "Traceback" not in err


def test_nothing_selected_exits_5():
    code, _, err = ctxlab("run", "bad-only", "--tag", "fix")
    assert code == 5 and "nothing selected" in err


def test_tag_selects_and_all_runs_everything():
    code, listed, _ = ctxlab_json("list", "--tag", "fix")
    code, document, _ = ctxlab_json("run", "--tag", "fix")
    assert code == 0
    assert [s["name"] for s in document["scenarios"]] == [row["name"] for row in listed]
    assert "shiny-only" in {row["name"] for row in listed} and all("fix" in row["tags"] for row in listed)
    code, document, _ = ctxlab_json("run", "--all")
    summary = document["summary"]
    assert code == 0 and summary["drifted"] == summary["errors"] == 0
    assert summary["passed"] + summary["skipped"] == summary["total"] >= 30


def test_output_file_holds_the_json_report(tmp_path):
    target = tmp_path / "report.json"
    code, out, _ = ctxlab("run", "bad-only", "-o", str(target))
    assert code == 0 and "bad-only" in out
    assert json.loads(target.read_text())["scenarios"][0]["name"] == "bad-only"
    assert os.listdir(tmp_path) == ["report.json"]  # no temporary left behind


def test_check_says_a_line_for_each_scenario_of_the_catalog():
    _, listed, _ = ctxlab("list", "--json")
    code, out, _ = ctxlab("check")
    lines = [line.split() for line in out.splitlines() if line.split()[:1] in (["PASS"], ["SKIPPED"])]
    assert code == 0 and [line[1:3] for line in lines] == [[row["name"], "asgi"] for row in json.loads(listed)], out
    assert len(out.splitlines()) == len(lines) + 1, out  # the tables are for failures only
    passed = sum(line[0] == "PASS" for line in lines)
    assert re.fullmatch(rf"{passed} passed(, {len(lines) - passed} skipped)? in \d+\.\d\ds", out.splitlines()[-1]), out


def test_check_shows_the_table_of_a_drifted_scenario_only():
    """A line per scenario, and the full table (its drifted rows) of the
    one that drifted, between the lines and the summary."""
    drifting = str(FIXTURES / "drifting_scenarios")
    code, document, _ = ctxlab_json("run", "always-drifts", "--scenarios", drifting)
    (drifted,) = [o for o in document["scenarios"][0]["observations"] if not o["match"]]
    code, out, _ = ctxlab("check", "--scenarios", drifting)
    lines = out.splitlines()
    details = lines[next(n for n, line in enumerate(lines) if line.startswith("always-drifts  DRIFT")) :]
    assert code == 1 and sum(line.startswith("request ") for line in details) == 1, out
    row = [str(drifted["seq"]), drifted["probe"], "✗", json.dumps(drifted["observed"])]
    assert row in [line.split()[:4] for line in details], out


def test_both_servers_each_say_why_their_run_failed():
    """The app raises: in process the exception reaches ctxlab; uvicorn
    answers 500 in its place.  Each server's line says its own."""
    crashing = str(FIXTURES / "crashing_scenarios")
    code, out, _ = ctxlab("run", "always-crashes", "--scenarios", crashing, "--server", "both")
    lines = out.splitlines()
    assert code == 3 and "asgi: RuntimeError: the app fell over" in lines, out
    (on_uvicorn,) = [line for line in lines if line.startswith("uvicorn (")]
    assert on_uvicorn.endswith(
        "UnexpectedResponse: request 1 (GET /) answered 500, expected 200: Internal Server Error"
    )
    assert lines[-1].startswith("2 errors in ")
    code, out, _ = ctxlab("run", "always-crashes", "--scenarios", crashing)
    assert code == 3 and out.splitlines()[-1].startswith("1 error in ")


def test_diff_of_a_saved_run_runs_its_scenarios_again(tmp_path):
    """`diff` of a run's report (not a trace): its one scenario, run again here."""
    saved = tmp_path / "report.json"
    ctxlab("run", "bad-only", "-o", str(saved))
    code, document, err = ctxlab_json("diff", str(saved))
    assert code == 0 and document["changes"] == [], err
    assert document["after"]["python"] == document["before"]["python"] == platform.python_version()
    code, out, _ = ctxlab("diff", str(saved))
    assert code == 0 and "python" not in out  # the same Python: not worth a line
    report = json.loads(saved.read_text())
    report["environment"]["python"] = "3.9.0"
    saved.write_text(json.dumps(report))
    code, out, _ = ctxlab("diff", str(saved))
    assert code == 0 and f"\npython 3.9.0 → {platform.python_version()}\n" in out
    (packages,) = [line for line in out.splitlines() if line.startswith("packages: ")]
    assert f"starlette {metadata.version('starlette')}" in packages and " → " not in packages, out
    report["environment"]["packages"]["starlette"] = "0.27.0"
    saved.write_text(json.dumps(report))
    code, out, _ = ctxlab("diff", str(saved))
    (packages,) = [line for line in out.splitlines() if line.startswith("packages: ")]
    assert f"starlette 0.27.0 → {metadata.version('starlette')}, fastapi {metadata.version('fastapi')}" in packages
    assert packages.count(" → ") == 1, out
    assert out.endswith("\nno changes\n") and "before" not in out  # no table of nothing
    # As if bad-only had once seen the value after the endpoint.
    (seen,) = [o for o in report["scenarios"][0]["observations"] if o["probe"] == "bad.after"]
    seen["observed"] = {"random_int": 42}
    saved.write_text(json.dumps(report))
    code, out, _ = ctxlab("diff", str(saved))
    (row,) = [line for line in out.splitlines() if line.startswith("bad-only")]
    assert code == 1 and row.split() == ["bad-only", "asgi", "1", "bad.after", '{"random_int":', "42}", "null"], out


def test_check_exits_1_when_every_scenario_passes_but_one_differs_from_the_baseline(tmp_path):
    """A framework upgrade can change what a scenario observes while every
    expectation still holds: against a baseline, that is a change, exit 1."""
    baseline = tmp_path / "report.json"
    ctxlab("run", "bad-only", "-o", str(baseline))
    code, out, _ = ctxlab("check", "--baseline", str(baseline))
    assert code == 0 and "\nno changes\n" in out and "not compared" not in out, out
    report = json.loads(baseline.read_text())
    (seen,) = [o for o in report["scenarios"][0]["observations"] if o["probe"] == "bad.after"]
    seen["observed"] = {"random_int": 42}  # as if an older Starlette had let the value out
    baseline.write_text(json.dumps(report))
    code, out, _ = ctxlab("check", "--baseline", str(baseline))
    assert code == 1 and "\n1 change(s) in 1 scenario(s)\n" in out and " failed" not in out, out


def test_snapshot_says_what_it_wrote_and_exits_0(tmp_path):
    target = tmp_path / "snapshot.json"
    code, out, err = ctxlab("snapshot", "-o", str(target))
    s = json.loads(target.read_text())["summary"]
    assert (code, out) == (0, "") and s["errors"] == s["drifted"] == 0, err
    said = " ".join(err.split())  # on stderr, folded at COLUMNS
    assert said == (
        f"wrote {target}: {s['total']} scenario runs ({s['passed']} passed, "
        f"{s['drifted']} drifted, {s['errors']} errors, {s['skipped']} skipped)"
    )


def test_snapshot_of_a_scenario_that_crashes_is_written_and_exits_3(tmp_path):
    """always-crashes raises on every request (its module says so): the
    snapshot keeps the error, and snapshot exits 3, as run does."""
    target = tmp_path / "snapshot.json"
    crashing = FIXTURES / "crashing_scenarios"
    code, out, err = ctxlab("snapshot", "-o", str(target), "--server", "asgi", "--scenarios", str(crashing))
    (crashed,) = [s for s in json.loads(target.read_text())["scenarios"] if s["name"] == "always-crashes"]
    assert (code, out, crashed["status"]) == (3, "", "error"), err
    assert " 1 errors, " in " ".join(err.split())


def test_unwritable_output_is_refused_before_running(tmp_path):
    locked = tmp_path / "locked"
    locked.mkdir()
    locked.chmod(stat.S_IRUSR | stat.S_IXUSR)
    if os.access(locked, os.W_OK):  # root writes anywhere, except on a read-only file system
        locked = Path("/proc/sys")  # which containers mount read-only
        if not locked.is_dir() or os.access(locked, os.W_OK):
            pytest.skip("no directory here that this user cannot write")
    code, out, err = ctxlab("run", "bad-only", "-o", str(locked / "r.json"))
    assert (
        code == 2
        and out == ""
        and err == f"ctxlab: error: cannot write {locked / 'r.json'}: {locked} is not a writable directory\n"
    )


def test_output_into_a_missing_directory_is_refused(tmp_path):
    code, _, err = ctxlab("run", "bad-only", "-o", str(tmp_path / "missing" / "r.json"))
    assert code == 2 and "is not a writable directory" in err
    assert not (tmp_path / "missing").exists()


def test_crash_and_hang_are_errors_and_the_rest_still_run(tmp_path):
    target = tmp_path / "r.json"
    code, document, _ = ctxlab_json(
        "run", "--tag", "broken", "--scenarios", str(FIXTURES / "broken_scenarios"), "-o", str(target)
    )
    assert code == 3
    status = {s["name"]: (s["status"], s["error"]) for s in document["scenarios"]}
    assert status["crashes"] == ("error", "RuntimeError: the app fell over")
    assert status["hangs"] == ("error", "timed out after 0.5s")
    assert status["fine"] == ("pass", None)
    assert json.loads(target.read_text())["summary"]["errors"] == 2


def test_a_starlette_that_propagates_is_reported_as_drift():
    """If an upgrade made BaseHTTPMiddleware propagate, CI must notice."""
    env = {"PYTHONPATH": python_path(FIXTURES / "propagating_starlette")}
    code, document, _ = ctxlab_json("run", "--tag", "middleware", env=env)
    assert code == 1
    drifted = {(s["name"], o["probe"]) for s in document["scenarios"] for o in s["observations"] if not o["match"]}
    assert drifted == {
        ("bad-then-shiny", "bad.after"),
        ("bad-then-shiny", "shiny.after"),
        ("shiny-then-bad", "bad.after"),
        ("bad-only", "bad.after"),
        ("dependency-audit", "audit.after"),  # the user now reaches the audit
    }
    code, out, _ = ctxlab("run", "bad-then-shiny", env=env)
    assert code == 1 and "DRIFT" in out and "✗" in out


def test_list_json_and_table():
    code, out, _ = ctxlab("list", "--json")
    rows = json.loads(out)
    assert code == 0 and {"name", "tags", "summary"} <= set(rows[0])
    code, out, _ = ctxlab("list")
    assert code == 0 and "bad-then-shiny" in out


@pytest.mark.parametrize("args", [["list"], ["--help"], ["run", "--help"], ["--version"]])
def test_list_and_help_import_no_web_framework(args):
    done = subprocess.run([sys.executable, "-X", "importtime", "-m", "ctxlab", *args], capture_output=True, text=True)
    assert done.returncode == 0
    imported = {line.split("|")[-1].strip().split(".")[0] for line in done.stderr.splitlines() if "|" in line}
    assert not imported & {"starlette", "fastapi", "httpx", "uvicorn", "anyio"}


def test_a_piped_list_imports_no_rich():
    """The catalog in plain columns (stdout a pipe) needs no Rich: `list` stays quick."""
    done = subprocess.run([sys.executable, "-X", "importtime", "-m", "ctxlab", "list"], capture_output=True, text=True)
    assert done.returncode == 0 and "bad-then-shiny" in done.stdout
    imported = {line.split("|")[-1].strip().split(".")[0] for line in done.stderr.splitlines() if "|" in line}
    assert "typer" in imported and "rich" not in imported


def test_version_names_tool_and_frameworks():
    code, out, _ = ctxlab("--version")
    assert code == 0 and out.startswith("ctxlab 0.1.0") and "starlette" in out and "uvicorn" in out


def test_concurrency_option_changes_the_interleave():
    code, document, _ = ctxlab_json("run", "threading-local-interleave", "--concurrency", "7")
    assert code == 0
    (tally,) = [o for o in document["scenarios"][0]["observations"] if o["var"] == "threading.local foreign"]
    assert tally["observed"] == 6  # all but the last writer of 7
    code, _, err = ctxlab("run", "threading-local-interleave", "--concurrency", "0")
    assert code == 2 and "Invalid value for '--concurrency'" in err


def test_readme_catalog_lists_every_scenario():
    readme = (Path(__file__).parent.parent / "README.md").read_text()
    section = readme.split("## The catalog")[1].split("\n## ")[0]
    code, rows, _ = ctxlab_json("list")
    in_table = {line.split("`")[1] for line in section.splitlines() if line.startswith("| `")}
    assert in_table == {row["name"] for row in rows}


def test_bare_ctxlab_prints_the_help_whole():
    """No command: click's help on stderr, exit 2; it was an error line
    "ctxlab: error: Usage: ..." cut in its middle."""
    code, out, err = ctxlab()
    assert code == 2 and out == ""
    assert re.match(r"Usage: (python -m )?ctxlab \[OPTIONS\] COMMAND \[ARGS\]...\n", err) and "left out" not in err
    assert all(f"\n  {command} " in err for command in ("list", "run", "explain", "check", "probe", "trace")), err


@pytest.mark.parametrize("given, seconds", [("0.1", 0.1), ("86400", 86400.0), ("30", 30.0)])
def test_a_timeout_from_a_tenth_of_a_second_to_a_day_is_taken(given, seconds):
    from ctxlab.cli import _seconds

    assert _seconds(given) == seconds
