"""ctxlab's speed and memory budgets, as ratios against baselines measured
in the same run (machines here are shared and noisy: absolute times mean
little, ratios of interleaved medians are stable).

    make bench          # or: python benchmarks/bench.py [--runs N]

Exit status 1 when a budget is exceeded.
"""

from __future__ import annotations

import argparse
import asyncio
import contextvars
import os
import statistics
import subprocess
import sys
import time
from contextvars import ContextVar

PYTHON = sys.executable
CTXLAB = [PYTHON, "-m", "ctxlab"]
ENV = {**os.environ, "NO_COLOR": "1"}


def measure(command: list[str]) -> tuple[float, int]:
    """Wall seconds and peak RSS (KiB) of one run of `command`."""
    started = time.perf_counter()
    process = subprocess.Popen(command, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, env=ENV)
    _, status, usage = os.wait4(process.pid, 0)
    elapsed = time.perf_counter() - started
    process.returncode = os.waitstatus_to_exitcode(status)
    if process.returncode not in (0, 1):
        raise SystemExit(f"benchmark command failed ({process.returncode}): {' '.join(command)}")
    return elapsed, usage.ru_maxrss


def compare(measured: list[str], baseline: list[str], runs: int) -> tuple[float, float, float, float]:
    """Interleave runs of both commands; medians of wall time and peak RSS."""
    measure(measured), measure(baseline)  # warm the file cache and bytecode
    ours, theirs = [], []
    for _ in range(runs):
        ours.append(measure(measured))
        theirs.append(measure(baseline))
    wall = statistics.median(t for t, _ in ours), statistics.median(t for t, _ in theirs)
    rss = statistics.median(m for _, m in ours), statistics.median(m for _, m in theirs)
    return (*wall, *rss)


# -- probes in process ----------------------------------------------------------------------
request_id: ContextVar = ContextVar("request_id", default=None)
PROBES_PER_REQUEST = 3


def app(with_probes: bool):
    from ctxlab.probe import probe

    async def endpoint(scope, receive, send):
        request_id.set("r")
        for label in ("a", "b", "c")[:PROBES_PER_REQUEST]:
            await asyncio.sleep(0)
            if with_probes:
                probe(label, request_id)
        await send({"type": "http.response.start", "status": 200, "headers": []})
        await send({"type": "http.response.body", "body": b"ok"})

    return endpoint


def requests_with_ctxlab(count: int) -> float:
    """`count` concurrent requests through ctxlab's runner, probes recording."""
    from ctxlab import runner
    from ctxlab.scenario import ClientRequest, Scenario

    expect = {label: {"request_id": "r"} for label in "abc"}
    scenario = Scenario("bench", "", lambda: app(True), expect, requests=(ClientRequest(),) * count, concurrent=True)
    started = time.perf_counter()
    result = runner.run(scenario)
    elapsed = time.perf_counter() - started
    assert result.error is None and len(result.records) == count * PROBES_PER_REQUEST, result.error
    return elapsed


def requests_without_ctxlab(count: int) -> float:
    """The same app and requests, no probes and no ctxlab: plain asyncio."""
    import httpx

    async def main():
        loop = asyncio.get_running_loop()
        transport = httpx.ASGITransport(app=app(False))
        async with httpx.AsyncClient(transport=transport, base_url="http://testserver") as client:
            tasks = [contextvars.Context().run(loop.create_task, client.get("/")) for _ in range(count)]
            await asyncio.gather(*tasks)

    started = time.perf_counter()
    asyncio.run(main())
    return time.perf_counter() - started


def nanoseconds_per_probe(calls: int = 100_000) -> float:
    from ctxlab.probe import Recorder, activate, probe

    recorder = Recorder()
    previous = activate(recorder)

    async def main():
        request_id.set("r")
        started = time.perf_counter_ns()
        for _ in range(calls):
            probe("p", request_id)
        return (time.perf_counter_ns() - started) / calls

    try:
        return asyncio.run(main())
    finally:
        activate(previous)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=7, help="interleaved runs per figure (median)")
    runs = parser.parse_args().runs

    rows = []  # (figure, measured, baseline, ratio, budget)

    def ratio(figure: str, ours: float, theirs: float, budget: float, unit: str) -> None:
        rows.append((figure, f"{ours:.3f} {unit}", f"{theirs:.3f} {unit}", ours / theirs, budget))

    import_typer = [PYTHON, "-c", "import typer"]
    import_floor = [PYTHON, "-c", "import fastapi, httpx, uvicorn, typer, rich.table"]
    for args in (["list"], ["--help"]):
        wall, base, _, _ = compare(CTXLAB + args, import_typer, runs)
        ratio(f"ctxlab {' '.join(args)} vs import typer (wall)", wall, base, 1.3, "s")
    wall, base, rss, base_rss = compare(CTXLAB + ["run", "--all", "--json"], import_floor, runs)
    ratio("ctxlab run --all vs import floor (wall)", wall, base, 1.5, "s")
    ratio("ctxlab run --all vs import floor (peak RSS)", rss / 1024, base_rss / 1024, 1.5, "MiB")
    wall, base, _, _ = compare(CTXLAB + ["run", "--all", "--json", "--server", "uvicorn"],
                               CTXLAB + ["run", "--all", "--json"], max(3, runs // 2))  # fmt: skip
    ratio("run --all --server uvicorn vs in process (wall)", wall, base, 3.0, "s")

    count = 1000
    requests_with_ctxlab(count), requests_without_ctxlab(count)  # warm up
    ours, theirs = [], []
    for _ in range(runs):
        ours.append(requests_with_ctxlab(count))
        theirs.append(requests_without_ctxlab(count))
    ratio(f"{count} concurrent requests, 3 probes each, vs no ctxlab", statistics.median(ours),
          statistics.median(theirs), 1.25, "s")  # fmt: skip

    per_probe = statistics.median(nanoseconds_per_probe() for _ in range(5))

    width = max(len(row[0]) for row in rows)
    print(f"{'figure':<{width}}  {'ctxlab':>10}  {'baseline':>10}  {'ratio':>6}  budget")
    failed = 0
    for figure, measured, baseline, value, budget in rows:
        verdict = "ok" if value <= budget else "OVER"
        failed += verdict == "OVER"
        print(f"{figure:<{width}}  {measured:>10}  {baseline:>10}  {value:>5.2f}x  <= {budget}x {verdict}")
    print(f"probe() cost: {per_probe:,.0f} ns per call (one variable, recorder active)")
    print(f"python {sys.version.split()[0]}, {os.cpu_count()} cores, {runs} interleaved runs, medians")
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
