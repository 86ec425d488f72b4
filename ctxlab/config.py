"""The settings of one run, as one value.

Importable without any web framework: the command line builds these before
it knows whether anything will run at all.
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class RunConfig:
    """How requests reach a scenario's app in one run.

    The command line makes one per server asked for (`--server both` gives
    two); the runner, the comparison and each scenario's report receive it
    whole, and expectations see it through `Env`.
    """

    server: str = "asgi"  # asgi (in process) or the name of a real server
    loop: str | None = None  # the server's event loop; None: the server's default
    http: str | None = None  # the server's HTTP implementation; None: its default
    spec_version: str | None = None  # the ASGI spec_version to advertise in process; None: the transport's
    concurrency: int | None = None  # concurrent requests, for scenarios built for them


REAL_SERVERS = ("uvicorn", "hypercorn", "granian")
LOOPS = ("asyncio", "uvloop")
HTTP_PARSERS = ("h11", "httptools")  # uvicorn's choice; the other servers bring their own
# What `ctxlab[servers]` installs: the package each choice imports.
PACKAGES = {"hypercorn": "hypercorn", "granian": "granian", "uvloop": "uvloop", "httptools": "httptools"}


def installed(package: str) -> bool:
    """Can `package` be imported here? (Looked up, not imported.)"""
    import importlib.util

    return importlib.util.find_spec(package) is not None


def settled(config: RunConfig) -> RunConfig:
    """`config` with the loop and parser a run will really use.

    In process: asyncio's loop unless told.  uvicorn: what `uvicorn[standard]`
    picks when nothing is said (`--loop auto`, `--http auto`): uvloop and
    httptools when they are installed.  hypercorn: its default worker class,
    asyncio.  granian: its `auto` loop, uvloop when installed.  Only uvicorn
    has a choice of parser.
    """
    from dataclasses import replace

    if config.server in ("uvicorn", "granian"):
        loop = config.loop or ("uvloop" if installed("uvloop") else "asyncio")
    else:
        loop = config.loop or "asyncio"
    http = (config.http or ("httptools" if installed("httptools") else "h11")) if config.server == "uvicorn" else None
    return replace(config, loop=loop, http=http)


def missing(config: RunConfig) -> str | None:
    """Why `config` cannot run here (a package it needs is not installed), or None."""
    absent = [p for p in (PACKAGES.get(config.server), PACKAGES.get(config.loop), PACKAGES.get(config.http)) if p]
    absent = [package for package in absent if not installed(package)]
    return f"needs {' and '.join(absent)} (pip install 'ctxlab[servers]')" if absent else None


def run_label(config: RunConfig) -> str:
    """How reports name the run: `asgi`, `uvicorn (uvloop, httptools)`, `granian (asyncio)`."""
    choices = [choice for choice in (config.loop, config.http) if choice]
    return f"{config.server} ({', '.join(choices)})" if config.server != "asgi" and choices else config.server
