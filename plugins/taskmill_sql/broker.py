"""The SQL broker: the database is the queue.

Workers claim tasks with one ``UPDATE … WHERE seq IN (SELECT … FOR UPDATE SKIP LOCKED) RETURNING``
(on PostgreSQL), so each task goes to exactly one worker. On PostgreSQL, a trigger sends
``NOTIFY`` whenever a committed write queues tasks, which wakes idle workers listening on the
channel (latency of a few ms instead of a poll interval). On SQLite the write lock serialises
claims, which is correct on one machine; idle workers poll with a short, growing sleep (at most
0.1 s).
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from typing import Any

from taskmill.errors import BrokerUnavailable
from taskmill.errors import StorageUnavailable
from taskmill.interfaces import Broker
from taskmill.models import Task
from taskmill.worker import WorkerOptions
from taskmill.worker import WorkerPool

__all__ = ["SqlBroker", "CHANNEL"]

logger = logging.getLogger("taskmill.sql.broker")

CHANNEL = "taskmill_tasks"


class SqlBroker(Broker):
    """Delivers tasks straight from the tasks table."""

    schemes = ("sqlite", "postgresql", "postgres")
    durable = True

    def __init__(self, url: str, settings: Any, runtime: Any) -> None:
        super().__init__(url, settings, runtime)
        self.is_postgres = not url.startswith("sqlite")

    @property
    def storage(self) -> Any:
        return self.runtime.storage

    def publish(self, tasks: Sequence[Task]) -> None:
        """Nothing to do: the tasks are in the table, and on PostgreSQL a trigger (migration
        0002) has already sent ``NOTIFY taskmill_tasks`` within the committing transaction."""

    def check(self) -> None:
        try:
            self.storage.check()
        except StorageUnavailable as exc:
            raise BrokerUnavailable(str(exc)) from None

    def run_worker(self, options: WorkerOptions) -> None:
        source = SqlTaskSource(self, options)
        WorkerPool(self.runtime, options, source).run()


class SqlTaskSource:
    """Claims for a pool; on PostgreSQL also LISTENs for wake-ups."""

    def __init__(self, broker: SqlBroker, options: WorkerOptions) -> None:
        self.broker = broker
        self.options = options
        self.lifecycle = broker.runtime.lifecycle
        self._listen_conn: Any = None
        if broker.is_postgres:
            self._listen()

    def _listen(self) -> None:
        try:
            raw = self.broker.storage.engine.raw_connection()
            dbapi = raw.driver_connection
            dbapi.autocommit = True
            with dbapi.cursor() as cur:
                cur.execute(f"LISTEN {CHANNEL}")
            self._raw = raw
            self._listen_conn = dbapi
        except Exception as exc:  # noqa: BLE001 - fall back to polling until it works
            logger.warning("cannot LISTEN for new tasks (polling instead): %s", exc)
            self._listen_conn = None

    def fetch(self, limit: int) -> list[Task]:
        if self.broker.is_postgres and self._listen_conn is None:
            self._listen()
        return self.lifecycle.claim(self.options.queues, limit, self.options.worker_id)

    def fileno(self) -> int | None:
        if self._listen_conn is None:
            return None
        try:
            return self._listen_conn.fileno()
        except Exception:  # noqa: BLE001
            self._listen_conn = None
            return None

    def drain(self) -> None:
        conn = self._listen_conn
        if conn is None:
            return
        try:
            conn.poll()  # reads every notification that has arrived, without blocking
            conn.notifies.clear()
        except Exception as exc:  # noqa: BLE001 - reconnect on next fetch
            logger.warning("LISTEN connection lost: %s", exc)
            self.close()

    def close(self) -> None:
        if self._listen_conn is not None:
            try:
                self._raw.invalidate()
            except Exception:  # noqa: BLE001
                pass
            self._listen_conn = None
