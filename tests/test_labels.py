"""The labeller: tasks and contexts numbered in creation order, all at once or live."""

import asyncio
import contextvars
from contextvars import ContextVar

from ctxlab.labels import Labeller, Where, label
from ctxlab.probe import Recorder, probe
from ctxlab.runner import scenario_loop

var: ContextVar = ContextVar("var")


def record_child_before_parent():
    """A parent task starts a child and probes only after the child did:
    the records arrive child first, as an endpoint's do under a middleware."""
    recorder = Recorder()

    async def child():
        probe("child", var)

    async def parent():
        await asyncio.get_running_loop().create_task(child())
        probe("parent", var)

    with scenario_loop(recorder) as loop:
        loop.run_until_complete(loop.create_task(parent()))
    return recorder


class TestLabeller:
    """Numbers follow creation order whether records come at once or one by one."""

    def test_a_parent_is_numbered_before_its_child_whatever_the_arrival_order(self):
        recorder = record_child_before_parent()
        child, parent = label(recorder.records, recorder.tasks)
        assert (parent.task, child.task, child.parent_task) == ("T1", "T2", "T1")
        assert child.parent_context == parent.context  # the child runs in a copy of its parent's context

    def test_live_numbering_gives_the_labels_a_finished_run_gives(self):
        recorder = record_child_before_parent()
        live = Labeller(recorder.tasks)
        seen = []
        for record in recorder.records:
            live.number([record])
            seen.append(live.where(record))
        assert seen == label(recorder.records, recorder.tasks)

    def test_a_task_or_a_context_is_looked_up_by_itself(self):
        """What trace names things by: the label of a task, or of a context."""
        recorder = record_child_before_parent()
        labeller = Labeller(recorder.tasks)
        labeller.number(recorder.records)
        child, parent = recorder.records
        assert [labeller.of(parent.task), labeller.of(child.task)] == ["T1", "T2"]
        assert labeller.of(parent.context) == label(recorder.records, recorder.tasks)[1].context
        assert labeller.of(object()) is None


class TestRecords:
    """Records are numbered from 1 in the order probes ran; contexts name the one they copy."""

    def test_seq_counts_from_one(self):
        recorder = record_child_before_parent()
        assert [(r.seq, r.probe) for r in recorder.records] == [(1, "child"), (2, "parent")]

    def test_a_fresh_context_is_copied_from_nothing(self):
        recorder = Recorder()

        async def fresh():
            probe("fresh", var)

        with scenario_loop(recorder) as loop:
            loop.run_until_complete(contextvars.Context().run(loop.create_task, fresh()))
            loop.run_until_complete(contextvars.Context().run(loop.create_task, fresh()))
        assert label(recorder.records, recorder.tasks) == [Where("T1", None, "C1", None), Where("T2", None, "C2", None)]


class TestCopiesInsideATask:
    """Every distinct Context gets its own label, also a copy a task makes and runs itself."""

    def run_in_copy(self):
        recorder = Recorder()

        async def task():
            var.set("task")
            probe("task.before", var)
            copy = contextvars.copy_context()
            copy.run(var.set, "copy")
            copy.run(probe, "copy", var)
            copy.run(probe, "copy.again", var)
            probe("task.after", var)

        with scenario_loop(recorder) as loop:
            loop.run_until_complete(loop.create_task(task()))
        return {
            record.probe: (record.value, where)
            for record, where in zip(recorder.records, label(recorder.records, recorder.tasks))
        }

    def test_a_copy_run_inside_the_task_is_a_context_of_its_own(self):
        seen = self.run_in_copy()
        (_, before), (_, copy) = seen["task.before"], seen["copy"]
        assert (before.task, copy.task) == ("T1", "T1")
        assert copy.context != before.context
        assert copy.parent_context == before.context  # "copied from" the task's own

    def test_the_task_and_the_copy_keep_their_labels(self):
        seen = self.run_in_copy()
        assert seen["copy.again"][1].context == seen["copy"][1].context
        assert seen["task.after"][1].context == seen["task.before"][1].context
        assert (seen["copy"][0], seen["task.after"][0]) == ("copy", "task")  # what the probes saw is untouched

    def test_tasks_started_together_each_tell_their_copy_apart(self):
        """gather creates both tasks before either runs: on 3.10, where a
        task's context is found among the steps scheduled, several wait."""
        recorder = Recorder()

        async def task(name):
            var.set(name)
            probe(f"{name}.task", var)
            copy = contextvars.copy_context()
            copy.run(var.set, f"{name} copy")
            copy.run(probe, f"{name}.copy", var)

        async def both():
            await asyncio.gather(task("a"), task("b"))

        with scenario_loop(recorder) as loop:
            loop.run_until_complete(loop.create_task(both()))
        seen = {
            r.probe: (r.value, where) for r, where in zip(recorder.records, label(recorder.records, recorder.tasks))
        }
        for name in "ab":
            (in_task, task_where), (in_copy, copy_where) = seen[f"{name}.task"], seen[f"{name}.copy"]
            assert (in_task, in_copy) == (name, f"{name} copy")  # the app's own proof: two contexts
            assert copy_where.task == task_where.task and copy_where.context != task_where.context
