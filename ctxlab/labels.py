"""Names for the recorder's tasks and contexts: T1, T2, ... and C1, C2, ...

The recorder keeps the objects themselves (asyncio tasks, the context marks
of ctxlab.probe); people need short stable names.  Numbers follow creation
order, so a parent is always numbered before its child and a context before
its copies, whether the records come all at once (`run`, `explain`) or one
by one as they happen (`serve`).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Iterable, Mapping

if TYPE_CHECKING:  # reading reports never imports asyncio (see ctxlab.values)
    import asyncio

    from ctxlab.probe import ContextMark, Record, TaskInfo


@dataclass(frozen=True)
class Where:
    """The labels of a record's task and context, and of their origins."""

    task: str | None  # None: not in a task (a worker thread)
    parent_task: str | None  # the task that created it; None: a request's or the runner's own task
    context: str | None
    parent_context: str | None  # the context it is a copy of ("copied from"); None: a fresh one


class Labeller:
    """Numbers tasks and contexts in creation order, and remembers the numbers.

    `tasks` is the recorder's task table (`Recorder.tasks`): it tells each
    task's creation order and parent, and may keep growing while labelling.
    """

    def __init__(self, tasks: Mapping[asyncio.Task, TaskInfo]) -> None:
        self._tasks = tasks
        self._task_labels: dict[Any, str | None] = {None: None}
        self._context_labels: dict[Any, str | None] = {None: None}

    def number(self, records: Iterable[Record]) -> None:
        """Give a label to each task and context of `records`, and to their
        ancestors, that has none yet; new ones are numbered in creation order."""
        tasks: set[asyncio.Task] = set()
        marks: set[ContextMark] = set()
        for record in records:
            task, mark = record.task, record.context
            while task is not None and task not in tasks and task not in self._task_labels:
                tasks.add(task)
                task = self._tasks[task].parent if task in self._tasks else None
            while mark is not None and mark not in marks and mark not in self._context_labels:
                marks.add(mark)
                mark = mark.parent
        _extend(self._task_labels, tasks, self._task_order, "T")
        _extend(self._context_labels, marks, lambda mark: mark.order, "C")

    def where(self, record: Record) -> Where:
        """The labels of a record whose tasks and contexts are numbered."""
        info = self._tasks.get(record.task)
        return Where(
            self._task_labels[record.task],
            self._task_labels[info.parent if info else None],
            self._context_labels[record.context],
            self._context_labels[record.context.parent],
        )

    def of(self, item: Any) -> str | None:
        """The label of a numbered task or context (None: not numbered)."""
        return self._task_labels.get(item) or self._context_labels.get(item)

    def _task_order(self, task: asyncio.Task) -> float:
        # A task the factory never saw (the runner's own) sorts last.
        return self._tasks[task].order if task in self._tasks else float("inf")


def _extend(labels: dict[Any, str | None], items: set, order, prefix: str) -> None:
    """Label `items` in `order`, numbering on from the labels given so far."""
    start = len(labels)  # `labels` holds None, so numbering starts at len(labels)
    for n, item in enumerate(sorted(items, key=order), start):
        labels[item] = f"{prefix}{n}"


def label(records: list[Record], tasks: Mapping[asyncio.Task, TaskInfo]) -> list[Where]:
    """The labels of every record of a finished run, in the records' order."""
    labeller = Labeller(tasks)
    labeller.number(records)
    return [labeller.where(record) for record in records]
