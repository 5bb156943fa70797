"""Reads of the task store: single tasks, pages, dead letters and the manager's scans."""

from __future__ import annotations

import datetime as dt
import uuid
from collections.abc import Sequence
from typing import Any

from sqlalchemy import exists
from sqlalchemy import func
from sqlalchemy import literal_column
from sqlalchemy import or_
from sqlalchemy import select

from taskmill.plugin_api import DeadLetterQuery
from taskmill.plugin_api import Task
from taskmill.plugin_api import TaskQuery
from taskmill.plugin_api import TaskStatus
from taskmill_sql.db import Database
from taskmill_sql.tables import task_dependencies
from taskmill_sql.tables import tasks
from taskmill_sql.tables import workers

__all__ = ["TaskReads", "row_to_task", "FINAL"]

FINAL = ("completed", "failed", "cancelled")


def row_to_task(row: Any, depends_on: list[str] | None = None) -> Task:
    """A Task from a result row (or from the dict of values just inserted). ``depends_on`` lives
    in ``task_dependencies``: callers that show it pass it (see :meth:`TaskReads.with_deps`)."""
    m = row._mapping if hasattr(row, "_mapping") else row
    wf = m.get("workflow_id")
    return Task(
        id=m["id"] if isinstance(m["id"], uuid.UUID) else uuid.UUID(str(m["id"])),
        type=m["type"],
        queue=m["queue"],
        priority=m["priority"],
        payload=m["payload"] if m["payload"] is not None else {},
        status=TaskStatus(m["status"]),
        tenant=m["tenant"],
        attempts=m["attempts"],
        max_retries=m["max_retries"],
        timeout=m["timeout"],
        retry_backoff=m["retry_backoff"],
        run_at=m["run_at"],
        depends_on=depends_on or [],
        idempotency_key=m["idempotency_key"],
        callback_url=m["callback_url"],
        tags=list(m["tags"] or []),
        progress=m["progress"],
        cancel_requested=bool(m["cancel_requested"]),
        result=m["result"],
        error=m["error"],
        worker=m["worker"],
        created_at=m["created_at"],
        started_at=m["started_at"],
        finished_at=m["finished_at"],
        updated_at=m["updated_at"],
        budget_start=m["budget_start"],
        request_hash=m["request_hash"],
        queued_at=m["queued_at"],
        workflow_id=wf if wf is None or isinstance(wf, uuid.UUID) else uuid.UUID(str(wf)),
    )


class TaskReads:
    """The read half of :class:`taskmill_sql.tasks.SqlTaskStore`."""

    def __init__(self, db: Database) -> None:
        self.db = db

    def with_deps(self, conn: Any, rows: Sequence[Any]) -> list[Task]:
        """Tasks from rows with their ``depends_on`` (one query for all of them)."""
        if not rows:
            return []
        ids = [r.id for r in rows]
        deps: dict[Any, list[str]] = {}
        stmt = select(task_dependencies).where(task_dependencies.c.task_id.in_(ids))
        for r in conn.execute(stmt):
            deps.setdefault(r.task_id, []).append(str(r.depends_on))
        return [row_to_task(r, sorted(deps.get(r.id, []))) for r in rows]

    def get(self, task_id: uuid.UUID, *, tenant: str | None = None) -> Task | None:
        stmt = select(tasks).where(tasks.c.id == task_id)
        if tenant is not None:
            stmt = stmt.where(tasks.c.tenant == tenant)
        with self.db.one() as conn:
            rows = conn.execute(stmt).all()
            found = self.with_deps(conn, rows)
        return found[0] if found else None

    def get_many(self, ids: Sequence[uuid.UUID], *, tenant: str | None = None) -> list[Task]:
        if not ids:
            return []
        stmt = select(tasks).where(tasks.c.id.in_(list(ids)))
        if tenant is not None:
            stmt = stmt.where(tasks.c.tenant == tenant)
        with self.db.one() as conn:
            return self.with_deps(conn, conn.execute(stmt).all())

    def by_keys(self, tenant: str, keys: Sequence[str]) -> list[Task]:
        """The tasks of ``tenant`` carrying these idempotency keys (exact lookups on the unique
        index; a task's webhook deliveries are found this way), oldest first."""
        if not keys:
            return []
        stmt = (
            select(tasks)
            .where(tasks.c.tenant == tenant, tasks.c.idempotency_key.in_(list(keys)))
            .order_by(tasks.c.created_at, tasks.c.seq)
        )
        with self.db.one() as conn:
            return self.with_deps(conn, conn.execute(stmt).all())

    def _filters(self, q: TaskQuery) -> list[Any]:
        conds = []
        if q.tenant is not None:
            conds.append(tasks.c.tenant == q.tenant)
        if q.status:
            conds.append(tasks.c.status == str(q.status))
        if q.type:
            conds.append(tasks.c.type == q.type)
        if q.queue:
            conds.append(tasks.c.queue == q.queue)
        if q.workflow_id:
            conds.append(tasks.c.workflow_id == q.workflow_id)
        if q.created_after:
            conds.append(tasks.c.created_at >= q.created_after)
        if q.created_before:
            conds.append(tasks.c.created_at < q.created_before)
        if q.tag:
            if self.db.is_sqlite:
                conds.append(
                    exists(
                        select(literal_column("1"))
                        .select_from(func.json_each(tasks.c.tags).table_valued("value"))
                        .where(literal_column("value") == q.tag)
                    )
                )
            else:
                conds.append(tasks.c.tags.op("@>")(func.jsonb_build_array(q.tag)))
        return conds

    def list(self, query: TaskQuery) -> tuple[list[Task], int]:
        conds = self._filters(query)
        stmt = select(tasks).where(*conds).order_by(tasks.c.created_at.desc(), tasks.c.seq.desc())
        stmt = stmt.offset(query.offset).limit(query.limit)
        count = select(func.count()).select_from(tasks).where(*conds)
        with self.db.one() as conn:
            items = self.with_deps(conn, conn.execute(stmt).all())
            total = conn.execute(count).scalar_one()
        return items, total

    def find_failed(self, query: DeadLetterQuery) -> list[uuid.UUID]:
        conds = [tasks.c.status == "failed"]
        if query.tenant is not None:
            conds.append(tasks.c.tenant == query.tenant)
        if query.type:
            conds.append(tasks.c.type == query.type)
        if query.queue:
            conds.append(tasks.c.queue == query.queue)
        if query.failed_after:
            conds.append(tasks.c.finished_at >= query.failed_after)
        if query.failed_before:
            conds.append(tasks.c.finished_at < query.failed_before)
        stmt = select(tasks.c.id).where(*conds).order_by(tasks.c.finished_at).limit(query.limit)
        with self.db.one() as conn:
            return [r[0] for r in conn.execute(stmt)]

    def blocked_waiting(self, limit: int) -> list[Task]:
        dep = tasks.alias("dep")
        blocked = exists(
            select(literal_column("1"))
            .select_from(task_dependencies.join(dep, dep.c.id == task_dependencies.c.depends_on))
            .where(task_dependencies.c.task_id == tasks.c.id, dep.c.status.in_(["failed", "cancelled"]))
        )
        stmt = select(tasks).where(tasks.c.status == "waiting", blocked).limit(limit)
        with self.db.one() as conn:
            return [row_to_task(r) for r in conn.execute(stmt)]

    def running_of_workers(self, worker_ids: Sequence[str]) -> list[Task]:
        if not worker_ids:
            return []
        stmt = select(tasks).where(tasks.c.status == "running", tasks.c.worker.in_(list(worker_ids)))
        with self.db.one() as conn:
            return [row_to_task(r) for r in conn.execute(stmt)]

    def orphaned_running(self, older_than: dt.datetime) -> list[Task]:
        stmt = select(tasks).where(
            tasks.c.status == "running",
            tasks.c.started_at < older_than,
            or_(tasks.c.worker.is_(None), tasks.c.worker.not_in(select(workers.c.id))),
        )
        with self.db.one() as conn:
            return [row_to_task(r) for r in conn.execute(stmt)]

    def stale_queued(self, older_than: dt.datetime, limit: int, *, queue: str | None = None) -> list[Task]:
        stmt = select(tasks).where(tasks.c.status == "queued", tasks.c.queued_at < older_than)
        if queue is not None:
            stmt = stmt.where(tasks.c.queue == queue)
        stmt = stmt.order_by(tasks.c.priority.desc(), tasks.c.queued_at, tasks.c.seq).limit(limit)
        with self.db.one() as conn:
            return [row_to_task(r) for r in conn.execute(stmt)]

    def cancel_flags(self, ids: Sequence[uuid.UUID]) -> set[uuid.UUID]:
        stmt = select(tasks.c.id).where(
            tasks.c.id.in_(list(ids)),
            or_(tasks.c.cancel_requested.is_(True), tasks.c.status != "running"),
        )
        with self.db.one() as conn:
            return {r[0] for r in conn.execute(stmt)}

    def count_pending(self, tenant: str) -> int:
        stmt = (
            select(func.count())
            .select_from(tasks)
            .where(tasks.c.tenant == tenant, tasks.c.status.not_in(FINAL))
        )
        with self.db.one() as conn:
            return conn.execute(stmt).scalar_one()
