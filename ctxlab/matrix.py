"""The same scenarios across framework versions, one throwaway env per column.

Each column is a set of requirements (`starlette==0.41.3 uvicorn==0.44.0`).
Its environment holds ctxlab's dependencies at whatever versions those
requirements allow; ctxlab itself is not installed there but put on
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
import subprocess
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import ctxlab
from ctxlab.errors import MatrixError

DEPENDENCIES = ["typer", "rich", "packaging", "starlette", "fastapi", "httpx", "uvicorn", "anyio"]


def cache_dir() -> Path:
    base = os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache"
    return Path(os.environ.get("CTXLAB_CACHE", Path(base) / "ctxlab"))


@dataclass
class Column:
    label: str
    requirements: list[str]
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


def parse_column(text: str) -> Column:
    from packaging.requirements import InvalidRequirement, Requirement

    requirements = text.split()
    if not requirements:
        raise MatrixError("--with needs at least one requirement, such as 'starlette==0.41.3'")
    for requirement in requirements:
        try:
            Requirement(requirement)
        except InvalidRequirement as exc:
            reason = str(exc).splitlines()[0]  # packaging adds a caret diagram below
            raise MatrixError(f"bad requirement {requirement!r} in --with: {reason}") from None
    return Column(" ".join(requirements), requirements)


def _run(command: list[str], what: str) -> None:
    done = subprocess.run(command, capture_output=True, text=True)
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


def environment(column: Column, progress=print) -> Path:
    """The column's virtualenv, built once and reused."""
    python = sys.executable
    key = json.dumps([sys.version, sorted(column.requirements), DEPENDENCIES])
    path = cache_dir() / "envs" / hashlib.sha256(key.encode()).hexdigest()[:16]
    if (path / ".ready").exists():
        if not column.pinned:
            progress(f"checking {column.label} for newer releases ...")
            _run([*_installer(path), "--upgrade", *DEPENDENCIES, *column.requirements], column.label)
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
        _run([*_installer(building), *DEPENDENCIES, *column.requirements], column.label)
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
    """Build the column's environment and run every scenario there: the
    column's report, or its error."""
    try:
        env = environment(column, progress)
    except MatrixError as exc:
        column.error = str(exc)
        return
    command = [str(env / "bin" / "python"), "-m", "ctxlab", "run", "--all", "--json", "--server", server, *extra]
    done = subprocess.run(command, capture_output=True, text=True, env={**os.environ, "PYTHONPATH": str(_shim())})
    try:
        column.report = json.loads(done.stdout) if done.returncode in (0, 1, 3) else {}
    except json.JSONDecodeError:
        column.report = {}
    if not isinstance(column.report, dict) or not isinstance(column.report.get("scenarios"), list):
        last = done.stderr.strip().splitlines()[-1:] or [f"exit status {done.returncode}"]
        column.report, column.error = {}, f"ctxlab printed no report under {column.label}: {last[0]}"


def grid(columns: list[Column]) -> dict[str, Any]:
    """Scenario x column: status per cell, `changed` where the observations
    differ from the previous column, and each change with where it appears."""
    from ctxlab.report import diff, runs

    ran = [runs(column.report) if column.report else {} for column in columns]
    keys = list(dict.fromkeys(key for column in ran for key in column))
    # A column that did not run is an error in every row; a scenario one
    # column does not know (another ctxlab version) is missing there.
    rows = {
        key: [
            {"status": "error" if column.error else column_runs[key]["status"] if key in column_runs else "missing",
             "changed": False}
            for column, column_runs in zip(columns, ran)
        ]
        for key in keys
    }  # fmt: skip
    changes = []
    for previous, column in zip(columns, columns[1:]):
        if previous.error or column.error:
            continue
        for change in diff(previous.report, column.report):
            changes.append({"column": column.label, "previous": previous.label, **vars(change)})
            cells = rows.get((change.scenario, change.server))
            if cells is not None:
                cells[columns.index(column)]["changed"] = True
    return {
        "schema_version": 1,
        "columns": [{"label": c.label, "environment": c.report.get("environment", {}), "error": c.error} for c in columns],
        "scenarios": [{"name": name, "server": server, "cells": cells} for (name, server), cells in rows.items()],
        "changes": changes,
    }


def exit_code(result: dict[str, Any]) -> int:
    """1 when any column failed or any cell drifted or errored, else 0."""
    failed = any(c["error"] for c in result["columns"]) or any(
        cell["status"] in ("drift", "error") for row in result["scenarios"] for cell in row["cells"]
    )
    return 1 if failed else 0
