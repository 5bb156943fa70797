"""The queue store: pause flags and per-queue statistics."""

from __future__ import annotations

import datetime as dt

from sqlalchemy import func
from sqlalchemy import insert
from sqlalchemy import select
from sqlalchemy import update
from sqlalchemy.exc import IntegrityError

from taskmill.plugin_api import QueueInfo
from taskmill.plugin_api import utcnow
from taskmill_sql.db import Database
from taskmill_sql.tables import queues
from taskmill_sql.tables import tasks

__all__ = ["SqlQueueStore"]


class SqlQueueStore:
    """:class:`taskmill.stores.QueueStore` on SQL. Claims and starts read the ``paused`` flag in
    their own statement, so a pause holds from the commit of :meth:`set_paused`."""

    def __init__(self, db: Database) -> None:
        self.db = db

    def set_paused(self, name: str, paused: bool) -> None:
        now = utcnow()
        with self.db.tx() as conn:
            n = conn.execute(
                update(queues).where(queues.c.name == name).values(paused=paused, updated_at=now)
            ).rowcount
            if not n:
                try:
                    with conn.begin_nested():
                        conn.execute(insert(queues).values(name=name, paused=paused, updated_at=now))
                except IntegrityError:
                    conn.execute(
                        update(queues).where(queues.c.name == name).values(paused=paused, updated_at=now)
                    )

    def paused(self) -> set[str]:
        with self.db.one() as conn:
            return {r[0] for r in conn.execute(select(queues.c.name).where(queues.c.paused.is_(True)))}

    def stats(self, tenant: str | None) -> list[QueueInfo]:
        conds = [tasks.c.tenant == tenant] if tenant is not None else []
        counts = (
            select(tasks.c.queue, tasks.c.status, func.count())
            .where(*conds)
            .group_by(tasks.c.queue, tasks.c.status)
        )
        oldest = (
            select(tasks.c.queue, func.min(tasks.c.queued_at))
            .where(tasks.c.status == "queued", *conds)
            .group_by(tasks.c.queue)
        )
        with self.db.one() as conn:
            known = {r.name: r.paused for r in conn.execute(select(queues.c.name, queues.c.paused))}
            rows = conn.execute(counts).all()
            oldest_rows = conn.execute(oldest).all()
        out: dict[str, QueueInfo] = {}
        for name, paused in known.items():
            out[name] = QueueInfo(name=name, paused=bool(paused))
        for queue, status, n in rows:
            info = out.setdefault(queue, QueueInfo(name=queue))
            info.depth[status] = n
        now = utcnow()
        for queue, first in oldest_rows:
            if first is not None:
                if first.tzinfo is None:
                    first = first.replace(tzinfo=dt.UTC)
                out[queue].oldest_queued_age = max(0.0, (now - first).total_seconds())
        return [out[k] for k in sorted(out)]
