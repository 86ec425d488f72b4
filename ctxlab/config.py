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
