"""A submission's audit entry is written with the task: one statement on PostgreSQL, one
transaction on SQLite, and never one without the other."""

from __future__ import annotations

import dataclasses
import uuid
from typing import Any

import pytest
from sqlalchemy import event

from taskmill.errors import StorageError
from tests.storages import BACKENDS
from tests.storages import runtime_on


@pytest.fixture(params=BACKENDS)
def runtime(request: Any, tmp_path: Any) -> Any:
    from taskmill_auth.store import auth_store

    with runtime_on(request.param, tmp_path, load_plugins=("sql", "auth")) as rt:
        auth_store(rt)
        yield rt


def _entry(task_id: uuid.UUID, action: str = "task.submit") -> dict[str, Any]:
    return {
        "actor": "key:k1",
        "tenant": "acme",
        "action": action,
        "target": str(task_id),
        "details": {"n": 1},
    }


def _statements(rt: Any) -> list[str]:
    seen: list[str] = []
    for engine in rt.storage.db.engines():
        event.listen(engine, "before_cursor_execute", lambda *a: seen.append(a[2].split()[0].upper()))
    return seen


def test_the_entry_is_written_in_the_task_statement(runtime: Any) -> None:
    assert runtime.storage.audits_with_tasks
    lc = runtime.lifecycle
    new = lc.build({"type": "j.echo"}, "acme")
    new = dataclasses.replace(new, id=uuid.uuid4())
    seen = _statements(runtime)
    ((task, created),) = lc.submit([new], audit=_entry(new.id))
    assert created and task.id == new.id
    if runtime.storage.db.is_sqlite:
        assert seen.count("INSERT") == 2  # one transaction: BEGIN IMMEDIATE, two inserts
    else:
        assert seen == ["WITH"]  # the task and its entry: one statement, one commit
    items, total = runtime.storage.audit.list(offset=0, limit=10, tenant="acme")
    assert total == 1 and items[0]["target"] == str(task.id) and items[0]["details"] == {"n": 1}
    assert items[0]["at"] is not None


def test_a_failing_entry_leaves_no_task(runtime: Any) -> None:
    lc = runtime.lifecycle
    new = lc.build({"type": "j.echo"}, "acme")
    new = dataclasses.replace(new, id=uuid.uuid4())
    bad = {**_entry(new.id), "actor": None}  # NOT NULL: the entry cannot be written
    with pytest.raises(StorageError, match="could not insert tasks"):
        lc.submit([new], audit=bad)
    assert runtime.storage.tasks.get_many([new.id], tenant="acme") == []
    assert runtime.storage.audit.list(offset=0, limit=10, tenant=None)[1] == 0


def test_a_storage_without_an_audit_store_refuses_the_entry(tmp_path: Any) -> None:
    with runtime_on("sqlite", tmp_path) as rt:
        assert not rt.storage.audits_with_tasks
        new = rt.lifecycle.build({"type": "j.echo"}, "acme")
        with pytest.raises(ValueError, match="no audit store"):
            rt.lifecycle.submit([new], audit=_entry(uuid.uuid4()))
        assert rt.storage.tasks.count_pending("acme") == 0
