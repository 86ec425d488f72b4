"""check, snapshot, diff, JUnit, annotations and matrix, for real."""

import json
import os
import platform
import re
import shutil
import subprocess
import sys
import xml.etree.ElementTree as ET
from pathlib import Path

import pytest
from conftest import ctxlab, ctxlab_json, python_path

from ctxlab import matrix
from ctxlab.errors import MatrixError

FIXTURES = Path(__file__).parent / "fixtures"
PROPAGATING = {"PYTHONPATH": python_path(FIXTURES / "propagating_starlette")}


@pytest.fixture(scope="module")
def snapshot(tmp_path_factory):
    path = tmp_path_factory.mktemp("snap") / "snap.json"
    code, _, err = ctxlab("snapshot", "-o", str(path))
    assert code == 0, err
    return path


def test_snapshot_covers_both_servers(snapshot):
    document = json.loads(snapshot.read_text())
    assert document["server"] == "both"
    assert {s["server"] for s in document["scenarios"]} == {"asgi", "uvicorn"}


def test_diff_in_the_same_environment_finds_nothing(snapshot):
    code, out, _ = ctxlab("diff", str(snapshot))
    assert code == 0 and "no changes" in out


def test_diff_names_what_a_changed_framework_changed(snapshot):
    code, document, _ = ctxlab_json("diff", str(snapshot), env=PROPAGATING)
    assert code == 1 and list(document) == ["schema_version", "before", "after", "changes"]
    assert document["schema_version"] == 1
    changed = {(c["scenario"], c["probe"], c["var"], json.dumps(c["after"])) for c in document["changes"]}
    assert ("bad-only", "bad.after", "context", '{"random_int": 42}') in changed
    assert set(document["before"]["packages"]) == set(document["after"]["packages"])


@pytest.mark.parametrize(
    "content, message",
    [
        ("", "is empty"),
        ("{not json", "is not JSON (line 1"),
        ('{"hello": 1}', "is not a ctxlab report (no schema_version)"),
        ('{"schema_version": 2, "scenarios": []}', "has schema_version 2; this ctxlab reads 1"),
        ('{"schema_version": 1, "scenarios": [{"name": "x"}]}', "malformed ctxlab report"),
        ("[1, 2]", "is not a ctxlab report"),
    ],
)
def test_diff_refuses_bad_files_with_one_line(tmp_path, content, message):
    path = tmp_path / "bad.json"
    path.write_text(content)
    code, out, err = ctxlab("diff", str(path))
    assert code == 2 and message in err and len(err.strip().splitlines()) == 1 and out == ""


def test_diff_of_a_missing_file(tmp_path):
    code, _, err = ctxlab("diff", str(tmp_path / "nope.json"))
    assert code == 2 and "cannot read" in err and "No such file" in err


def test_check_passes_and_writes_junit(tmp_path):
    target = tmp_path / "junit.xml"
    code, out, _ = ctxlab("check", "--junit", str(target))
    assert code == 0 and "PASS" in out
    suite = ET.parse(target).getroot().find("testsuite")
    cases = suite.findall("testcase")
    assert int(suite.get("tests")) == len(cases) >= 30
    assert int(suite.get("skipped")) == len([c for c in cases if c.find("skipped") is not None])
    assert suite.get("failures") == suite.get("errors") == "0"


def test_check_reports_drift_as_junit_failures_and_github_annotations(tmp_path):
    target = tmp_path / "junit.xml"
    env = {**PROPAGATING, "GITHUB_ACTIONS": "true"}
    code, out, _ = ctxlab("check", "--junit", str(target), env=env)
    assert code == 1
    suite = ET.parse(target).getroot().find("testsuite")
    failed = {c.get("name"): c.find("failure") for c in suite.findall("testcase") if c.find("failure") is not None}
    assert int(suite.get("failures")) == len(failed) and "bad-only" in failed
    assert 'bad.after context: expected null, observed {"random_int": 42}' in failed["bad-only"].text
    annotations = [line for line in out.splitlines() if line.startswith("::error ")]
    assert (
        '::error title=ctxlab drift: bad-only (asgi)::request 1: bad.after context: expected null, observed {"random_int": 42}'
        in annotations
    )


INJECTING = """
from ctxlab.scenario import scenario


@scenario("injects", summary="s", expect={})
def build():
    raise RuntimeError("first line\\n::add-mask::secret")
"""


def test_check_on_github_keeps_an_app_s_text_from_issuing_workflow_commands(tmp_path):
    """An error's text is printed as it is; on GitHub a line of it starting
    "::" would be a workflow command.  Commands are stopped (GitHub's
    `::stop-commands::TOKEN`) until ctxlab's own annotations."""
    (tmp_path / "injects.py").write_text(INJECTING)
    code, out, _ = ctxlab("check", "--server", "asgi", "--scenarios", str(tmp_path), env={"GITHUB_ACTIONS": "true"})
    lines = out.splitlines()
    token = lines[0].removeprefix("::stop-commands::")
    assert code == 3 and re.fullmatch(r"[0-9a-f]{32}", token), out
    resumed = lines.index(f"::{token}::")
    assert lines.index("::add-mask::secret") < resumed, out
    (error,) = [n for n, line in enumerate(lines) if line.startswith("::error title=ctxlab error: injects")]
    assert resumed < error and "%0A::add-mask::secret" in lines[error]


def test_check_with_a_baseline_fails_on_changes(snapshot):
    code, out, _ = ctxlab("check", "--baseline", str(snapshot))
    assert code == 0 and "no changes" in out
    code, out, _ = ctxlab("check", "--baseline", str(snapshot), "--server", "both", env=PROPAGATING)
    assert code == 1 and "change(s)" in out


def test_check_refuses_a_bad_baseline(tmp_path):
    (tmp_path / "b.json").write_text("garbage")
    code, _, err = ctxlab("check", "--baseline", str(tmp_path / "b.json"))
    assert code == 2 and "is not JSON" in err


@pytest.mark.parametrize("text", ["", "starlette==1==2", "not a requirement!"])
def test_matrix_refuses_bad_columns(text):
    code, _, err = ctxlab("matrix", "--with", text, "--with", "starlette")
    assert code == 2 and len(err.strip().splitlines()) == 1


def test_matrix_needs_two_columns():
    code, _, err = ctxlab("matrix", "--with", "starlette")
    assert code == 2 and "at least two" in err


def test_matrix_says_when_a_python_is_not_available():
    code, _, err = ctxlab("matrix", "--with", "python==3.99 starlette", "--with", "starlette")
    assert code == 2 and "no Python==3.99 here" in err and len(err.strip().splitlines()) == 1


def test_matrix_column_may_choose_the_python_and_how_to_serve():
    column = matrix.parse_column("python==3.12 starlette==0.41.3 server=hypercorn loop=uvloop http=httptools")
    assert column.python == "==3.12" and column.requirements == ["starlette==0.41.3"]
    assert column.options == {"server": "hypercorn", "loop": "uvloop", "http": "httptools"}
    assert column.packages() == ["starlette==0.41.3", "hypercorn", "uvloop", "httptools"]


def test_matrix_rows_line_up_when_columns_serve_differently():
    on_both = {
        "server": "both",
        "scenarios": [{"name": "a", "server": s, "status": "pass", "observations": []} for s in ("asgi", "uvicorn")],
    }
    on_hypercorn = {"server": "hypercorn", "scenarios": [{"name": "a", "status": "pass", "observations": []}]}
    columns = [
        matrix.Column("both", [], report=on_both),
        matrix.Column("server=hypercorn", [], options={"server": "hypercorn"}, report=on_hypercorn),
    ]
    rows = {
        (row["name"], row["server"]): [cell["status"] for cell in row["cells"]]
        for row in matrix.grid(columns)["scenarios"]
    }
    assert rows == {("a", "asgi"): ["pass", None], ("a", "server"): ["pass", "pass"]}


def test_matrix_refuses_an_unknown_serving_choice():
    code, _, err = ctxlab("matrix", "--with", "loop=trio", "--with", "starlette")
    assert code == 2 and "loop is one of asyncio, uvloop" in err


@pytest.mark.parametrize(
    "text, pinned",
    [
        ("starlette==0.41.3", True),
        ("starlette===0.41.3", True),
        ("python==3.12 starlette==0.41.3 uvicorn==0.44.0 server=hypercorn", True),
        ("starlette", False),
        ("starlette>=0.41", False),
        ("starlette~=0.41.3", False),
        ("starlette>=0.41,<0.42", False),
        ("starlette==0.41.3 uvicorn", False),
    ],
)
def test_matrix_column_is_pinned_when_every_requirement_names_one_version(text, pinned):
    """Only a pinned column's environment is reused as it is; the others
    look for newer releases each time."""
    assert matrix.parse_column(text).pinned is pinned


def test_matrix_refuses_a_bad_requirement_with_packagings_own_reason():
    from packaging.requirements import InvalidRequirement, Requirement

    with pytest.raises(InvalidRequirement) as raised:
        Requirement("starlette==1==2")
    reason = str(raised.value).splitlines()[0]
    code, _, err = ctxlab("matrix", "--with", "starlette==1==2", "--with", "starlette")
    assert code == 2 and err.strip() == f"ctxlab: error: bad requirement 'starlette==1==2' in --with: {reason}"


def test_matrix_a_requirement_named_like_a_serving_option_is_a_requirement():
    column = matrix.parse_column("server==1.0 http>=2 loop starlette server=asgi")
    assert column.requirements == ["server==1.0", "http>=2", "loop", "starlette"]
    assert column.options == {"server": "asgi"}


def _version_of(python: str) -> str:
    done = subprocess.run(
        [python, "-c", "import platform; print(platform.python_version())"], capture_output=True, text=True
    )
    return done.stdout.strip()


def _pythons() -> dict[str, str]:
    """The Pythons this machine has (pyenv's, pythonX.Y on PATH): version -> executable."""
    import shutil

    pyenv = Path(os.environ.get("PYENV_ROOT", Path.home() / ".pyenv")) / "versions"
    found = [sys.executable, *map(str, pyenv.glob("*/bin/python"))]
    found += [shutil.which(f"python3.{minor}") for minor in range(0, 30)]
    versions = {_version_of(python): python for python in filter(None, found)}
    return {version: python for version, python in versions.items() if re.fullmatch(r"3\.\d+\.\d+", version)}


def test_matrix_column_runs_on_the_python_it_names():
    """`python==3.X` is any 3.X, the newest here; a full version is that one;
    a range too; no python: this one."""
    here = _pythons()
    minor = ".".join(map(str, sys.version_info[:2]))
    newest = max((v for v in here if v.startswith(f"{minor}.")), key=lambda v: int(v.split(".")[2]))
    assert _version_of(matrix.python_for(matrix.parse_column(f"python=={minor} starlette"))) == newest
    for version in here:
        if int(version.split(".")[1]) >= 10:
            assert _version_of(matrix.python_for(matrix.parse_column(f"python=={version}"))) == version
    ranged = matrix.python_for(matrix.parse_column(f"python>={minor},<3.{sys.version_info[1] + 1}"))
    assert _version_of(ranged).startswith(f"{minor}.")
    assert matrix.python_for(matrix.parse_column("starlette")) == sys.executable


def test_matrix_finds_pythons_on_path_from_3_10_to_3_19(tmp_path, monkeypatch):
    """Without pyenv, `python3.X` on PATH for X from 10 to 19; one that
    does not run is not a Python; 3.9 and older are not looked for."""
    here = {
        v: python for v, python in _pythons().items() if os.path.realpath(python) != os.path.realpath(sys.executable)
    }
    by_minor = {int(version.split(".")[1]): version for version in sorted(here, key=lambda v: int(v.split(".")[2]))}
    if 10 not in by_minor or 9 not in by_minor:
        pytest.skip("needs a Python 3.10 and a 3.9 besides this one")
    (tmp_path / "python3.10").symlink_to(here[by_minor[10]])
    (tmp_path / "python3.9").symlink_to(here[by_minor[9]])
    (tmp_path / "python3.19").write_text("#!/bin/sh\necho 3.19.0\n")
    (tmp_path / "python3.18").write_text("#!/bin/sh\nexit 1\n")
    for script in ("python3.19", "python3.18"):
        (tmp_path / script).chmod(0o755)
    monkeypatch.setenv("PATH", str(tmp_path))
    monkeypatch.setenv("PYENV_ROOT", str(tmp_path / "no-pyenv"))
    for minor, version in [("3.10", by_minor[10]), ("3.19", "3.19.0")]:
        assert matrix.python_for(matrix.parse_column(f"python=={minor}")) == str(tmp_path / f"python{minor}")
        assert _version_of(str(tmp_path / f"python{minor}")) == version
    for missing in ("3.18", "3.9"):
        with pytest.raises(MatrixError) as refused:
            matrix.python_for(matrix.parse_column(f"python=={missing}"))
        assert str(refused.value).startswith(f"no Python=={missing} here: looked at")


def test_matrix_without_pyenv_or_pythons_on_path_has_this_python(tmp_path, monkeypatch):
    """With no pyenv and nothing on PATH, this Python is the only one, by its
    full version; and a pyenv version whose name is no version at all (a
    virtualenv, `system`) is found only by that name, and is no 3.10+."""
    monkeypatch.setenv("PATH", str(tmp_path / "empty"))
    monkeypatch.setenv("PYENV_ROOT", str(tmp_path))
    version = platform.python_version()
    assert matrix.python_for(matrix.parse_column(f"python=={version}")) == sys.executable
    (tmp_path / "versions" / "my-env" / "bin").mkdir(parents=True)
    (tmp_path / "versions" / "my-env" / "bin" / "python").symlink_to(sys.executable)
    with pytest.raises(MatrixError) as refused:
        matrix.python_for(matrix.parse_column("python===my-env"))
    assert "(only my-env: ctxlab needs 3.10 or newer)" in str(refused.value)


def test_matrix_of_three_columns_is_checked_like_one_of_two():
    """Three columns are as good as two: the first refusal is the missing
    Python's, not a count of columns."""
    code, _, err = ctxlab("matrix", "--with", "python==3.99 starlette", "--with", "starlette", "--with", "uvicorn")
    assert code == 2 and "no Python==3.99 here" in err and "two --with" not in err


def test_matrix_refuses_a_python_older_than_ctxlab_supports():
    old = sorted((v for v in _pythons() if int(v.split(".")[1]) < 10), key=lambda v: int(v.split(".")[1]))
    if not old:
        pytest.skip("no Python older than 3.10 on this machine")
    minor = ".".join(old[-1].split(".")[:2])
    code, _, err = ctxlab("matrix", "--with", f"python=={minor} starlette", "--with", "starlette")
    assert code == 2 and len(err.strip().splitlines()) == 1
    assert f"no Python=={minor} here (only {old[-1]}: ctxlab needs 3.10 or newer)" in err


@pytest.mark.parametrize(
    "output, reason",
    [
        (
            "  \u00d7 No solution found when resolving dependencies:\n"
            "  \u2570\u2500\u25b6 Because there is no version of uvicorn==0.0.1 and you require uvicorn==0.0.1,\n"
            "      we can conclude that your requirements are unsatisfiable.\n\n"
            "      hint: Pre-releases are available for uvicorn\n",
            "No solution found when resolving dependencies: Because there is no version of uvicorn==0.0.1 and you "
            "require uvicorn==0.0.1, we can conclude that your requirements are unsatisfiable.",
        ),
        (
            "WARNING: Location 'x' is ignored\nERROR: Could not find a version\nERROR: No matching distribution\n"
            "[notice] A new release of pip is available\n",
            "ERROR: Could not find a version ERROR: No matching distribution",
        ),
        ("WARNING: only a warning\n\n", "no reason given"),
        ("x" * 600, "x" * 600),
        ("x" * 601, "x" * 597 + "..."),
    ],
)
def test_matrix_tells_an_installers_reason_on_one_line(output, reason):
    assert matrix.explanation(output) == reason


def _report(server, *scenarios):
    """A report as `run --json` prints it: (name, status, observed) per scenario."""
    return {
        "server": server,
        "environment": {"python": server},
        "scenarios": [
            {
                "name": name,
                "status": status,
                "observations": [{"request": 1, "probe": "p", "var": "v", "observed": value}],
            }
            for name, status, value in scenarios
        ],
    }


def test_matrix_grid_marks_changes_against_the_previous_column_only():
    columns = [
        matrix.Column("one", [], report=_report("asgi", ("a", "pass", 1), ("b", "pass", 1))),
        matrix.Column("two", [], report=_report("asgi", ("a", "pass", 2), ("b", "pass", 1))),
        matrix.Column("three", [], report=_report("asgi", ("a", "pass", 2), ("b", "drift", 3))),
    ]
    result = matrix.grid(columns)
    cells = {row["name"]: [(c["status"], c["changed"]) for c in row["cells"]] for row in result["scenarios"]}
    assert cells == {
        "a": [("pass", False), ("pass", True), ("pass", False)],
        "b": [("pass", False), ("pass", False), ("drift", True)],
    }
    assert [(c["scenario"], c["previous"], c["column"]) for c in result["changes"]] == [
        ("a", "one", "two"),
        ("b", "two", "three"),
        ("b", "two", "three"),
    ]
    assert [c["environment"] for c in result["columns"]] == [{"python": "asgi"}] * 3
    assert result["schema_version"] == 1  # DESIGN.md's matrix document
    assert matrix.exit_code(result) == 1


def test_matrix_grid_a_failed_column_is_an_error_in_every_row_and_compared_with_nothing():
    columns = [
        matrix.Column("one", [], report=_report("uvicorn", ("a", "pass", 1), ("b", "pass", 1))),
        matrix.Column("broken", [], error="cannot build the environment for broken: no such version"),
        matrix.Column("three", [], report=_report("uvicorn", ("a", "pass", 2), ("b", "pass", 1))),
    ]
    result = matrix.grid(columns)
    rows = {(row["name"], row["server"]): [c["status"] for c in row["cells"]] for row in result["scenarios"]}
    assert rows == {("a", "uvicorn"): ["pass", "error", "pass"], ("b", "uvicorn"): ["pass", "error", "pass"]}
    assert result["changes"] == []
    assert [c["error"] for c in result["columns"]] == [None, columns[1].error, None]
    assert matrix.exit_code(result) == 1


def test_matrix_exits_1_when_no_column_ran():
    columns = [matrix.Column(label, [], error=f"cannot build the environment for {label}: no") for label in "ab"]
    result = matrix.grid(columns)
    assert result["scenarios"] == [] and matrix.exit_code(result) == 1


def test_matrix_shim_left_pointing_elsewhere_is_pointed_back(tmp_path, monkeypatch):
    """The link to this checkout's ctxlab is made again when it is gone or
    leads elsewhere (a dangling link, a file in its place)."""
    monkeypatch.setenv("CTXLAB_CACHE", str(tmp_path))
    package = Path(matrix.__file__).resolve().parent
    link = matrix._shim() / "ctxlab"
    assert link.resolve() == package
    for stale in ("dangling", "elsewhere", "a file"):
        link.unlink()
        if stale == "a file":
            link.write_text("")
        else:
            (tmp_path / "elsewhere").mkdir(exist_ok=True)
            link.symlink_to(tmp_path / stale)
        assert matrix._shim() / "ctxlab" == link and link.resolve() == package


@pytest.mark.parametrize(
    "statuses, code",
    [
        (("pass", "pass"), 0),
        (("skipped", "pass"), 0),
        (("pass", "drift"), 1),
        (("error", "pass"), 1),
    ],
)
def test_matrix_exits_1_when_any_cell_drifts_or_errors(statuses, code):
    columns = [matrix.Column(str(i), [], report=_report("asgi", ("a", status, 1))) for i, status in enumerate(statuses)]
    assert matrix.exit_code(matrix.grid(columns)) == code


def test_matrix_rows_keep_their_server_when_columns_serve_with_one_real_server():
    both = _report("both", ("a", "pass", 1))
    both["scenarios"] += [{**both["scenarios"][0], "server": "asgi"}]
    both["scenarios"][0]["server"] = "uvicorn"
    columns = [
        matrix.Column("both", [], report=both),
        matrix.Column("uvicorn", [], report=_report("uvicorn", ("a", "pass", 1))),
    ]
    rows = {
        (row["name"], row["server"]): [c["status"] for c in row["cells"]] for row in matrix.grid(columns)["scenarios"]
    }
    assert rows == {("a", "uvicorn"): ["pass", "pass"], ("a", "asgi"): ["pass", None]}


UVICORN_044 = "uvicorn==0.44.0"


@pytest.fixture(scope="module")
def uvicorn_044_env():
    """A real environment with uvicorn 0.44, the last release with fresh contexts."""
    return matrix.environment(matrix.parse_column(UVICORN_044), progress=lambda line: None)


def test_snapshot_from_uvicorn_044_diffed_on_this_uvicorn(uvicorn_044_env, tmp_path):
    path = tmp_path / "old.json"
    done = subprocess.run(
        [str(uvicorn_044_env / "bin" / "python"), "-m", "ctxlab", "snapshot", "-o", str(path), "--server", "uvicorn"],
        capture_output=True, text=True, env={**os.environ, "PYTHONPATH": str(matrix._shim())},
    )  # fmt: skip
    assert done.returncode == 0, done.stderr
    assert json.loads(path.read_text())["environment"]["packages"]["uvicorn"] == "0.44.0"
    code, document, _ = ctxlab_json("diff", str(path))
    from ctxlab.scenario import Env

    if Env("uvicorn", None, None).has("uvicorn", ">=0.39,<0.45"):
        assert code == 0  # no leak on either side
    else:
        assert code == 1
        assert "keepalive-large-body-leak" in {c["scenario"] for c in document["changes"]}
        assert document["before"]["packages"]["uvicorn"] == "0.44.0"


def test_matrix_grid_over_two_uvicorn_versions(uvicorn_044_env):
    code, result, err = ctxlab_json("matrix", "--with", UVICORN_044, "--with", "uvicorn==0.45.0", "--server", "uvicorn")
    assert code == 0, err
    assert [c["label"] for c in result["columns"]] == [UVICORN_044, "uvicorn==0.45.0"]
    cells = {row["name"]: row["cells"] for row in result["scenarios"]}
    # The pipelined leak comes back in 0.45 on every Python; the body leak
    # too, except on 3.15, whose asyncio no longer leaks it.
    assert cells["pipelined-leak"][1]["changed"] and not cells["bad-only"][1]["changed"]
    first = {(c["scenario"], c["column"]) for c in result["changes"]}
    assert ("pipelined-leak", "uvicorn==0.45.0") in first
    assert (("keepalive-large-body-leak", "uvicorn==0.45.0") in first) == (sys.version_info < (3, 15))


def _installed(env: Path, package: str) -> str:
    """The version of `package` in the virtualenv `env`, as it reports it."""
    show = f"import importlib.metadata; print(importlib.metadata.version({package!r}))"
    return subprocess.run([str(env / "bin" / "python"), "-c", show], capture_output=True, text=True).stdout.strip()


def test_matrix_an_unpinned_column_follows_new_releases(tmp_path, monkeypatch):
    """A column that names no version gets the newest release each time its
    environment is reused: here one built when uvicorn 0.44 was the newest
    (put back by this Python's pip: the environment has none when uv built it)."""
    monkeypatch.setenv("CTXLAB_CACHE", str(tmp_path))
    column = matrix.parse_column("uvicorn")
    env = matrix.environment(column, progress=lambda line: None)
    pip = [sys.executable, "-m", "pip", "--disable-pip-version-check"]
    done = subprocess.run(
        [*pip, "--python", str(env / "bin" / "python"), "install", "--quiet", "uvicorn==0.44.0"],
        capture_output=True,
        text=True,
    )
    assert done.returncode == 0 and _installed(env, "uvicorn") == "0.44.0", done.stderr
    index = subprocess.run([*pip, "index", "versions", "uvicorn"], capture_output=True, text=True)
    newest = re.search(r"^uvicorn \((.+)\)$", index.stdout, re.MULTILINE).group(1)
    assert newest != "0.44.0"
    assert matrix.environment(column, progress=lambda line: None) == env
    assert _installed(env, "uvicorn") == newest


def test_matrix_two_runs_building_one_environment_at_once_share_it(tmp_path):
    """Two matrices that build the same column at the same time: each builds
    beside the cache, the second finds the first's in place, and both use it."""
    build = "from ctxlab import matrix; print(matrix.environment(matrix.parse_column('uvicorn==0.44.0'), print))"
    env = {**os.environ, "CTXLAB_CACHE": str(tmp_path)}
    running = [
        subprocess.Popen(
            [sys.executable, "-c", build], env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True
        )
        for _ in range(2)
    ]
    done = [(process.communicate(timeout=600), process.returncode) for process in running]
    assert [code for _, code in done] == [0, 0], done
    printed = [out.splitlines() for (out, _), _ in done]
    assert [lines[0] for lines in printed] == ["building an environment for uvicorn==0.44.0 ..."] * 2
    built = list((tmp_path / "envs").iterdir())
    assert [Path(lines[-1]) for lines in printed] == built * 2
    assert _installed(built[0], "uvicorn") == "0.44.0"


def test_matrix_columns_on_two_pythons_get_an_environment_each(tmp_path, monkeypatch):
    """The same requirements on two Pythons: two environments, each of its
    own Python (as that Python says)."""
    minors = sorted(
        {".".join(v.split(".")[:2]) for v in _pythons() if int(v.split(".")[1]) >= 10},
        key=lambda m: int(m.split(".")[1]),
    )
    others = [minor for minor in minors if minor != ".".join(map(str, sys.version_info[:2]))][-2:]
    if len(others) < 2:
        pytest.skip("needs two Pythons besides this one")
    monkeypatch.setenv("CTXLAB_CACHE", str(tmp_path))
    envs = [
        matrix.environment(matrix.parse_column(f"python=={minor} uvicorn==0.44.0"), lambda line: None)
        for minor in others
    ]
    assert [_version_of(str(env / "bin" / "python")).rsplit(".", 1)[0] for env in envs] == others


def test_matrix_builds_with_uv_when_uv_is_on_path(tmp_path, monkeypatch):
    """uv on PATH, as on many machines: the column's environment is made
    and filled by uv (its pyvenv.cfg names uv; pip's names none), with the
    column's version installed."""
    uv = shutil.which("uv", path=str(Path(sys.executable).parent)) or shutil.which("uv")
    if uv is None:
        pytest.skip("no uv (the [test] extra installs it)")
    on_path = tmp_path / "bin"
    on_path.mkdir()
    (on_path / "uv").symlink_to(uv)
    monkeypatch.setenv("PATH", f"{on_path}{os.pathsep}{os.environ.get('PATH', '')}")
    monkeypatch.setenv("CTXLAB_CACHE", str(tmp_path / "cache"))
    env = matrix.environment(matrix.parse_column("uvicorn==0.44.0"), lambda line: None)
    assert re.search(r"^uv = ", (env / "pyvenv.cfg").read_text(), re.MULTILINE)
    show = "from importlib.metadata import version; print(version('uvicorn'))"
    done = subprocess.run([str(env / "bin" / "python"), "-c", show], capture_output=True, text=True)
    assert done.stdout.strip() == "0.44.0", done.stderr


def test_diff_reports_a_skipped_scenario_by_its_status_alone():
    from ctxlab.report import diff

    ran = {"name": "s", "status": "pass", "observations": [{"request": 1, "probe": "p", "var": "v", "observed": 1}]}
    skipped = {"name": "s", "status": "skipped", "observations": []}
    changes = diff({"scenarios": [skipped]}, {"scenarios": [ran]})
    assert [(c.probe, c.var, c.before, c.after) for c in changes] == [("-", "status", "skipped", "pass")]


def test_matrix_takes_the_first_release_of_3_10(tmp_path, monkeypatch):
    """A pyenv Python 3.10.0 is new enough (ctxlab supports 3.10 on): a
    column asking for 3.10 runs on it."""
    from ctxlab import matrix

    bin_dir = tmp_path / "versions" / "3.10.0" / "bin"
    bin_dir.mkdir(parents=True)
    (bin_dir / "python").symlink_to(sys.executable)
    monkeypatch.setenv("PYENV_ROOT", str(tmp_path))
    monkeypatch.setenv("PATH", str(tmp_path / "empty"))  # no python3.X on PATH
    assert matrix.python_for(matrix.parse_column("python==3.10.0 starlette")) == str(bin_dir / "python")


def test_matrix_makes_a_cache_whose_parents_do_not_exist_yet(tmp_path, monkeypatch):
    from ctxlab import matrix

    monkeypatch.setenv("CTXLAB_CACHE", str(tmp_path / "new" / "cache"))
    matrix.check_cache()
    assert (tmp_path / "new" / "cache" / "envs").is_dir()
