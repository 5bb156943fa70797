"""SQLAlchemy 2 table definitions of the SQL storage (the migrations create them)."""

from __future__ import annotations

import datetime as dt
from typing import Any

from sqlalchemy import JSON
from sqlalchemy import BigInteger
from sqlalchemy import Boolean
from sqlalchemy import Column
from sqlalchemy import DateTime
from sqlalchemy import Float
from sqlalchemy import Index
from sqlalchemy import Integer
from sqlalchemy import MetaData
from sqlalchemy import SmallInteger
from sqlalchemy import String
from sqlalchemy import Table
from sqlalchemy import Text
from sqlalchemy import TypeDecorator
from sqlalchemy import Uuid
from sqlalchemy import text
from sqlalchemy.dialects.postgresql import JSONB

__all__ = [
    "metadata",
    "tasks",
    "task_dependencies",
    "queues",
    "workers",
    "kv",
    "events",
    "event_cursors",
]

metadata = MetaData(
    naming_convention={
        "ix": "ix_%(table_name)s_%(column_0_N_name)s",
        "uq": "uq_%(table_name)s_%(column_0_N_name)s",
        "pk": "pk_%(table_name)s",
    }
)


class UTCDateTime(TypeDecorator):
    """Aware UTC datetimes on every database (SQLite stores naive UTC text)."""

    impl = DateTime(timezone=True)
    cache_ok = True

    def process_bind_param(self, value: dt.datetime | None, dialect: Any) -> dt.datetime | None:
        if value is None:
            return None
        if value.tzinfo is None:
            value = value.replace(tzinfo=dt.UTC)
        if dialect.name == "sqlite":
            return value.astimezone(dt.UTC).replace(tzinfo=None)
        return value

    def process_result_value(self, value: dt.datetime | None, dialect: Any) -> dt.datetime | None:
        if value is None:
            return None
        if value.tzinfo is None:
            return value.replace(tzinfo=dt.UTC)
        return value.astimezone(dt.UTC)


Json = JSON().with_variant(JSONB(), "postgresql")
Seq = BigInteger().with_variant(Integer(), "sqlite")

tasks = Table(
    "tasks",
    metadata,
    Column("seq", Seq, primary_key=True, autoincrement=True),
    Column("id", Uuid(), nullable=False, unique=True),
    Column("tenant", String(100), nullable=False),
    Column("type", String(200), nullable=False),
    Column("queue", String(200), nullable=False),
    Column("priority", SmallInteger, nullable=False),
    Column("payload", Json, nullable=False),
    Column("status", String(16), nullable=False),
    Column("attempts", Integer, nullable=False, server_default="0"),
    Column("budget_start", Integer, nullable=False, server_default="0"),
    Column("max_retries", Integer, nullable=False),
    Column("timeout", Integer, nullable=False),
    Column("retry_backoff", Float, nullable=False),
    Column("run_at", UTCDateTime()),
    Column("idempotency_key", String(200)),
    Column("request_hash", String(64)),
    Column("callback_url", Text),
    Column("tags", Json),
    Column("progress", Float),
    Column("cancel_requested", Boolean, nullable=False, server_default=text("false")),
    Column("result", Json),
    Column("error", Json),
    Column("worker", String(200)),
    Column("created_at", UTCDateTime(), nullable=False),
    Column("queued_at", UTCDateTime()),
    Column("started_at", UTCDateTime()),
    Column("finished_at", UTCDateTime()),
    Column("updated_at", UTCDateTime(), nullable=False),
    Column("workflow_id", Uuid()),
)
_queued = tasks.c.status == "queued"
Index(
    "ix_tasks_claim",
    tasks.c.queue,
    tasks.c.priority.desc(),
    tasks.c.queued_at,
    tasks.c.seq,
    postgresql_where=_queued,
    sqlite_where=_queued,
)
Index(
    "ix_tasks_due",
    tasks.c.run_at,
    postgresql_where=tasks.c.status == "scheduled",
    sqlite_where=tasks.c.status == "scheduled",
)
Index(
    "ix_tasks_running_worker",
    tasks.c.worker,
    postgresql_where=tasks.c.status == "running",
    sqlite_where=tasks.c.status == "running",
)
Index(
    "ix_tasks_waiting",
    tasks.c.seq,
    postgresql_where=tasks.c.status == "waiting",
    sqlite_where=tasks.c.status == "waiting",
)
Index(
    "uq_tasks_idempotency",
    tasks.c.tenant,
    tasks.c.idempotency_key,
    unique=True,
    postgresql_where=tasks.c.idempotency_key.isnot(None),
    sqlite_where=tasks.c.idempotency_key.isnot(None),
)
# Every index costs a write on each state change (a status change is never a HOT update), so the
# listing has just enough: newest first overall and per tenant, and per tenant and state; type,
# queue and tag filters are applied on top of those scans.
Index("ix_tasks_created", tasks.c.created_at)
Index("ix_tasks_tenant_created", tasks.c.tenant, tasks.c.created_at)
Index("ix_tasks_tenant_status_created", tasks.c.tenant, tasks.c.status, tasks.c.created_at)
Index(
    "ix_tasks_finished",
    tasks.c.finished_at,
    postgresql_where=tasks.c.status.in_(["completed", "failed", "cancelled"]),
    sqlite_where=tasks.c.status.in_(["completed", "failed", "cancelled"]),
)
Index(
    "ix_tasks_dead_letters",  # migration 0005: the dead-letter queue without a table scan
    tasks.c.tenant,
    tasks.c.queue,
    tasks.c.finished_at,
    postgresql_where=tasks.c.status == "failed",
    sqlite_where=tasks.c.status == "failed",
)
# PostgreSQL also has a GIN index on tags (jsonb_path_ops), created in the migration only.

task_dependencies = Table(
    "task_dependencies",
    metadata,
    Column("task_id", Uuid(), primary_key=True),
    Column("depends_on", Uuid(), primary_key=True),
)
Index("ix_task_dependencies_depends_on", task_dependencies.c.depends_on)

queues = Table(
    "queues",
    metadata,
    Column("name", String(200), primary_key=True),
    Column("paused", Boolean, nullable=False, server_default=text("false")),
    Column("updated_at", UTCDateTime(), nullable=False),
)

workers = Table(
    "workers",
    metadata,
    Column("id", String(200), primary_key=True),
    Column("host", String(255), nullable=False),
    Column("pid", Integer, nullable=False),
    Column("queues", Json, nullable=False),
    Column("concurrency", Integer, nullable=False),
    Column("current_task", Text),
    Column("started_at", UTCDateTime(), nullable=False),
    Column("last_heartbeat", UTCDateTime(), nullable=False),
    Column("processed", BigInteger, nullable=False, server_default="0"),
    Column("failed", BigInteger, nullable=False, server_default="0"),
)

kv = Table(
    "kv",
    metadata,
    Column("key", String(100), primary_key=True),
    Column("value", Text, nullable=False),
)

# The events journal (migration 0003): one row per task change, written by triggers on ``tasks``
# in the transaction of the change. Ids grow; consumers read ``id > cursor``.
events = Table(
    "events",
    metadata,
    Column("id", Seq, primary_key=True, autoincrement=True),
    Column("at", UTCDateTime(), nullable=False),
    Column("tenant", String(100), nullable=False),
    Column("task_id", Uuid(), nullable=False),
    Column("workflow_id", Uuid()),
    Column("queue", String(200), nullable=False),
    Column("type", String(200), nullable=False),
    Column("event", String(32), nullable=False),
)
Index("ix_events_task", events.c.task_id, events.c.id)
Index(
    "ix_events_workflow",
    events.c.workflow_id,
    events.c.id,
    postgresql_where=events.c.workflow_id.isnot(None),
    sqlite_where=events.c.workflow_id.isnot(None),
)

event_cursors = Table(
    "event_cursors",
    metadata,
    Column("name", String(100), primary_key=True),
    Column("position", BigInteger, nullable=False, server_default="0"),
    Column("lease_owner", String(200)),
    Column("lease_until", UTCDateTime()),
)
