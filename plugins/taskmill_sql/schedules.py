"""The schedules store (``storage.schedules``): periodic tasks per tenant, on SQLAlchemy Core.

The one write that matters is :meth:`SqlScheduleStore.advance`: ``UPDATE … WHERE id = :id AND
next_run_at = :due``, so of several managers firing the same due time exactly one moves the
schedule on. :meth:`due` reads the partial index of active schedules by ``next_run_at``.
"""

from __future__ import annotations

import datetime as dt
import uuid
from typing import Any

from sqlalchemy import Boolean
from sqlalchemy import Column
from sqlalchemy import Index
from sqlalchemy import Integer
from sqlalchemy import String
from sqlalchemy import Table
from sqlalchemy import UniqueConstraint
from sqlalchemy import Uuid
from sqlalchemy import delete
from sqlalchemy import false
from sqlalchemy import func
from sqlalchemy import insert
from sqlalchemy import select
from sqlalchemy import text
from sqlalchemy import update
from sqlalchemy.exc import IntegrityError

from taskmill.plugin_api import Conflict
from taskmill.plugin_api import Schedule
from taskmill.plugin_api import utcnow
from taskmill_sql.tables import Json
from taskmill_sql.tables import UTCDateTime
from taskmill_sql.tables import metadata

__all__ = ["schedules", "SqlScheduleStore"]

schedules = Table(
    "schedules",
    metadata,
    Column("id", Uuid(), primary_key=True),
    Column("tenant", String(100), nullable=False),
    Column("name", String(200), nullable=False),
    Column("cron", String(200)),
    Column("interval", Integer),
    Column("timezone", String(64), nullable=False),
    Column("task", Json, nullable=False),
    Column("paused", Boolean, nullable=False, server_default=text("false")),
    Column("next_run_at", UTCDateTime()),
    Column("last_run_at", UTCDateTime()),
    Column("last_task_id", Uuid()),
    Column("created_at", UTCDateTime(), nullable=False),
    Column("updated_at", UTCDateTime(), nullable=False),
    UniqueConstraint("tenant", "name", name="uq_schedules_tenant_name"),
)
Index(
    "ix_schedules_due",
    schedules.c.next_run_at,
    postgresql_where=schedules.c.paused == false(),
    sqlite_where=schedules.c.paused == false(),
)


def _row_to_schedule(row: Any) -> Schedule:
    m = row._mapping
    return Schedule(
        id=m["id"],
        tenant=m["tenant"],
        name=m["name"],
        task=dict(m["task"] or {}),
        cron=m["cron"],
        interval=m["interval"],
        timezone=m["timezone"],
        paused=bool(m["paused"]),
        next_run_at=m["next_run_at"],
        last_run_at=m["last_run_at"],
        last_task_id=m["last_task_id"],
        created_at=m["created_at"],
        updated_at=m["updated_at"],
    )


class SqlScheduleStore:
    """Schedules on the storage's :class:`~taskmill_sql.db.Database`."""

    def __init__(self, db: Any) -> None:
        self.db = db

    def create(self, schedule: Schedule) -> None:
        """Insert a schedule.

        Raises:
            Conflict: the tenant has a schedule of that name.
        """
        values = {
            "id": schedule.id,
            "tenant": schedule.tenant,
            "name": schedule.name,
            "cron": schedule.cron,
            "interval": schedule.interval,
            "timezone": schedule.timezone,
            "task": schedule.task,
            "paused": schedule.paused,
            "next_run_at": schedule.next_run_at,
            "last_run_at": schedule.last_run_at,
            "last_task_id": schedule.last_task_id,
            "created_at": schedule.created_at or utcnow(),
            "updated_at": schedule.updated_at or utcnow(),
        }
        try:
            with self.db.one() as conn:
                conn.execute(insert(schedules).values(**values))
        except IntegrityError:
            raise Conflict(
                f"a schedule named {schedule.name!r} exists", name=["taken in this tenant"]
            ) from None

    def get(self, name: str, *, tenant: str | None) -> Schedule | None:
        """The schedule ``name`` of ``tenant``; with ``tenant`` None (an admin), the only one of
        that name in any tenant (None when there are several or none)."""
        stmt = select(schedules).where(schedules.c.name == name)
        if tenant is not None:
            stmt = stmt.where(schedules.c.tenant == tenant)
        with self.db.one() as conn:
            rows = conn.execute(stmt.limit(2)).all()
        return _row_to_schedule(rows[0]) if len(rows) == 1 else None

    def get_by_id(self, schedule_id: uuid.UUID) -> Schedule | None:
        with self.db.one() as conn:
            row = conn.execute(select(schedules).where(schedules.c.id == schedule_id)).first()
        return _row_to_schedule(row) if row else None

    def list(self, *, tenant: str | None, offset: int, limit: int) -> tuple[list[Schedule], int]:
        """One page of schedules by name (of ``tenant``, or every tenant) and the total."""
        conds = [schedules.c.tenant == tenant] if tenant is not None else []
        stmt = (
            select(schedules)
            .where(*conds)
            .order_by(schedules.c.name, schedules.c.tenant)
            .offset(offset)
            .limit(limit)
        )
        with self.db.one() as conn:
            items = [_row_to_schedule(r) for r in conn.execute(stmt)]
            total = conn.execute(select(func.count()).select_from(schedules).where(*conds)).scalar_one()
        return items, total

    def delete(self, schedule_id: uuid.UUID) -> bool:
        with self.db.one() as conn:
            return conn.execute(delete(schedules).where(schedules.c.id == schedule_id)).rowcount > 0

    def set_paused(
        self, schedule_id: uuid.UUID, paused: bool, next_run_at: dt.datetime | None
    ) -> Schedule | None:
        """Pause or resume; returns the schedule as written (None when it is gone)."""
        stmt = (
            update(schedules)
            .where(schedules.c.id == schedule_id)
            .values(paused=paused, next_run_at=next_run_at, updated_at=utcnow())
            .returning(schedules)
        )
        with self.db.one() as conn:
            row = conn.execute(stmt).first()
        return _row_to_schedule(row) if row else None

    def due(self, now: dt.datetime, limit: int) -> list[Schedule]:
        """Active schedules whose ``next_run_at`` has come, earliest first."""
        stmt = (
            select(schedules)
            .where(schedules.c.paused == false(), schedules.c.next_run_at <= now)
            .order_by(schedules.c.next_run_at)
            .limit(limit)
        )
        with self.db.one() as conn:
            return [_row_to_schedule(r) for r in conn.execute(stmt)]

    def active(self, limit: int = 10_000) -> list[Schedule]:
        """Every active schedule (to arm an external timer), earliest first."""
        stmt = (
            select(schedules)
            .where(schedules.c.paused == false(), schedules.c.next_run_at.isnot(None))
            .order_by(schedules.c.next_run_at)
            .limit(limit)
        )
        with self.db.one() as conn:
            return [_row_to_schedule(r) for r in conn.execute(stmt)]

    def advance(
        self,
        schedule_id: uuid.UUID,
        due: dt.datetime,
        next_run_at: dt.datetime,
        *,
        last_run_at: dt.datetime,
        last_task_id: uuid.UUID | None,
    ) -> bool:
        """Move the schedule from due time ``due`` to ``next_run_at`` if it is still at ``due``
        and active. True for the one caller that moved it."""
        values: dict[str, Any] = {
            "next_run_at": next_run_at,
            "last_run_at": last_run_at,
            "updated_at": utcnow(),
        }
        if last_task_id is not None:
            values["last_task_id"] = last_task_id
        stmt = (
            update(schedules)
            .where(
                schedules.c.id == schedule_id,
                schedules.c.next_run_at == due,
                schedules.c.paused == false(),
            )
            .values(**values)
        )
        with self.db.one() as conn:
            return conn.execute(stmt).rowcount == 1
