"""Rich output: catalog, per-request tables, onion, task tree, summary."""

from __future__ import annotations

from collections import defaultdict
from typing import TYPE_CHECKING, Any, Iterable

from rich import box
from rich.console import Console, Group
from rich.table import Table
from rich.text import Text as RichText
from rich.tree import Tree

from ctxlab.report import Change, Observation, Report, ScenarioReport, Status, by_occurrence, show
from ctxlab.scenario import Entry, Scenario, describe
from ctxlab.terminal import visible
from ctxlab.values import same

if TYPE_CHECKING:
    from ctxlab.diagnose import Diagnosis
    from ctxlab.labels import Where
    from ctxlab.probe import Record


class Text(RichText):
    """Rich's Text, with control characters spelled as escapes as it is
    made: a table measures a cell as it will be printed (`\\x1b` is four
    columns wide, ESC none), and Rich no longer drops a BEL silently.
    (At module level: trace draws its view in a child, which pickles it.)"""

    def __init__(self, text: str = "", *args, **kwargs) -> None:
        super().__init__(visible(text), *args, **kwargs)

    def append(self, text, style=None):
        return super().append(visible(text) if isinstance(text, str) else text, style)


STATUS_STYLE = {Status.PASS: "green", Status.DRIFT: "bold red", Status.ERROR: "bold magenta", Status.SKIPPED: "yellow"}


def catalog(entries: Iterable[Entry], console: Console) -> None:
    """`ctxlab list`: name, tags and summary of each entry; a name is never cut, since
    users type it: too narrow a terminal gets one entry per paragraph."""
    longest = max((len(entry.name) for entry in entries), default=0)
    if console.width < longest + 30:
        for entry in entries:
            console.print(Text(entry.name, style="cyan"), no_wrap=True, crop=False, overflow="ignore")
            console.print(Text(f"  {', '.join(entry.tags)}: {entry.summary}", style="dim"))
        return
    table = Table(box=None, pad_edge=False, header_style="bold")
    table.add_column("name", no_wrap=True, min_width=longest)
    table.add_column("tags")
    table.add_column("summary")
    for entry in entries:
        table.add_row(Text(entry.name, style="cyan"), ", ".join(entry.tags), entry.summary)
    console.print(table)


def _table(*columns: str, **options) -> Table:
    """The light table every view uses; long cells fold rather than vanish."""
    table = Table(box=box.SIMPLE_HEAD, header_style="bold", pad_edge=False, **options)
    for column in columns:
        table.add_column(column, overflow="fold")
    return table


def onion(layers: list[str]) -> Text:
    """`ShinyMiddleware → BadMiddleware → app`, outermost first."""
    text = Text("onion: ", style="dim")
    for layer in layers:
        text.append(layer, style="bold")
        text.append(" → ", style="dim")
    text.append("app", style="bold")
    return text


def _observed_cell(o: Observation) -> Text:
    mark, style = ("✓", "green") if o.match else ("✗", "bold red")
    return Text(f"{mark} {show(o.observed)}", style=style)


def observation_table(observations: Iterable[Observation]) -> Table:
    """One row per observation; narrow enough for a 60-column CI log."""
    table = _table("#", "probe / var", "observed", "expected")
    table.columns[0].justify = "right"
    table.add_column("where", no_wrap=True)
    for o in observations:
        expected = Text(show(o.expected))
        if o.pitfall:
            expected.append(f"\nnaive: {show(o.naive)}", style="yellow")
        task = _task(o.task, o.parent_task)
        where = f"{task} {o.context}\n{o.thread}" if task else f"{o.context or '-'}\n{o.thread or '-'}"
        table.add_row(
            str(o.seq or "-"),
            Text.assemble(o.probe, "\n", (o.var, "dim")),
            _observed_cell(o),
            expected,
            where,
        )
    return table


def by_request(observations: list[Observation]) -> dict[Any, list[Observation]]:
    """The observations grouped by request, in the order requests first appear."""
    groups: dict[Any, list[Observation]] = defaultdict(list)
    for o in observations:
        groups[o.request].append(o)
    return groups


def scenario_report(result: ScenarioReport, summary: str, console: Console) -> None:
    """One scenario on one server: status, onion, a table per request."""
    status = Text(result.status.value.upper(), style=STATUS_STYLE[result.status])
    where = f"  on {result.label}" if result.server != "asgi" else ""
    console.print(Text.assemble((result.name, "bold cyan"), "  ", status, f"{where}  {result.duration_ms:.0f} ms"))
    console.print(Text(summary, style="dim"))
    if result.onion:
        console.print(onion(result.onion))
    if result.error:
        console.print(Text(result.error, style=STATUS_STYLE[result.status]))
    for request, observations in by_request(result.observations).items():
        title = f"request {request}" if request else "outside any request"
        console.print(Text(title, style="bold"))
        console.print(observation_table(observations))
    pitfalls = sum(o.pitfall for o in result.observations)
    if pitfalls:
        console.print(Text(f"{pitfalls} pitfall row(s): a naive reading expects otherwise", style="yellow"))
    console.print()


def outcomes(entry: Entry, results: list[ScenarioReport], console: Console) -> None:
    """One server: the full tables. Both: side by side, differences marked."""
    if len(results) == 1:
        scenario_report(results[0], entry.summary, console)
    else:
        side_by_side(entry, *results, console=console)


def side_by_side(entry: Entry, asgi: ScenarioReport, uvicorn: ScenarioReport, console: Console) -> None:
    """One scenario on two servers: a row per observation, differences marked."""
    head = Text.assemble((entry.name, "bold cyan"))
    for result in (asgi, uvicorn):
        head.append(f"  {result.label} ")
        head.append(result.status.value.upper(), style=STATUS_STYLE[result.status])
    console.print(head)
    console.print(Text(entry.summary, style="dim"))
    for result in (asgi, uvicorn):
        if result.error:
            console.print(Text(f"{result.label}: {result.error}", style=STATUS_STYLE[result.status]))
    left, right = (by_occurrence(r.observations, lambda o: (o.request, o.probe, o.var)) for r in (asgi, uvicorn))
    table = _table("req", "probe / var", asgi.label, uvicorn.label, "difference")
    expected_differences = 0
    in_probe_order = [*left, *(key for key in right if key not in left)]
    for key in sorted(in_probe_order, key=lambda k: k[0] or 0):
        a, u = left.get(key), right.get(key)
        cells = [_observed_cell(o) if o else Text("-") for o in (a, u)]
        if a and u and same(a.observed, u.observed):
            note = Text("")
        elif a and u and not same(a.expected, u.expected):
            note, expected_differences = Text("expected", style="yellow"), expected_differences + 1
        else:
            note = Text("unexpected" if a and u else "one side only", style="bold red" if a and u else "dim")
        table.add_row(str(key[0] or "-"), Text.assemble(key[1], "\n", (key[2], "dim")), *cells, note)
    console.print(table)
    if expected_differences:
        from ctxlab.scenario import load

        console.print(Text(f"Why they differ: {load(entry).why}", style="yellow"))
    console.print()


def summary_line(report: Report, seconds: float) -> Text:
    """pytest style: `3 passed, 1 drifted in 0.41s`."""
    s = report.summary
    parts = [
        (s["passed"], "passed", Status.PASS),
        (s["drifted"], "drifted", Status.DRIFT),
        (s["errors"], "error" if s["errors"] == 1 else "errors", Status.ERROR),
        (s["skipped"], "skipped", Status.SKIPPED),
    ]
    text = _counts((count, word, STATUS_STYLE[status]) for count, word, status in parts)
    text.append(f"{' ' if text else 'nothing ran '}in {seconds:.2f}s")
    if report.interrupted:
        text.append(" (interrupted)", style="bold red")
    return text


def task_tree(result: ScenarioReport, request: int | None) -> Tree:
    """Which task created which, and what each saw; a thread hangs under
    the task whose context it ran a copy of."""
    observations = [o for o in result.observations if o.request == request]
    root = Tree(Text(f"request {request}" if request else "outside any request", style="bold"))
    nodes: dict[str, Tree] = {}
    first_seen = {}
    for o in observations:
        if o.task:
            first_seen.setdefault(o.task, o)
    for o in list(first_seen.values()):
        if o.parent_task:  # an unobserved creator still belongs in the tree
            first_seen.setdefault(o.parent_task, None)
    # Tasks in creation order, so that a parent's node exists before its child's.
    for task in sorted(first_seen, key=lambda label: int(label[1:])):
        o = first_seen[task]
        label = f"task {task}"
        if o:
            label += f" (created by {o.parent_task})" if o.parent_task else ""
            label += f", context {o.context}" + (f" (copied from {o.parent_context})" if o.parent_context else "")
        parent = nodes.get(o.parent_task, root) if o else root
        nodes[task] = parent.add(Text(label, style="cyan"))
    context_owner = {o.context: o.task for o in observations if o.task}
    for o in observations:
        if o.task:
            node = nodes[o.task]
        else:
            key = f"{o.thread}/{o.context}"
            if key not in nodes:
                copied = f", a copy of {o.parent_context}" if o.parent_context else ", the thread's own"
                parent = nodes.get(context_owner.get(o.parent_context), root)
                nodes[key] = parent.add(Text(f"thread {o.thread}, context {o.context}{copied}", style="cyan"))
            node = nodes[key]
        mark = Text("✓", "green") if o.match else Text("✗", "bold red")
        node.add(Text.assemble(mark, f" {o.probe}: {o.var} = {show(o.observed)}"))
    return root


TREES_SHOWN = 3


def expectations(scenario: Scenario) -> Table:
    """What the scenario expects, including how it depends on versions or
    the server, and what a naive reading would expect."""
    table = _table("probe / var", "expected", "naive", title="expectations", title_justify="left")
    for probe, variables in scenario.expect.items():
        for var, value in variables.items():
            naive = scenario.naive.get(probe, {}).get(var, value)
            table.add_row(
                Text.assemble(probe, "\n", (var, "dim")),
                describe(value),
                Text(describe(naive), style="yellow") if naive is not value else "",
            )
    return table


def explain(scenario: Scenario, result: ScenarioReport, source: str, console: Console) -> None:
    """`ctxlab explain`: onion, task trees, expectations, why, the fix, the source."""
    from rich.panel import Panel
    from rich.syntax import Syntax

    console.print(Text.assemble((scenario.name, "bold cyan"), "  ", scenario.summary))
    if result.onion:
        console.print(onion(result.onion))
    if result.error:
        console.print(Text(result.error, style=STATUS_STYLE[result.status]))
    requests = list(dict.fromkeys(o.request for o in result.observations))
    for request in requests[:TREES_SHOWN]:
        console.print(task_tree(result, request))
    if len(requests) > TREES_SHOWN:
        console.print(
            Text(f"(+{len(requests) - TREES_SHOWN} more requests; `ctxlab run {scenario.name}` shows all)", style="dim")
        )
    console.print(expectations(scenario))
    console.print(Panel(scenario.why or "-", title="why", title_align="left"))
    console.print(Panel(scenario.fix or "-", title="the fix", title_align="left"))
    console.print(Group(Text(f"source: {scenario.source}", style="dim"), Syntax(source, "python")))


def _task(task: str | None, parent_task: str | None) -> str | None:
    """`T2←T1`: a task and the task that created it."""
    return task and (f"{task}←{parent_task}" if parent_task else task)


def live_line(record: Record, where: Where) -> Text:
    """`ctxlab serve`: one probe record as it happens."""
    task = _task(where.task, where.parent_task)
    place = f"{task + ' ' if task else ''}{where.context} {record.thread}"
    return Text.assemble(
        (f"request {record.request}  ", "bold"),
        (record.probe, "cyan"),
        f"  {record.var} = ",
        show(record.value),
        (f"   {place}", "dim"),
    )


def check_line(entry: Entry, results: list[ScenarioReport], console: Console) -> None:
    """`ctxlab check`: a line per scenario; full tables only for failures."""
    for result in results:
        status = Text(f"{result.status.value.upper():<8}", style=STATUS_STYLE[result.status])
        console.print(Text.assemble(status, result.name, (f"  {result.label}  {result.duration_ms:.0f} ms", "dim")))
    for result in results:
        if result.status in (Status.DRIFT, Status.ERROR):
            failed = ScenarioReport(**{**vars(result), "observations": result.drifted})
            scenario_report(failed, entry.summary, console)


def changes(found: list[Change], before: dict[str, Any], after: dict[str, Any], console: Console) -> None:
    """`ctxlab diff`: what changed, and the package versions either side."""
    if found:
        table = _table("scenario", "server", "req", "probe / var", "before", "after")
        for c in found:
            table.add_row(
                c.scenario,
                c.server,
                str(c.request or "-"),
                Text.assemble(c.probe, "\n", (c.var, "dim")),
                Text(show(c.before), style="red"),
                Text(show(c.after), style="green"),
            )
        console.print(table)
    old, new = before.get("packages", {}), after.get("packages", {})
    versions = [
        f"{p} {old.get(p, '-')} → {new.get(p, '-')}" if old.get(p) != new.get(p) else f"{p} {new.get(p)}"
        for p in dict.fromkeys([*old, *new])
    ]
    console.print(Text("packages: " + ", ".join(versions), style="dim"))
    python = (
        f"python {before.get('python', '-')} → {after.get('python')}"
        if before.get("python") != after.get("python")
        else ""
    )
    if python:
        console.print(Text(python, style="dim"))
    scenarios = len({(c.scenario, c.server) for c in found})
    verdict = f"{len(found)} change(s) in {scenarios} scenario(s)" if found else "no changes"
    console.print(Text(verdict, style="bold red" if found else "green"))


def matrix(result: dict[str, Any], console: Console) -> None:
    """The scenario x environment grid; cells whose observations changed
    from the column before are highlighted, then each change is listed."""
    table = _table("scenario", *(column["label"] for column in result["columns"]))
    for row in result["scenarios"]:
        cells = [
            Text(
                cell["status"] + (" *" if cell["changed"] else ""),
                style=("reverse " if cell["changed"] else "") + STATUS_STYLE[Status(cell["status"])],
            )
            if cell["status"]
            else Text("-", style="dim")  # not run in that column (another server)
            for cell in row["cells"]
        ]
        table.add_row(f"{row['name']} ({row['server']})", *cells)
    console.print(table)
    for column in result["columns"]:
        if column["error"]:
            console.print(Text(f"{column['label']}: {column['error']}", style=STATUS_STYLE["error"]))
    if not result["changes"]:
        console.print(_no_change(result["columns"]))
        return
    console.print(Text("* observations changed from the column before; first appearing in:", style="bold"))
    for c in result["changes"]:
        where = f"request {c['request']} " if c["request"] else ""
        console.print(
            f"  {c['column']}: {c['scenario']} ({c['server']}) {where}{c['probe']} {c['var']}: "
            f"{show(c['before'])} → {show(c['after'])}"
        )


def _no_change(columns: list[dict[str, Any]]) -> Text:
    """The verdict of a grid with no change: only neighbouring columns that
    both ran are compared, so errors may leave nothing compared at all."""
    ran = [not column["error"] for column in columns]
    if not any(left and right for left, right in zip(ran, ran[1:])):
        return Text("nothing was compared: no two neighbouring columns both ran", style=STATUS_STYLE[Status.ERROR])
    if all(ran):
        return Text("no observation differs between columns", style="green")
    return Text("no observation differs between the neighbouring columns that ran", style="yellow")


def _meets(layer_mount: str | None, path_mount: str | None) -> bool:
    """A request through `path_mount` meets the layers of the app and of
    every mount it is nested in."""
    return layer_mount is None or (path_mount is not None and f"{path_mount}/".startswith(f"{layer_mount}/"))


def diagnosis(result: Diagnosis, console: Console) -> None:
    """`ctxlab probe`: every layer of the user's app, the verdict, findings."""
    console.print(Text.assemble(("app ", "dim"), (result.app, "bold cyan")))
    # One onion per path: the app's own layers, then each mount's inside them.
    mounts = list(dict.fromkeys(layer.mount for layer in result.layers if layer.mount is not None))
    for mount in [None, *mounts]:
        outer = [layer for layer in result.layers if _meets(layer.mount, mount)]
        line = onion([f"{layer.name} [{layer.kind}]" for layer in outer])
        console.print(line if mount is None else Text.assemble((f"{mount} ", "cyan"), line))
    answers = {True: Text("yes", style="green"), False: Text("no", style="bold red"), None: Text("?", style="dim")}
    table = _table(
        "layer (outermost first)", "kind", "mount", "sees endpoint's values", "its values reach endpoint", "note"
    )
    for layer in result.layers:
        culprit = layer.name in result.culprits
        table.add_row(
            Text(layer.name, style="bold red" if culprit else ""),
            layer.kind,
            layer.mount or "",
            answers[layer.sees_endpoint_values],
            answers[layer.reaches_endpoint],
            layer.note or "",
        )
    console.print(table)
    if result.culprits:
        console.print(Text(f"cut by: {', '.join(result.culprits)}", style="bold red"))
    elif not result.complete:
        console.print(Text("not observed: some layers could not be observed (see the notes)", style="yellow"))
    else:
        console.print(Text("ok: values travel through every layer", style="green"))
    console.print(Text(result.fix))
    for finding in result.findings:
        console.print(
            Text.assemble(
                (f"{finding.file}:{finding.line} ", "bold"), (f"[{finding.kind}] ", "yellow"), finding.message
            )
        )


# -- ctxlab trace ---------------------------------------------------------------------------
TRACE_STYLE = {"lost": "bold red", "leak": "bold magenta", "reset-error": "bold yellow"}


def trace_finding(result, finding) -> Text:
    """One finding in plain words: what was read and set where, the
    boundary, the fix, the scenario that shows it."""
    data = result.finding_json(finding)
    requests = ", ".join(str(n) for n in finding.requests)
    text = Text.assemble((f"{finding.kind.upper()} ", TRACE_STYLE[finding.kind]), (data["var"], "bold"),
                         f"  in request{'s' if len(finding.requests) > 1 else ''} {requests}\n")  # fmt: skip
    read_word = "reset" if finding.kind == "reset-error" else "read"
    for word, where in ((read_word, data["read"]), ("set", data["set"])):
        if where is None:
            continue
        request = f"request {where['request']}, " if finding.kind == "leak" else ""
        place = f"{where['file']}:{where['line']}"
        text.append(f"  {word:<6}")
        text.append(place, style="bold")
        text.append(
            f" in {where['function']} ({request}{where['task'] or 'thread ' + where['thread']}, {where['context']}): "
        )
        text.append(f"{show(where['value'])}\n")
    if finding.read.raised:
        text.append(f"  raised {finding.read.raised}\n")
    text.append(f"  why   {finding.boundary}\n")
    text.append(f"  fix   {finding.fix}")
    if finding.scenario:
        text.append(f"\n  see   ctxlab explain {finding.scenario}", style="dim")
    return text


def trace_tree(result, request) -> Tree:
    """The request's tasks and threads, each with the gets, sets and
    resets it made, at file:line."""
    label = result.labels
    events = [e for e in result.events if e.request == request.request and result.shown(e)]
    title = f"request {request.request}  {request.method} {request.path} → {request.status or request.error}"
    root = Tree(Text(title, style="bold"))
    nodes: dict[Any, Tree] = {}
    context_owner: dict[Any, Any] = {}

    first_mark = {}
    for event in events:
        if event.task is not None:
            first_mark.setdefault(event.task, event.mark)
            context_owner.setdefault(event.mark, event.task)

    def task_node(task) -> Tree:
        if task not in nodes:
            mark = first_mark.get(task)
            parent = label.tasks_info[task].parent if task in label.tasks_info else None
            text = f"task {label.task(task)}" + (f" (created by {label.task(parent)})" if parent is not None else "")
            if mark is not None:
                text += f", context {label(mark)}" + (f" (copied from {label(mark.parent)})" if mark.parent else "")
            holder = task_node(parent) if parent in first_mark else root
            nodes[task] = holder.add(Text(text, style="cyan"))
        return nodes[task]

    for event in events:
        if event.task is not None:
            node = task_node(event.task)
        else:
            key = (event.thread, event.mark)
            if key not in nodes:
                copied = f", a copy of {label(event.mark.parent)}" if event.mark.parent else ", the thread's own"
                owner = context_owner.get(event.mark.parent)
                holder = task_node(owner) if owner is not None else root
                nodes[key] = holder.add(
                    Text(f"thread {event.thread}, context {label(event.mark)}{copied}", style="cyan")
                )
            node = nodes[key]
        line = Text.assemble((f"{event.op:<5} ", "bold" if event.op != "get" else ""), event.var.name, " = ",
                             show(event.value), (f"   {result.places(event.site)} {event.site.function}", "dim"))  # fmt: skip
        if event.snapshot:
            line.append(" (copy_context snapshot)", style="dim")
        if event.raised:
            line.append(f"  raised {event.raised}", style="bold yellow")
        node.add(line)
    return root


def trace_view(result) -> list[Text | Tree]:
    """`ctxlab trace`: the findings first, then each request's task tree.

    Plain renderables, built where the live result is (the child process
    that traced the app) and printed where the terminal is."""
    view: list[Text | Tree] = [
        Text.assemble(("app ", "dim"), (result.app, "bold cyan"), (f"  on {result.server}", "dim"))
    ]
    for finding in result.findings:
        view += [trace_finding(result, finding), Text()]
    view += [trace_tree(result, request) for request in result.requests]
    hidden = sum(not result.shown(e) for e in result.events)
    if hidden:
        view.append(
            Text(
                f"({hidden} events of library variables the app never touched are not shown; --json has them)",
                style="dim",
            )
        )
    s = result.summary
    counts = [
        (s["lost"], "lost", "lost"),
        (s["leaked"], "leaked", "leak"),
        (s["reset_errors"], "reset error(s)", "reset-error"),
    ]
    line = _counts((count, word, TRACE_STYLE[kind]) for count, word, kind in counts)
    line.append(f"{' in' if line else 'no finding in'} {s['requests']} request(s), {s['events']} events")
    view.append(line)
    return view


def trace_changes(found, console: Console) -> None:
    """`ctxlab diff` of a saved trace: findings that came or went, values
    that changed."""
    if found:
        table = _table("what", "where", "before", "after")
        for c in found:
            table.add_row(c.what, c.key, Text(show(c.before), style="red"), Text(show(c.after), style="green"))
        console.print(table)
    console.print(Text(f"{len(found)} change(s) since the saved trace" if found else "no changes since the saved trace",
                       style="bold red" if found else "green"))  # fmt: skip


def _counts(parts: Iterable[tuple[int, str, str]]) -> Text:
    """`2 passed, 1 drifted`: the counts that are not zero, each in its style."""
    text = Text()
    for count, word, style in parts:
        if count:
            text.append(", " if text else "")
            text.append(f"{count} {word}", style=style)
    return text
