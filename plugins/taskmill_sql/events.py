"""The events store: reads of the journal, its pruning, and the cursors of its consumers.

The journal is written by triggers on ``tasks`` (migration 0003) in the transaction of each
change, so no code path can change a task without its event. Reads are by ``id > cursor`` on the
primary key (``ix_events_task`` serves per-task reads, ``ix_events_workflow`` per-workflow ones).
"""

from __future__ import annotations

import datetime as dt
import uuid
from typing import Any

from sqlalchemy import delete
from sqlalchemy import func
from sqlalchemy import insert
from sqlalchemy import or_
from sqlalchemy import select
from sqlalchemy import update
from sqlalchemy.exc import IntegrityError

from taskmill.plugin_api import Event
from taskmill.plugin_api import EventQuery
from taskmill.plugin_api import utcnow
from taskmill_sql.db import Database
from taskmill_sql.tables import event_cursors
from taskmill_sql.tables import events

__all__ = ["SqlEventStore"]


def _event(row: Any) -> Event:
    return Event(
        id=row.id,
        at=row.at,
        tenant=row.tenant,
        task_id=row.task_id if isinstance(row.task_id, uuid.UUID) else uuid.UUID(str(row.task_id)),
        workflow_id=row.workflow_id,
        queue=row.queue,
        type=row.type,
        event=row.event,
    )


class SqlEventStore:
    """:class:`taskmill.stores.EventStore` on SQL."""

    def __init__(self, db: Database) -> None:
        self.db = db

    def read(self, after_id: int, query: EventQuery | None = None, limit: int = 500) -> list[Event]:
        q = query or EventQuery()
        conds = [events.c.id > after_id]
        if q.tenant is not None:
            conds.append(events.c.tenant == q.tenant)
        for column, values in (
            (events.c.task_id, q.task_ids),
            (events.c.workflow_id, q.workflow_ids),
            (events.c.queue, q.queues),
            (events.c.type, q.types),
            (events.c.event, q.events),
        ):
            if values:
                conds.append(column.in_(list(values)))
        stmt = select(events).where(*conds).order_by(events.c.id).limit(limit)
        with self.db.one() as conn:
            return [_event(r) for r in conn.execute(stmt)]

    def last_id(self) -> int:
        with self.db.one() as conn:
            return conn.execute(select(func.max(events.c.id))).scalar() or 0

    def oldest_id(self) -> int:
        with self.db.one() as conn:
            return conn.execute(select(func.min(events.c.id))).scalar() or 0

    def prune(self, before: dt.datetime, limit: int = 10_000) -> int:
        # Ids and times grow together: look at the oldest row first (nothing to do: one row
        # read), then delete among the ``limit`` oldest only, never scanning the whole journal.
        first = select(events.c.at).order_by(events.c.id).limit(1)
        oldest = select(events.c.id, events.c.at).order_by(events.c.id).limit(limit).subquery()
        pick = select(oldest.c.id).where(oldest.c.at < before)
        with self.db.one() as conn:
            at = conn.execute(first).scalar()
            if at is None or at >= before:
                return 0
            return conn.execute(delete(events).where(events.c.id.in_(pick))).rowcount

    # ---- consumers' cursors -----------------------------------------------------------------
    def get_cursor(self, name: str) -> int:
        with self.db.one() as conn:
            pos = conn.execute(select(event_cursors.c.position).where(event_cursors.c.name == name)).scalar()
            if pos is not None:
                return pos
            try:
                conn.execute(insert(event_cursors).values(name=name, position=0))
            except IntegrityError:
                pass
            return conn.execute(
                select(event_cursors.c.position).where(event_cursors.c.name == name)
            ).scalar_one()

    def lease_cursor(self, name: str, owner: str, seconds: float) -> int | None:
        self.get_cursor(name)
        now = utcnow()
        stmt = (
            update(event_cursors)
            .where(
                event_cursors.c.name == name,
                or_(
                    event_cursors.c.lease_owner.is_(None),
                    event_cursors.c.lease_owner == owner,
                    event_cursors.c.lease_until < now,
                ),
            )
            .values(lease_owner=owner, lease_until=now + dt.timedelta(seconds=seconds))
            .returning(event_cursors.c.position)
        )
        with self.db.one() as conn:
            return conn.execute(stmt).scalar()

    def advance_cursor(self, name: str, from_id: int, to_id: int, owner: str | None = None) -> bool:
        conds = [event_cursors.c.name == name, event_cursors.c.position == from_id]
        if owner is not None:
            conds.append(event_cursors.c.lease_owner == owner)
        stmt = update(event_cursors).where(*conds).values(position=to_id, lease_owner=None, lease_until=None)
        with self.db.one() as conn:
            return conn.execute(stmt).rowcount == 1
