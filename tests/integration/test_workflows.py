"""Workflows on a real PostgreSQL: all or none, DAG order and failure propagation through the
manager, and the statements a fan-out and a fan-in of 1,000 cost (counted with SQLAlchemy's
``before_cursor_execute`` event on every engine of the storage)."""

from __future__ import annotations

import threading
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

import pytest
from sqlalchemy import event

from taskmill.config import Settings
from taskmill.errors import ValidationError
from taskmill.manager import Manager
from taskmill.models import Outcome
from taskmill.models import TaskQuery
from taskmill.runtime import build_runtime
from taskmill.workflows import WorkflowService
from tests.jobs import JobsPlugin

pytestmark = pytest.mark.integration


@pytest.fixture
def rt(pg_url: str) -> Iterator[Any]:
    settings = Settings(database_url=pg_url, load_plugins=("sql",), secret_key="test")
    runtime = build_runtime(settings, plugins=[JobsPlugin()], upgrade=True)
    try:
        yield runtime
    finally:
        runtime.close()


class Statements:
    """Counts statements sent to the database by every engine of a storage."""

    def __init__(self, storage: Any) -> None:
        self.engines = storage.db.engines()
        self.count = 0
        self._lock = threading.Lock()

    def _on(self, *_: Any) -> None:
        with self._lock:
            self.count += 1

    @contextmanager
    def counting(self) -> Iterator[Statements]:
        for engine in self.engines:
            event.listen(engine, "before_cursor_execute", self._on)
        try:
            yield self
        finally:
            for engine in self.engines:
                event.remove(engine, "before_cursor_execute", self._on)


def task(key: str, *deps: str, kind: str = "j.echo") -> dict[str, Any]:
    return {"key": key, "type": kind, "payload": {"k": key}, "depends_on": list(deps)}


def drain(rt: Any, fail: set[str] = frozenset(), limit: int = 1000) -> list[str]:
    """Run every runnable task as a batch-claiming worker would, ticking the manager between rounds."""
    manager = Manager(rt)
    order: list[str] = []
    idle = 0
    while idle < 2:
        manager.tick()
        claimed = rt.lifecycle.claim(["default"], limit, "w1")
        if not claimed:
            idle += 1
            continue
        idle = 0
        results = []
        for t in claimed:
            order.append(t.payload["k"])
            if t.payload["k"] in fail:
                results.append(
                    (t, Outcome(t.id, "failed", error={"type": "E", "message": "x"}, no_retry=True))
                )
            else:
                results.append((t, Outcome(t.id, "completed", result=None)))
        rt.lifecycle.finish(results, "w1")
    return order


def test_diamond_runs_in_order_and_a_failure_cancels_downstream(rt: Any) -> None:
    svc = WorkflowService(rt)
    wf = svc.submit(
        {"tasks": [task("a"), task("b", "a"), task("c", "a"), task("d", "b", "c"), task("e", "d")]}, "acme"
    )
    order = drain(rt, fail={"c"})
    assert order[0] == "a" and set(order[1:]) == {"b", "c"}
    got = svc.get(wf.id, "acme")
    assert {k: t.status.value for k, t in got.tasks} == {
        "a": "completed",
        "b": "completed",
        "c": "failed",
        "d": "cancelled",
        "e": "cancelled",
    }
    assert got.status == "failed"
    assert [w.id for w in svc.list(tenant="acme", status="failed", offset=0, limit=10)[0]] == [wf.id]


def test_all_or_none(rt: Any) -> None:
    svc = WorkflowService(rt)
    with pytest.raises(ValidationError):
        svc.submit({"tasks": [task("a"), task("b", "zzz")]}, "acme")
    with pytest.raises(ValidationError):
        svc.submit({"tasks": [task("a"), task("b", kind="no.such")]}, "acme")
    assert rt.storage.tasks.list(TaskQuery(limit=1))[1] == 0
    assert svc.list(tenant=None, status=None, offset=0, limit=10) == ([], 0)


@pytest.mark.slow
@pytest.mark.parametrize("shape", ["fan-out", "fan-in"])
def test_a_thousand_wide_workflow_costs_a_bounded_number_of_statements(rt: Any, shape: str) -> None:
    """1,000 edges either way: a root task and a workflow of 1,000 children depending on it, or a
    workflow of 1,000 parents and a sink task depending on all of them (a workflow holds 1,000)."""
    lifecycle = rt.lifecycle
    counter = Statements(rt.storage)
    with counter.counting():
        if shape == "fan-out":
            [(root, _)] = lifecycle.submit(
                [lifecycle.build({"type": "j.echo", "payload": {"k": "root"}}, "acme")]
            )
            items = [task(f"c{i}", str(root.id)) for i in range(1000)]
            wf = WorkflowService(rt).submit({"tasks": items}, "acme")
        else:
            wf = WorkflowService(rt).submit({"tasks": [task(f"p{i}") for i in range(1000)]}, "acme")
            ids = [str(t.id) for _, t in wf.tasks]
            sink = {"type": "j.echo", "payload": {"k": "sink"}, "depends_on": ids}
            lifecycle.submit([lifecycle.build(sink, "acme")])
        order = drain(rt)
    assert len(order) == 1001
    assert (order[0] == "root") if shape == "fan-out" else (order[-1] == "sink")
    assert WorkflowService(rt).get(wf.id, "acme").status == "completed"
    per_task = counter.count / 1001
    print(f"\n{shape} of 1,000: {counter.count} statements, {per_task:.3f} per task")
    # a few manager ticks (≈ 15 statements each) plus set-based submits, claims and outcomes;
    # one statement per edge would be ≥ 1,000
    assert counter.count < 200, counter.count
