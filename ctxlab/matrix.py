"""The same scenarios across framework versions, one throwaway env per column.

Each column is a set of requirements (`starlette==0.41.3 uvicorn==0.44.0`).
Its environment holds ctxlab's dependencies at whatever versions those
requirements allow; ctxlab itself is not installed there but put on
PYTHONPATH through a directory holding only a link to this package, so the
column's framework versions are the only ones it can import.
Environments are cached by content and reused.
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
from ctxlab.index import cache_dir

DEPENDENCIES = ["typer", "rich", "packaging", "starlette", "fastapi", "httpx", "uvicorn", "anyio"]


@dataclass
class Column:
    label: str
    requirements: list[str]
    report: dict[str, Any] = field(default_factory=dict)


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
        lines = [line for line in (done.stderr or done.stdout).splitlines() if line.strip()]
        reason = next((line for line in reversed(lines) if "error" in line.lower()), lines[-1] if lines else "")
        raise MatrixError(f"cannot build the environment for {what}: {reason.strip()}")


def environment(column: Column, progress=print) -> Path:
    """The column's virtualenv, built once and reused."""
    python = sys.executable
    key = json.dumps([sys.version, sorted(column.requirements), DEPENDENCIES])
    path = cache_dir() / "envs" / hashlib.sha256(key.encode()).hexdigest()[:16]
    if (path / ".ready").exists():
        return path
    shutil.rmtree(path, ignore_errors=True)
    progress(f"building an environment for {column.label} ...")
    uv = shutil.which("uv")
    try:
        if uv:
            _run([uv, "venv", "--quiet", "--python", python, str(path)], column.label)
            installer = [uv, "pip", "install", "--quiet", "--python", str(path / "bin" / "python")]
        else:
            _run([python, "-m", "venv", str(path)], column.label)
            installer = [str(path / "bin" / "python"), "-m", "pip", "install", "--quiet", "--disable-pip-version-check"]
        _run([*installer, *DEPENDENCIES, *column.requirements], column.label)
    except BaseException:
        shutil.rmtree(path, ignore_errors=True)
        raise
    (path / ".ready").write_text(column.label)
    return path


def _shim() -> Path:
    """A directory whose only entry is a link to this ctxlab package."""
    shim = cache_dir() / "shim"
    link = shim / "ctxlab"
    target = Path(ctxlab.__file__).resolve().parent
    if not (link.is_symlink() and link.resolve() == target):
        shim.mkdir(parents=True, exist_ok=True)
        if link.is_symlink() or link.exists():
            link.unlink()
        link.symlink_to(target, target_is_directory=True)
    return shim


def run_column(column: Column, server: str, extra: list[str]) -> dict[str, Any]:
    env = environment(column)
    command = [str(env / "bin" / "python"), "-m", "ctxlab", "run", "--all", "--json", "--server", server, *extra]
    done = subprocess.run(command, capture_output=True, text=True, env={**os.environ, "PYTHONPATH": str(_shim())})
    if done.returncode not in (0, 1, 3):
        raise MatrixError(f"ctxlab failed under {column.label}: {done.stderr.strip().splitlines()[-1:]}")
    return json.loads(done.stdout)


def grid(columns: list[Column]) -> dict[str, Any]:
    """Scenario x column: status per cell, `changed` where the observations
    differ from the previous column, and each change with where it appears."""
    from ctxlab.report import diff, runs

    rows: dict[tuple[str, str], list[dict[str, Any]]] = {}
    for column in columns:
        for key, scenario in runs(column.report).items():
            rows.setdefault(key, []).append({"status": scenario["status"], "changed": False})
    changes = []
    for previous, column in zip(columns, columns[1:]):
        for change in diff(previous.report, column.report):
            changes.append({"column": column.label, "previous": previous.label, **vars(change)})
            cells = rows.get((change.scenario, change.server))
            if cells is not None:
                cells[columns.index(column)]["changed"] = True
    return {
        "schema_version": 1,
        "columns": [{"label": c.label, "environment": c.report.get("environment", {})} for c in columns],
        "scenarios": [{"name": name, "server": server, "cells": cells} for (name, server), cells in rows.items()],
        "changes": changes,
    }
