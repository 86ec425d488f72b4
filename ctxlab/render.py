"""Rich output: catalog, per-request tables, onion, task tree, summary."""

from __future__ import annotations

import json
from collections import defaultdict
from typing import Any, Iterable

from rich import box
from rich.console import Console, Group
from rich.markup import escape
from rich.table import Table
from rich.text import Text
from rich.tree import Tree

from ctxlab.report import Observation, Report, ScenarioReport

STATUS_STYLE = {"pass": "green", "drift": "bold red", "error": "bold magenta", "skipped": "yellow"}


def show(value: Any) -> str:
    """A report value as a person reads it: `null` for None, JSON otherwise."""
    return value if isinstance(value, str) and value.startswith("<") else json.dumps(value)


def catalog(entries, console: Console) -> None:
    table = Table("name", "tags", "summary", box=None, pad_edge=False, header_style="bold")
    for entry in entries:
        table.add_row(Text(entry.name, style="cyan", no_wrap=True), ", ".join(entry.tags), entry.summary)
    console.print(table)


def onion(layers: list[str]) -> Text:
    """`ShinyMiddleware → BadMiddleware → app`, outermost first."""
    text = Text("onion: ", style="dim")
    for layer in layers:
        text.append(layer, style="bold")
        text.append(" → ", style="dim")
    text.append("app", style="bold")
    return text


def observation_table(observations: Iterable[Observation]) -> Table:
    """One row per observation; narrow enough for a 60-column CI log."""
    table = Table(box=box.SIMPLE_HEAD, header_style="bold", pad_edge=False)
    table.add_column("#", justify="right")
    table.add_column("probe / var")
    table.add_column("observed", overflow="fold")
    table.add_column("expected", overflow="fold")
    table.add_column("where", no_wrap=True)
    for o in observations:
        mark, style = ("✓", "green") if o.match else ("✗", "bold red")
        expected = Text(show(o.expected))
        if o.pitfall:
            expected.append(f"\nnaive: {show(o.naive)}", style="yellow")
        task = o.task and (f"{o.task}←{o.parent_task}" if o.parent_task else o.task)
        where = f"{task} {o.context}\n{o.thread}" if task else f"{o.context or '-'}\n{o.thread or '-'}"
        table.add_row(
            str(o.seq or "-"), Text.assemble(o.probe, "\n", (o.var, "dim")),
            Text(f"{mark} {show(o.observed)}", style=style), expected, where,
        )  # fmt: skip
    return table


def by_request(observations: list[Observation]) -> dict[Any, list[Observation]]:
    groups: dict[Any, list[Observation]] = defaultdict(list)
    for o in observations:
        groups[o.request].append(o)
    return groups


def scenario_report(result: ScenarioReport, summary: str, console: Console) -> None:
    status = Text(result.status.upper(), style=STATUS_STYLE[result.status])
    console.print(Text.assemble((result.name, "bold cyan"), "  ", status, f"  {result.duration_ms:.0f} ms"))
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


def summary_line(report: Report, seconds: float) -> Text:
    """pytest style: `3 passed, 1 drifted in 0.41s`."""
    s = report.summary
    parts = [(s["passed"], "passed", "pass"), (s["drifted"], "drifted", "drift"),
             (s["errors"], "error" if s["errors"] == 1 else "errors", "error"), (s["skipped"], "skipped", "skipped")]  # fmt: skip
    text = Text()
    for count, word, status in parts:
        if count:
            text.append(", " if text else "")
            text.append(f"{count} {word}", style=STATUS_STYLE[status])
    text.append(f"{' ' if text else 'nothing ran '}in {seconds:.2f}s")
    if report.interrupted:
        text.append(" (interrupted)", style="bold red")
    return text


def task_tree(result: ScenarioReport, request: int | None) -> Tree:
    """Which task created which, what each saw; threads hang under the task
    whose context they copied."""
    observations = [o for o in result.observations if o.request == request]
    root = Tree(Text(f"request {request}", style="bold"))
    nodes: dict[str, Tree] = {}
    context_owner = {o.context: o.task for o in observations if o.task}

    def node_for(o: Observation) -> Tree:
        key = o.task or f"{o.thread}/{o.context}"
        if key not in nodes:
            if o.task:
                parent = nodes.get(o.parent_task, root)
                label = f"task {o.task}" + (f" (created by {o.parent_task})" if o.parent_task else "")
                label += f", context {o.context}"
            else:
                parent = nodes.get(context_owner.get(o.parent_context), root)
                copied = f", a copy of {o.parent_context}" if o.parent_context else ", the thread's own"
                label = f"thread {o.thread}, context {o.context}{copied}"
            nodes[key] = parent.add(Text(label, style="cyan"))
        return nodes[key]

    for o in observations:
        mark = "[green]✓[/]" if o.match else "[bold red]✗[/]"
        node_for(o).add(f"{mark} {escape(o.probe)}: {escape(o.var)} = {escape(show(o.observed))}")
    return root


def explain(scenario, result: ScenarioReport, source: str, console: Console) -> None:
    from rich.panel import Panel
    from rich.syntax import Syntax

    console.print(Text.assemble((scenario.name, "bold cyan"), "  ", scenario.summary))
    if result.onion:
        console.print(onion(result.onion))
    if result.error:
        console.print(Text(result.error, style="bold magenta"))
    first = min((o.request for o in result.observations if o.request), default=None)
    console.print(task_tree(result, first))
    console.print(Panel(scenario.why or "-", title="why", title_align="left"))
    console.print(Panel(scenario.fix or "-", title="the fix", title_align="left"))
    console.print(Group(Text(f"source: {scenario.source}", style="dim"), Syntax(source, "python")))
