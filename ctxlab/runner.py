"""Run one scenario on a fresh event loop and collect what the probes saw."""

from __future__ import annotations

import asyncio
import contextvars
import signal
import threading
import time
from contextlib import AsyncExitStack, contextmanager
from dataclasses import dataclass, field
from typing import Any, Callable, Coroutine, Iterator

from ctxlab import servers
from ctxlab.config import RunConfig
from ctxlab.errors import described
from ctxlab.labels import Labeller, Where
from ctxlab.probe import Record, Recorder, TaskInfo, activate
from ctxlab.scenario import Scenario
from ctxlab.target import describe_layer


@dataclass
class Run:
    """The raw outcome of running one scenario once."""

    records: list[Record] = field(default_factory=list)
    tasks: dict[asyncio.Task, TaskInfo] = field(default_factory=dict)
    onion: list[str] = field(default_factory=list)
    duration_ms: float = 0.0
    error: str | None = None


def onion(app: Any) -> list[str]:
    """The app's middleware, outermost first (Starlette keeps that order)."""
    layers = map(describe_layer, getattr(app, "user_middleware", ()))
    return [f"http:{layer.name}" if layer.kind == "http_decorator" else layer.name for layer in layers]


@contextmanager
def scenario_loop(recorder: Recorder, kind: str | None = None) -> Iterator[asyncio.AbstractEventLoop]:
    """A fresh event loop (asyncio's, or `kind`: uvloop) whose tasks the
    recorder tracks; closed after."""
    loop = servers.new_event_loop(kind or "asyncio")
    loop.set_task_factory(recorder.task_factory)
    previous = activate(recorder)
    try:
        yield loop
    finally:
        activate(previous)
        _close(loop)


def run_until_done_or_ctrl_c(loop: asyncio.AbstractEventLoop, coro: Coroutine[Any, Any, Any]) -> None:
    """Run `coro` as a task; Ctrl-C cancels it, so its cleanup (stopping a
    server, closing sockets) runs before KeyboardInterrupt is raised."""
    task = loop.create_task(coro)
    # Only where Ctrl-C would raise KeyboardInterrupt: a child of
    # ctxlab.isolate never gets it (the parent kills it instead), and
    # asyncio's signal bookkeeping costs ~0.2 ms a scenario there.
    catching = signal.getsignal(signal.SIGINT) is signal.default_int_handler
    try:
        if catching:
            loop.add_signal_handler(signal.SIGINT, task.cancel)
    except (RuntimeError, ValueError, NotImplementedError):  # not the main thread, or no signals here
        catching = False
    try:
        loop.run_until_complete(task)
    except asyncio.CancelledError:  # only Ctrl-C cancels it: timeouts raise TimeoutError
        raise KeyboardInterrupt from None
    finally:
        if catching:
            loop.remove_signal_handler(signal.SIGINT)


def run(scenario: Scenario, config: RunConfig = RunConfig()) -> Run:
    """Build the scenario's app, send its requests under `config`, and
    return every record its probes made, with the tasks they ran in.

    `config` is what `scenario.settle` returned: its `concurrency` is the
    number of copies of the requests to send at once, or None.  Runs on a
    fresh event loop, so scenarios never share state.  A crash or a timeout
    becomes `Run.error`; Ctrl-C raises KeyboardInterrupt after cleaning up.
    """
    result = Run()
    recorder = Recorder()
    started = time.perf_counter()
    with scenario_loop(recorder, config.loop) as loop:
        try:
            app = scenario.build(config.concurrency) if config.concurrency else scenario.build()
            result.onion = onion(app)
            driving = _drive(scenario, app, config, recorder)
            run_until_done_or_ctrl_c(loop, asyncio.wait_for(driving, scenario.timeout))
        except asyncio.TimeoutError:
            result.error = f"timed out after {scenario.timeout:g}s"
        # SystemExit too: an app that calls sys.exit in a request crashes its
        # scenario (a real server answers 500), it does not end ctxlab.
        except (Exception, SystemExit) as exc:  # noqa: BLE001 - a crashing scenario is a result
            result.error = described(exc)
        finally:
            result.duration_ms = (time.perf_counter() - started) * 1000
    result.records, result.tasks = recorder.records, recorder.tasks
    return result


def serve(
    scenario: Scenario, port: int, on_ready: Callable[[str], None], on_record: Callable[[Record, Where], None]
) -> None:
    """Serve the scenario's app on 127.0.0.1:`port` until Ctrl-C: `on_ready`
    gets the base URL, `on_record` every probe record as it happens, with
    its labels (numbered as `run` numbers them)."""

    def labelled(record: Record) -> None:
        with numbering:  # probes in pool threads report concurrently
            labeller.number([record])
            where = labeller.where(record)
        on_record(record, where)

    recorder = Recorder(on_record=labelled)
    labeller, numbering = Labeller(recorder.tasks), threading.Lock()

    async def serving() -> None:
        recorder.set_root(asyncio.current_task())
        app = servers.attribute_requests(scenario.build())
        async with servers.uvicorn_server(
            app, lifespan=scenario.lifespan, options=scenario.server_options, timeout=1, port=port
        ) as base_url:
            on_ready(base_url)
            await asyncio.Event().wait()  # until Ctrl-C

    with scenario_loop(recorder) as loop:
        run_until_done_or_ctrl_c(loop, serving())


async def _drive(scenario: Scenario, app: Any, config: RunConfig, recorder: Recorder) -> None:
    """Send the scenario's requests to `app` as `config.server` would."""
    recorder.set_root(asyncio.current_task())
    loop = asyncio.get_running_loop()

    def in_fresh_task(coro):
        # What a server does: each request starts in a task of its own
        # whose context holds nothing from anyone else.
        return contextvars.Context().run(loop.create_task, coro)

    requests = scenario.requests * config.concurrency if config.concurrency else scenario.requests
    async with AsyncExitStack() as stack:
        if config.server != "asgi":
            base_url = await stack.enter_async_context(
                servers.real_server(
                    servers.attribute_requests(app),
                    config,
                    lifespan=scenario.lifespan,
                    options=scenario.server_options,
                    timeout=scenario.timeout,
                )
            )
            if scenario.pipelined:
                await servers.send_pipelined(base_url, requests, range(1, len(requests) + 1))
                return
            # The scenario's own timeout governs, not httpx's 5 s default.
            client = await stack.enter_async_context(servers.server_client(base_url, scenario.timeout))
        else:
            state = await stack.enter_async_context(servers.lifespan(app)) if scenario.lifespan else None
            client = await stack.enter_async_context(
                servers.asgi_client(servers.attribute_requests(app, config.spec_version, state))
            )
        sendings = (servers.send(client, request, n) for n, request in enumerate(requests, 1))
        if scenario.concurrent or config.concurrency:
            await asyncio.gather(*map(in_fresh_task, sendings))
            return
        for sending in sendings:
            await (sending if not scenario.task_per_request else in_fresh_task(sending))
            # A server answers before the app has finished (a yield
            # dependency's teardown, a background task): let request n end
            # before n + 1 starts, so records never interleave.
            while recorder.in_flight:
                await asyncio.sleep(0.001)


def _close(loop: asyncio.AbstractEventLoop) -> None:
    """Cancel what the scenario left running and close its loop."""
    try:
        pending = [task for task in asyncio.all_tasks(loop) if not task.done()]
        for task in pending:
            task.cancel()
        if pending:
            loop.run_until_complete(asyncio.wait(pending, timeout=1))
        loop.run_until_complete(_shut_down(loop))  # one turn of the loop, not one per step: ~20 µs less
    finally:
        loop.close()


async def _shut_down(loop: asyncio.AbstractEventLoop) -> None:
    """Finish the loop's async generators, then stop its default executor."""
    await loop.shutdown_asyncgens()
    # A hung worker thread must not hang ctxlab: wait a moment, no more.
    await asyncio.wait([loop.create_task(loop.shutdown_default_executor())], timeout=1)
