"""The SQL plugin's insights store (``storage.insights``): the dashboard's bounded reads.

See :mod:`taskmill.insights` for the contract and why each read stays cheap at a million tasks:
keyset pages on ``(created_at, seq)`` (``ix_tasks_created`` / ``ix_tasks_tenant_created``), payload
search within a window, unfinished states counted through their partial indexes, per-minute
buckets from ``ix_tasks_created`` / ``ix_tasks_finished``, dead letters from
``ix_tasks_dead_letters``.
"""

from __future__ import annotations

import datetime as dt
import json
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

from sqlalchemy import Integer
from sqlalchemy import Text
from sqlalchemy import and_
from sqlalchemy import cast
from sqlalchemy import exists
from sqlalchemy import func
from sqlalchemy import literal_column
from sqlalchemy import or_
from sqlalchemy import select
from sqlalchemy.dialects.postgresql import JSONB
from sqlalchemy.exc import DBAPIError
from sqlalchemy.exc import OperationalError

from taskmill.plugin_api import LIVE_STATES
from taskmill.plugin_api import SEARCH_WINDOW
from taskmill.plugin_api import Page
from taskmill.plugin_api import StorageUnavailable
from taskmill.plugin_api import Task
from taskmill.plugin_api import TaskFilter
from taskmill.plugin_api import TaskStatus
from taskmill.plugin_api import decode_cursor
from taskmill.plugin_api import encode_cursor
from taskmill.plugin_api import parse_payload_query
from taskmill_sql.tables import queues as queues_table
from taskmill_sql.tables import task_dependencies
from taskmill_sql.tables import tasks
from taskmill_sql.task_reads import row_to_task

__all__ = ["SqlInsights"]

WEBHOOK_TYPE = "taskmill.webhook"


def _minute(column: Any, sqlite: bool) -> Any:
    """The minute (seconds since the epoch // 60) of a timestamp column."""
    if sqlite:
        return cast(func.strftime("%s", column), Integer) // 60
    return cast(func.floor(func.extract("epoch", column) / 60), Integer)


class SqlInsights:
    """The insights store of one SQL storage (read-only, through its ``auto`` engine)."""

    def __init__(self, storage: Any) -> None:
        self.storage = storage
        self.sqlite = bool(getattr(storage, "is_sqlite", False))

    @contextmanager
    def _conn(self) -> Iterator[Any]:
        try:
            with self.storage.auto.connect() as conn:
                yield conn
        except OperationalError as exc:
            raise StorageUnavailable(f"database unavailable: {str(exc).splitlines()[0][:200]}") from None
        except DBAPIError as exc:
            if exc.connection_invalidated:
                raise StorageUnavailable("database unavailable") from None
            raise

    @property
    def has_workflows(self) -> bool:
        return "workflow_id" in tasks.c

    # ---- overview --------------------------------------------------------------------------------
    def live_counts(self) -> list[tuple[str, str, str, int, dt.datetime | None]]:
        """``(tenant, queue, status, count, oldest queued_at)`` for the unfinished states and the
        dead letters (each state has a partial or leading index)."""
        stmt = (
            select(
                tasks.c.tenant,
                tasks.c.queue,
                tasks.c.status,
                func.count(),
                func.min(tasks.c.queued_at),
            )
            .where(tasks.c.status.in_(LIVE_STATES))
            .group_by(tasks.c.tenant, tasks.c.queue, tasks.c.status)
        )
        with self._conn() as conn:
            rows = conn.execute(stmt).all()
        out = []
        for tenant, queue, status, n, oldest in rows:
            if isinstance(oldest, str):  # SQLite gives text for an aggregate over the column
                oldest = dt.datetime.fromisoformat(oldest)
            if oldest is not None and oldest.tzinfo is None:
                oldest = oldest.replace(tzinfo=dt.UTC)
            out.append((tenant, queue, status, int(n), oldest if status == "queued" else None))
        return out

    def known_queues(self) -> dict[str, bool]:
        """Queues with a pause flag on record → paused."""
        with self._conn() as conn:
            rows = conn.execute(select(queues_table.c.name, queues_table.c.paused))
            return {name: bool(paused) for name, paused in rows}

    def submitted_per_minute(
        self, since: dt.datetime, before: dt.datetime | None = None
    ) -> list[tuple[str, str, int, int]]:
        """``(tenant, queue, minute, count)`` of tasks created at or after ``since`` (and before
        ``before``)."""
        minute = _minute(tasks.c.created_at, self.sqlite).label("minute")
        upper = [] if before is None else [tasks.c.created_at < before]
        stmt = (
            select(tasks.c.tenant, tasks.c.queue, minute, func.count())
            .where(tasks.c.created_at >= since, *upper)
            .group_by(tasks.c.tenant, tasks.c.queue, minute)
        )
        with self._conn() as conn:
            return [(t, q, int(m), int(n)) for t, q, m, n in conn.execute(stmt)]

    def finished_per_minute(
        self, since: dt.datetime, before: dt.datetime | None = None
    ) -> list[tuple[str, str, str, int, int]]:
        """``(tenant, queue, status, minute, count)`` of tasks that ended at or after ``since`` (and
        before ``before``)."""
        minute = _minute(tasks.c.finished_at, self.sqlite).label("minute")
        upper = [] if before is None else [tasks.c.finished_at < before]
        final = tasks.c.status.in_(("completed", "failed", "cancelled"))
        stmt = (
            select(tasks.c.tenant, tasks.c.queue, tasks.c.status, minute, func.count())
            .where(final, tasks.c.finished_at >= since, *upper)
            .group_by(tasks.c.tenant, tasks.c.queue, tasks.c.status, minute)
        )
        with self._conn() as conn:
            return [(t, q, s, int(m), int(n)) for t, q, s, m, n in conn.execute(stmt)]

    # ---- task lists ------------------------------------------------------------------------------
    def _conditions(self, f: TaskFilter) -> list[Any]:
        conds: list[Any] = []
        if f.tenant is not None:
            conds.append(tasks.c.tenant == f.tenant)
        if f.status:
            conds.append(tasks.c.status == str(TaskStatus(f.status)))
        if f.type:
            conds.append(tasks.c.type == f.type)
        if f.queue:
            conds.append(tasks.c.queue == f.queue)
        if f.workflow and self.has_workflows:
            try:
                conds.append(tasks.c.workflow_id == uuid.UUID(f.workflow))
            except ValueError:
                conds.append(literal_column("1") == 0)
        if f.created_after:
            conds.append(tasks.c.created_at >= f.created_after)
        if f.created_before:
            conds.append(tasks.c.created_at < f.created_before)
        if f.tag:
            if self.sqlite:
                conds.append(
                    exists(
                        select(literal_column("1"))
                        .select_from(func.json_each(tasks.c.tags).table_valued("value"))
                        .where(literal_column("value") == f.tag)
                    )
                )
            else:
                conds.append(tasks.c.tags.op("@>")(func.jsonb_build_array(f.tag)))
        return conds

    def _payload_condition(self, source: Any, text: str) -> Any:
        parsed = parse_payload_query(text)
        if isinstance(parsed, str):
            pattern = "%" + parsed.replace("\\", "\\\\").replace("%", "\\%").replace("_", "\\_") + "%"
            as_text = cast(source.c.payload, Text)
            if self.sqlite:
                return as_text.like(pattern, escape="\\")
            return as_text.ilike(pattern, escape="\\")
        path, value = parsed
        if not self.sqlite:
            doc: Any = value
            for part in reversed(path):
                doc = {part: doc}
            return source.c.payload.op("@>")(cast(json.dumps(doc), JSONB))
        element = source.c.payload[tuple(path)] if len(path) > 1 else source.c.payload[path[0]]
        if isinstance(value, bool):
            return element.as_boolean() == value
        if isinstance(value, int | float):
            return element.as_float() == float(value)
        if value is None:
            return func.json_type(source.c.payload, "$." + ".".join(path)) == "null"
        return element.as_string() == str(value)

    def tasks_page(self, f: TaskFilter, *, cursor: str | None, limit: int) -> Page:
        """The newest tasks matching ``f`` after ``cursor``: a keyset page, no total count."""
        conds = self._conditions(f)
        position = decode_cursor(cursor)
        if position is not None:
            at, seq = position
            conds.append(or_(tasks.c.created_at < at, and_(tasks.c.created_at == at, tasks.c.seq < seq)))
        order = (tasks.c.created_at.desc(), tasks.c.seq.desc())
        exhausted = False
        if f.payload:
            window = select(tasks).where(*conds).order_by(*order).limit(SEARCH_WINDOW).subquery()
            stmt = (
                select(window)
                .where(self._payload_condition(window, f.payload))
                .order_by(window.c.created_at.desc(), window.c.seq.desc())
                .limit(limit + 1)
            )
        else:
            stmt = select(tasks).where(*conds).order_by(*order).limit(limit + 1)
        with self._conn() as conn:
            rows = conn.execute(stmt).all()
            if f.payload and len(rows) <= limit:
                # were there more tasks than the window holds? (the search stopped early)
                probe = select(tasks.c.seq).where(*conds).order_by(*order).offset(SEARCH_WINDOW).limit(1)
                exhausted = conn.execute(probe).first() is not None
        items = [row_to_task(r) for r in rows[:limit]]
        next_cursor = None
        if len(rows) > limit:
            last = rows[limit - 1]._mapping
            created = last["created_at"]
            next_cursor = encode_cursor(created, int(last["seq"]))
        return Page(items, next_cursor, exhausted)

    # ---- dead letters ----------------------------------------------------------------------------
    def _failed_conditions(
        self, tenant: str | None, type_: str | None, queue: str | None, error_type: str | None = None
    ) -> list[Any]:
        conds = [tasks.c.status == "failed"]
        if tenant is not None:
            conds.append(tasks.c.tenant == tenant)
        if type_:
            conds.append(tasks.c.type == type_)
        if queue:
            conds.append(tasks.c.queue == queue)
        if error_type == "(none)":
            conds.append(self._error_type().is_(None))
        elif error_type:
            conds.append(self._error_type() == error_type)
        return conds

    def _error_type(self) -> Any:
        return tasks.c.error["type"].as_string()

    def dead_letter_groups(
        self, tenant: str | None, *, type_: str | None = None, queue: str | None = None
    ) -> list[dict[str, Any]]:
        """Failed tasks grouped by error type: count, last failure, an example message."""
        err = self._error_type().label("error_type")
        stmt = (
            select(err, func.count(), func.max(tasks.c.finished_at))
            .where(*self._failed_conditions(tenant, type_, queue))
            .group_by(err)
            .order_by(func.count().desc())
            .limit(200)
        )
        with self._conn() as conn:
            rows = conn.execute(stmt).all()
        out = []
        for error_type, n, last in rows:
            if isinstance(last, str):
                last = dt.datetime.fromisoformat(last)
            if last is not None and last.tzinfo is None:
                last = last.replace(tzinfo=dt.UTC)
            out.append({"error_type": error_type or "(none)", "count": int(n), "last_failed": last})
        return out

    def dead_letters(
        self,
        tenant: str | None,
        *,
        type_: str | None = None,
        queue: str | None = None,
        error_type: str | None = None,
        cursor: str | None = None,
        limit: int = 50,
    ) -> Page:
        """Failed tasks, newest first, as a keyset page."""
        conds = self._failed_conditions(tenant, type_, queue, error_type)
        position = decode_cursor(cursor)
        if position is not None:
            at, seq = position
            conds.append(or_(tasks.c.created_at < at, and_(tasks.c.created_at == at, tasks.c.seq < seq)))
        order = (tasks.c.created_at.desc(), tasks.c.seq.desc())
        stmt = select(tasks).where(*conds).order_by(*order).limit(limit + 1)
        with self._conn() as conn:
            rows = conn.execute(stmt).all()
        items = [row_to_task(r) for r in rows[:limit]]
        nxt = None
        if len(rows) > limit:
            last = rows[limit - 1]._mapping
            nxt = encode_cursor(last["created_at"], int(last["seq"]))
        return Page(items, nxt)

    def failed_ids(
        self,
        tenant: str | None,
        *,
        type_: str | None = None,
        queue: str | None = None,
        error_type: str | None = None,
        limit: int,
    ) -> list[uuid.UUID]:
        """Ids of failed tasks matching the filter, oldest failure first, at most ``limit``."""
        conds = self._failed_conditions(tenant, type_, queue, error_type)
        stmt = select(tasks.c.id).where(*conds).order_by(tasks.c.finished_at, tasks.c.seq).limit(limit)
        with self._conn() as conn:
            return [r[0] if isinstance(r[0], uuid.UUID) else uuid.UUID(str(r[0])) for r in conn.execute(stmt)]

    def count_failed(
        self,
        tenant: str | None,
        *,
        type_: str | None = None,
        queue: str | None = None,
        error_type: str | None = None,
        cap: int,
    ) -> int:
        """How many failed tasks match (counted up to ``cap``)."""
        conds = self._failed_conditions(tenant, type_, queue, error_type)
        inner = select(tasks.c.seq).where(*conds).limit(cap).subquery()
        with self._conn() as conn:
            return int(conn.execute(select(func.count()).select_from(inner)).scalar_one())

    # ---- one task's neighbours -------------------------------------------------------------------
    def dependents(self, task_id: uuid.UUID, tenant: str | None, limit: int = 100) -> list[Task]:
        """Tasks that depend on this one (``ix_task_dependencies_depends_on``)."""
        ids = select(task_dependencies.c.task_id).where(task_dependencies.c.depends_on == task_id)
        conds = [tasks.c.id.in_(ids)]
        if tenant is not None:
            conds.append(tasks.c.tenant == tenant)
        stmt = select(tasks).where(*conds).order_by(tasks.c.created_at).limit(limit)
        with self._conn() as conn:
            return [row_to_task(r) for r in conn.execute(stmt)]

    def deliveries(self, task: Task, limit: int = 20) -> list[Task]:
        """The webhook deliveries of a task: ``taskmill.webhook`` tasks naming it, submitted when it
        ended (a bounded range of ``ix_tasks_tenant_created``)."""
        if not task.callback_url or task.finished_at is None:
            return []
        start = task.finished_at - dt.timedelta(seconds=5)
        stmt = (
            select(tasks)
            .where(
                tasks.c.tenant == task.tenant,
                tasks.c.created_at >= start,
                tasks.c.created_at < start + dt.timedelta(minutes=10),
                tasks.c.type == WEBHOOK_TYPE,
                self._payload_condition(tasks, f"task_id={json.dumps(str(task.id))}"),
            )
            .order_by(tasks.c.created_at)
            .limit(limit)
        )
        with self._conn() as conn:
            return [row_to_task(r) for r in conn.execute(stmt)]
