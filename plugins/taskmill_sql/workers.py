"""The worker store: registration, heartbeats and the removal of dead workers."""

from __future__ import annotations

import datetime as dt
from collections.abc import Sequence
from typing import Any

from sqlalchemy import delete
from sqlalchemy import insert
from sqlalchemy import select
from sqlalchemy import update

from taskmill.plugin_api import WorkerInfo
from taskmill.plugin_api import utcnow
from taskmill_sql.db import Database
from taskmill_sql.tables import workers

__all__ = ["SqlWorkerStore"]


def _worker_from_row(row: Any) -> WorkerInfo:
    m = row._mapping
    return WorkerInfo(
        id=m["id"],
        host=m["host"],
        pid=m["pid"],
        queues=list(m["queues"] or []),
        concurrency=m["concurrency"],
        current_task=m["current_task"],
        started_at=m["started_at"],
        last_heartbeat=m["last_heartbeat"],
        processed=m["processed"],
        failed=m["failed"],
    )


class SqlWorkerStore:
    """:class:`taskmill.stores.WorkerStore` on SQL; every method is one statement."""

    def __init__(self, db: Database) -> None:
        self.db = db

    def register(self, info: WorkerInfo) -> None:
        now = utcnow()
        with self.db.one() as conn:
            conn.execute(
                insert(workers).values(
                    id=info.id,
                    host=info.host,
                    pid=info.pid,
                    queues=info.queues,
                    concurrency=info.concurrency,
                    current_task=info.current_task,
                    started_at=info.started_at or now,
                    last_heartbeat=now,
                    processed=0,
                    failed=0,
                )
            )

    def heartbeat(self, worker_id: str, values: dict[str, Any]) -> bool:
        vals = dict(values)
        vals.setdefault("last_heartbeat", utcnow())
        with self.db.one() as conn:
            return conn.execute(update(workers).where(workers.c.id == worker_id).values(**vals)).rowcount > 0

    def unregister(self, worker_id: str) -> None:
        with self.db.one() as conn:
            conn.execute(delete(workers).where(workers.c.id == worker_id))

    def list(self) -> list[WorkerInfo]:
        with self.db.one() as conn:
            return [_worker_from_row(r) for r in conn.execute(select(workers).order_by(workers.c.started_at))]

    def dead(self, cutoff: dt.datetime) -> list[str]:
        with self.db.one() as conn:
            return [r[0] for r in conn.execute(select(workers.c.id).where(workers.c.last_heartbeat < cutoff))]

    def remove(self, worker_ids: Sequence[str], cutoff: dt.datetime) -> list[str]:
        if not worker_ids:
            return []
        stmt = (
            delete(workers)
            .where(workers.c.id.in_(list(worker_ids)), workers.c.last_heartbeat < cutoff)
            .returning(workers.c.id)
        )
        with self.db.one() as conn:
            return [r[0] for r in conn.execute(stmt)]
