"""The same scenarios across framework versions, one throwaway env per column.

Each column is a set of requirements (`starlette==0.41.3 uvicorn==0.44.0`),
optionally the Python to use (`python==3.12`) and how to serve
(`server=hypercorn`, `loop=uvloop`, `http=httptools`).  Its environment
holds ctxlab's dependencies at whatever versions those requirements allow; ctxlab itself is not installed there but put on
PYTHONPATH through a directory holding only a link to this package, so the
column's framework versions are the only ones it can import.
Environments hold no ctxlab code, so they are cached by content and shared;
the link to ctxlab is per checkout, so two checkouts running matrix at once
never run each other's code.  A column with an unpinned requirement is
upgraded each time it is reused, so it follows new releases.

A column that cannot be built or run is an error cell with the reason; the
other columns still run (`ctxlab matrix` gates CI: any error or drift is
exit 1).
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import signal
import subprocess
import sys
import tempfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import ctxlab
from ctxlab.errors import MatrixError
from ctxlab.index import cache_dir

DEPENDENCIES = ["typer", "rich", "packaging", "starlette", "fastapi", "httpx", "uvicorn", "anyio"]


# What a column may set besides requirements, and the package each choice needs.
SERVE_OPTIONS = {
    "server": {"asgi": None, "uvicorn": None, "both": None, "hypercorn": "hypercorn", "granian": "granian"},
    "loop": {"asyncio": None, "uvloop": "uvloop"},
    "http": {"h11": None, "httptools": "httptools"},
}


@dataclass
class Column:
    label: str
    requirements: list[str]
    python: str | None = None  # a version specifier such as "==3.12"; None: this Python
    options: dict[str, str] = field(default_factory=dict)  # server, loop, http
    report: dict[str, Any] = field(default_factory=dict)
    error: str | None = None  # why the column has no report

    @property
    def pinned(self) -> bool:
        """Every requirement names one exact version."""
        from packaging.requirements import Requirement

        return all(
            len(spec := Requirement(text).specifier) == 1 and next(iter(spec)).operator in ("==", "===")
            for text in self.requirements
        )

    def packages(self) -> list[str]:
        """What the column's environment needs besides ctxlab's dependencies."""
        needed = [SERVE_OPTIONS[option][value] for option, value in self.options.items()]
        return [*self.requirements, *filter(None, needed)]


def parse_column(text: str) -> Column:
    from packaging.requirements import InvalidRequirement, Requirement

    tokens = text.split()
    if not tokens:
        raise MatrixError("--with needs at least one requirement, such as 'starlette==0.41.3'")
    column = Column(" ".join(tokens), [])
    for token in tokens:
        option, equals, value = token.partition("=")
        if option in SERVE_OPTIONS and equals and not value.startswith("="):
            if value not in SERVE_OPTIONS[option]:
                raise MatrixError(f"bad {token!r} in --with: {option} is one of {', '.join(SERVE_OPTIONS[option])}")
            column.options[option] = value
            continue
        try:
            requirement = Requirement(token)
        except InvalidRequirement as exc:
            reason = str(exc).splitlines()[0]  # packaging adds a caret diagram below
            raise MatrixError(f"bad requirement {token!r} in --with: {reason}") from None
        if requirement.name == "python":
            column.python = str(requirement.specifier)
        else:
            column.requirements.append(token)
    return column


def _python_matches(version: str, specifier: str) -> bool:
    from packaging.specifiers import SpecifierSet

    # "python==3.12" means any 3.12, as people write it, not 3.12.0.
    spec = SpecifierSet(
        ",".join(f"{s}.*" if s.startswith("==") and s.count(".") == 1 else s for s in specifier.split(","))
    )
    return spec.contains(version)


def _interpreters() -> dict[str, str]:
    """Pythons this machine has: version -> executable (this one, pyenv's,
    and pythonX.Y on PATH)."""
    found = {".".join(map(str, sys.version_info[:3])): sys.executable}
    pyenv = Path(os.environ.get("PYENV_ROOT", Path.home() / ".pyenv")) / "versions"
    for executable in sorted(pyenv.glob("*/bin/python")):
        found.setdefault(executable.parent.parent.name, str(executable))
    for minor in range(10, 20):
        executable = shutil.which(f"python3.{minor}")
        if executable:
            done = subprocess.run([executable, "-c", "import platform; print(platform.python_version())"],
                                  capture_output=True, text=True)  # fmt: skip
            if done.returncode == 0:
                found.setdefault(done.stdout.strip(), executable)
    return found


def python_for(column: Column) -> str:
    """The executable that runs the column: the newest Python here that its
    `python` specifier allows, or this one."""
    if column.python is None:
        return sys.executable
    from packaging.version import InvalidVersion, Version

    def version_key(version: str):
        try:
            return Version(version)
        except InvalidVersion:
            return Version("0")

    interpreters = _interpreters()
    matching = [version for version in interpreters if _python_matches(version, column.python)]
    supported = [version for version in matching if version_key(version) >= Version("3.10")]
    if not supported:
        found = f" (only {', '.join(sorted(matching))}: ctxlab needs 3.10 or newer)" if matching else ""
        raise MatrixError(
            f"no Python{column.python} here{found}: looked at this Python, pyenv's and python3.X on PATH; "
            f"install one (pyenv install, uv python install) or drop python{column.python} from --with"
        )
    return interpreters[max(supported, key=version_key)]


def _captured(command: list[str], env: dict[str, str] | None = None) -> subprocess.CompletedProcess:
    """subprocess.run(command, capture_output=True, text=True), with the
    child in a process group of its own that is killed whole if ctxlab is
    interrupted: subprocess.run kills only the child, and the processes it
    started (ensurepip under venv, uv's builds) would go on writing into an
    environment already deleted."""
    # os.setpgrp, not a new session: the processes stay in ctxlab's session,
    # where a terminal's hangup, or a test looking for leftovers, finds them.
    with subprocess.Popen(
        command, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env, preexec_fn=os.setpgrp
    ) as process:
        try:
            out, err = process.communicate()
        except BaseException:
            os.killpg(process.pid, signal.SIGKILL)
            raise
    return subprocess.CompletedProcess(command, process.returncode, out, err)


def _run(command: list[str], what: str) -> None:
    done = _captured(command)
    if done.returncode != 0:
        raise MatrixError(f"cannot build the environment for {what}: {explanation(done.stderr or done.stdout)}")


def explanation(output: str) -> str:
    """An installer's whole reason on one line: uv's resolver explains over
    several lines below "No solution found", pip's over several ERROR lines."""
    lines = []
    for line in output.splitlines():
        text = line.strip(" ×╰─▶│\t").strip()
        if text and not text.lower().startswith(("warning", "[notice]", "hint")):
            lines.append(text)
    reason = " ".join(lines) or "no reason given"
    return reason if len(reason) <= 600 else reason[:597] + "..."


def check_cache() -> None:
    """Refuse a cache where no environment can be built, before any build
    (each column would fail on its own, after minutes)."""
    envs = cache_dir() / "envs"
    try:
        envs.mkdir(parents=True, exist_ok=True)
        tempfile.TemporaryFile(dir=envs).close()
    except OSError as exc:
        raise MatrixError(
            f"cannot build environments in {envs}: {exc.strerror or exc}; set CTXLAB_CACHE to a writable directory"
        ) from None


def environment(column: Column, progress=print) -> Path:
    """The column's virtualenv, built once and reused."""
    python = python_for(column)
    # This Python is keyed by its version, as before columns could choose one.
    key = json.dumps([sys.version if python == sys.executable else python, sorted(column.packages()), DEPENDENCIES])
    path = cache_dir() / "envs" / hashlib.sha256(key.encode()).hexdigest()[:16]
    if (path / ".ready").exists():
        if not column.pinned:
            progress(f"checking {column.label} for newer releases ...")
            _run([*_installer(path), "--upgrade", *DEPENDENCIES, *column.packages()], column.label)
        return path
    # Built beside its final place and renamed into it, so that a matrix
    # running at the same time never sees (or deletes) a half-built one.
    building = path.with_name(f"{path.name}.{os.getpid()}")
    progress(f"building an environment for {column.label} ...")
    try:
        if shutil.which("uv"):
            _run([shutil.which("uv"), "venv", "--quiet", "--python", python, str(building)], column.label)
        else:
            _run([python, "-m", "venv", str(building)], column.label)
        _run([*_installer(building), *DEPENDENCIES, *column.packages()], column.label)
        (building / ".ready").write_text(column.label)
        os.rename(building, path)
    except OSError as exc:
        if not (path / ".ready").exists():  # else another matrix just built it
            raise MatrixError(f"cannot build the environment for {column.label}: {exc}") from None
    finally:
        shutil.rmtree(building, ignore_errors=True)
    return path


def _installer(env: Path) -> list[str]:
    uv = shutil.which("uv")
    if uv:
        return [uv, "pip", "install", "--quiet", "--python", str(env / "bin" / "python")]
    return [str(env / "bin" / "python"), "-m", "pip", "install", "--quiet", "--disable-pip-version-check"]


def _shim() -> Path:
    """A directory whose only entry is a link to this ctxlab package, one
    per checkout."""
    target = Path(ctxlab.__file__).resolve().parent
    shim = cache_dir() / "shim" / hashlib.sha256(str(target).encode()).hexdigest()[:16]
    link = shim / "ctxlab"
    if not (link.is_symlink() and link.resolve() == target):
        shim.mkdir(parents=True, exist_ok=True)
        if link.is_symlink() or link.exists():
            link.unlink()
        link.symlink_to(target, target_is_directory=True)
    return shim


def run_column(column: Column, server: str, extra: list[str], progress=print) -> None:
    """Build the column's environment and run every scenario there (the
    column's own `server=` beats `server`): the column's report, or its error."""
    try:
        env = environment(column, progress)
    except MatrixError as exc:
        column.error = str(exc)
        return
    options = {"server": server, **column.options}
    serving = [arg for option, value in options.items() for arg in (f"--{option}", value)]
    command = [str(env / "bin" / "python"), "-m", "ctxlab", "run", "--all", "--json", *serving, *extra]
    done = _captured(command, env={**os.environ, "PYTHONPATH": str(_shim())})
    try:
        column.report = json.loads(done.stdout) if done.returncode in (0, 1, 3) else {}
    except json.JSONDecodeError:
        column.report = {}
    if not isinstance(column.report, dict) or not isinstance(column.report.get("scenarios"), list):
        last = done.stderr.strip().splitlines()[-1:] or [f"exit status {done.returncode}"]
        column.report, column.error = {}, f"ctxlab printed no report under {column.label}: {last[0]}"


def _aligned(columns: list[Column]) -> list[dict[str, Any]]:
    """The columns' reports, each run tagged with its server; where columns
    serve with different real servers (`server=`), each real server's run is
    tagged `server`, so that the rows line up by scenario across columns."""
    from ctxlab.report import runs

    ran = [runs(column.report) if column.report else {} for column in columns]  # {}: the column failed
    real = {server for column_runs in ran for _, server in column_runs if server != "asgi"}
    rename = (lambda server: server) if len(real) <= 1 else (lambda server: server if server == "asgi" else "server")
    return [
        {**c.report, "scenarios": [{**s, "server": rename(server)} for (_, server), s in column_runs.items()]}
        for c, column_runs in zip(columns, ran)
    ]


def grid(columns: list[Column]) -> dict[str, Any]:
    """Scenario x column: status per cell (null where the column did not run
    it), `changed` where the observations differ from the previous column,
    and each change with where it appears."""
    from ctxlab.report import diff, runs

    reports = _aligned(columns)
    # A column that did not run is an error in every row; a scenario a
    # column did not run (another server, another ctxlab version) is null.
    rows: dict[tuple[str, str], list[dict[str, Any]]] = {}
    for index, report in enumerate(reports):
        for key, scenario in runs(report).items():
            cells = rows.setdefault(key, [{"status": None, "changed": False} for _ in columns])
            cells[index]["status"] = scenario["status"]
    for index, column in enumerate(columns):
        if column.error:
            for cells in rows.values():
                cells[index]["status"] = "error"
    changes = []
    for index in range(1, len(columns)):
        previous, column = columns[index - 1], columns[index]
        if previous.error or column.error:
            continue
        for change in diff(reports[index - 1], reports[index]):
            changes.append({"column": column.label, "previous": previous.label, **vars(change)})
            if (change.scenario, change.server) in rows:
                rows[change.scenario, change.server][index]["changed"] = True
    return {
        "schema_version": 1,
        "columns": [
            {"label": c.label, "environment": c.report.get("environment", {}), "error": c.error} for c in columns
        ],
        "scenarios": [{"name": name, "server": server, "cells": cells} for (name, server), cells in rows.items()],
        "changes": changes,
    }


def exit_code(result: dict[str, Any]) -> int:
    """1 when any column failed or any cell drifted or errored, else 0."""
    failed = any(c["error"] for c in result["columns"]) or any(
        cell["status"] in ("drift", "error") for row in result["scenarios"] for cell in row["cells"]
    )
    return 1 if failed else 0
